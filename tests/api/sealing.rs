//! Ciphertexts are bound to their record, records are signed, and `keypooler rekey` rotates the
//! key atomically. All through the built binary, with the redb file edited or inspected
//! directly, as someone who can write the file but lacks the key would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use keypooler::crypto::{Sealer, token_hash};
use keypooler::store::{Store, load_catalog, open_key};
use redb::{ReadableDatabase, TableDefinition};
use serde_json::{Value, json};

use crate::binary::{assert_one_clear_line, stderr};
use crate::files::Rng;
use crate::helpers::{hex_key, large_database, sealer};
use crate::process::{Server, TOKEN, http_get, keypooler, run};

/// A signed record is its JSON followed by a signature of this many bytes.
const SIGNATURE: usize = 32;

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// The stored bytes of `table`/`id` in the file at `path`.
fn stored(path: &Path, name: &str, id: &str) -> Vec<u8> {
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let read = db.begin_read().unwrap();
    let table = read.open_table(table(name)).unwrap();
    table.get(id).unwrap().unwrap().value().to_vec()
}

/// Writes `bytes` as `table`/`id` into the file at `path`, through redb, without the key.
fn plant(path: &Path, name: &str, id: &str, bytes: &[u8]) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(table(name))
        .unwrap()
        .insert(id, bytes)
        .unwrap();
    txn.commit().unwrap();
}

/// Changes the JSON of `table`/`id` in the file at `path`, keeping its signature as it was.
fn edit(path: &Path, name: &str, id: &str, change: impl FnOnce(&mut Value)) {
    let bytes = stored(path, name, id);
    let (json, signature) = bytes.split_at(bytes.len() - SIGNATURE);
    let mut record: Value = serde_json::from_slice(json).unwrap();
    change(&mut record);
    let mut edited = serde_json::to_vec(&record).unwrap();
    edited.extend_from_slice(signature);
    plant(path, name, id, &edited);
}

/// The `(table, id)` of every record the server's start-up log reports left out.
fn left_out(server: &Server) -> BTreeSet<(String, String)> {
    server
        .log()
        .iter()
        .filter(|line| line.contains("record left out of the pool"))
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["level"], "ERROR");
            let field = |name: &str| entry[name].as_str().unwrap().to_owned();
            (field("table"), field("id"))
        })
        .collect()
}

fn pair(table: &str, id: &str) -> (String, String) {
    (table.to_owned(), id.to_owned())
}

/// Creates a consumer scoped to `tier`; answers its id and token.
fn create_consumer(server: &Server, name: &str, tier: &str) -> (String, String) {
    let (status, body) = server
        .request("POST", "/admin/consumers", Some(&json!({"name": name})))
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let field = |name: &str| body[name].as_str().unwrap().to_owned();
    let (id, token) = (field("id"), field("token"));
    let scope = json!({"tier": tier});
    let path = format!("/admin/consumers/{id}/scopes");
    let (status, answer) = server.request("POST", &path, Some(&scope)).unwrap();
    assert_eq!(status, 200, "{answer}");
    (id, token)
}

/// A server over `dir` with a tier "pro" (feature "chat") and `count` keys, each with a bound
/// secret; returns the ids, in the order added, with their values.
fn populate(dir: &Path, key: &str, count: usize) -> Vec<(String, String)> {
    let server = Server::start(dir, key);
    server.create_tier("pro", "chat", 1000);
    let mut keys = Vec::new();
    for i in 0..count {
        let value = format!("sk-value-{i}-7f3a9c");
        let body = json!({"name": format!("k{i}"), "key": value, "tier": "pro",
            "secrets": {"org": format!("org-secret-{i}")}});
        keys.push((server.add_key(&body), value));
    }
    assert!(server.terminate().success());
    keys
}

/// What `GET /key?feature=chat` serves in `rounds` calls: id → (value, secrets).
fn serve_all(server: &Server, rounds: usize) -> BTreeMap<String, (String, Value)> {
    (0..rounds)
        .map(|_| {
            let (status, body) = server.request("GET", "/key?feature=chat", None).unwrap();
            assert_eq!(status, 200, "{body}");
            (
                body["key_id"].as_str().unwrap().to_owned(),
                (
                    body["value"].as_str().unwrap().to_owned(),
                    body["secrets"].clone(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_ciphertext_moved_to_another_record_is_left_out_and_reported_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x51);
    let keys = populate(dir.path(), &key, 4);
    let (a, b) = (&keys[0].0, &keys[1].0);

    // Swap the sealed values of the first two keys, inside redb, each record keeping its
    // signature (a value sealed for another key does not open either: the store's own tests
    // sign such a record and see it left out for its associated data).
    let db = dir.path().join("pool.redb");
    let value = |id: &str| -> Value {
        let bytes = stored(&db, "keys", id);
        let record: Value = serde_json::from_slice(&bytes[..bytes.len() - SIGNATURE]).unwrap();
        record["value"].clone()
    };
    let (first, second) = (value(a), value(b));
    edit(&db, "keys", a, |record| record["value"] = second);
    edit(&db, "keys", b, |record| record["value"] = first);

    let server = Server::start(dir.path(), &key);
    assert_eq!(
        left_out(&server),
        BTreeSet::from([pair("keys", a), pair("keys", b)])
    );
    let log = server.log();
    let opened = log.iter().find(|l| l.contains("database opened")).unwrap();
    let opened: Value = serde_json::from_str(opened).unwrap();
    assert_eq!(
        (opened["pool_size"].as_u64(), opened["skipped"].as_u64()),
        (Some(2), Some(2))
    );
    let text = log.join("\n");
    for (_, value) in &keys {
        assert!(!text.contains(value.as_str()), "a value reached the log");
    }
    assert!(!text.contains("org-secret"), "a secret reached the log");

    // The other two are served, the swapped ones never.
    let served = serve_all(&server, 8);
    let expected: BTreeSet<&String> = keys[2..].iter().map(|(id, _)| id).collect();
    assert_eq!(served.keys().collect::<BTreeSet<_>>(), expected);
    for (id, value) in &keys[2..] {
        assert_eq!(&served[id].0, value);
    }
    assert!(server.terminate().success());
}

#[test]
fn a_consumer_written_into_the_file_without_the_key_is_refused_by_id_and_its_token_gets_401() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x55);
    let server = Server::start(dir.path(), &key);
    server.create_tier("pro", "chat", 1000);
    let body = json!({"name": "k", "key": "sk-pro", "tier": "pro"});
    server.add_key(&body);
    let (real, real_token) = create_consumer(&server, "billing", "pro");
    assert!(server.terminate().success());

    // What a planted consumer looks like: a real one's record, with the attacker's token hash.
    let db = dir.path().join("pool.redb");
    let real_bytes = stored(&db, "consumers", &real);
    let mut planted: Value =
        serde_json::from_slice(&real_bytes[..real_bytes.len() - SIGNATURE]).unwrap();
    let hash = |token: &str| hex::encode(token_hash(token.as_bytes()));
    let mut as_planted = |id: &str, token: &str| {
        planted["id"] = json!(id);
        planted["token_hash"] = json!(hash(token));
        serde_json::to_vec(&planted).unwrap()
    };
    // Without a signature, with a made-up one, and a real record copied under another id.
    let unsigned = as_planted("unsigned", "attacker-1");
    let mut forged = as_planted("forged", "attacker-2");
    forged.extend_from_slice(&[0x5a; SIGNATURE]);
    plant(&db, "consumers", "unsigned", &unsigned);
    plant(&db, "consumers", "forged", &forged);
    plant(&db, "consumers", "copied", &real_bytes);

    let server = Server::start(dir.path(), &key);
    assert_eq!(
        left_out(&server),
        BTreeSet::from([
            pair("consumers", "unsigned"),
            pair("consumers", "forged"),
            pair("consumers", "copied"),
        ])
    );
    for token in ["attacker-1", "attacker-2"] {
        assert_eq!(http_get(server.port, "/key?feature=chat", token).0, 401);
    }
    let (status, body) = http_get(server.port, "/key?feature=chat", &real_token);
    assert_eq!(status, 200, "{body}");
    let (_, listed) = server.request("GET", "/admin/consumers", None).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(server.terminate().success());

    // Nor exported: the export says which it left out.
    let output = run(
        dir.path(),
        &[("ENCRYPTION_KEY", &key)],
        &["export", "--to", "go.db", "--schema", "latest"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout.contains("1 consumers"), "{stdout}");
    assert!(
        stdout.contains(
            "3 records left out (unsigned or unreadable): consumers/copied, consumers/forged, consumers/unsigned"
        ),
        "{stdout}"
    );
}

#[test]
fn a_tier_or_key_edited_in_the_file_without_the_key_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x56);
    let server = Server::start(dir.path(), &key);
    server.create_tier("pro", "chat", 1);
    server.create_tier("free", "image", 1000);
    let pro_key = server.add_key(&json!({"name": "p", "key": "sk-pro", "tier": "pro"}));
    let capped =
        server.add_key(&json!({"name": "c", "key": "sk-capped", "tier": "free", "usage_limit": 5}));
    let plain = server.add_key(&json!({"name": "f", "key": "sk-free", "tier": "free"}));
    let (_, tiers) = server.request("GET", "/admin/tiers", None).unwrap();
    let pro = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|tier| tier["name"] == "pro")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(server.terminate().success());

    let db = dir.path().join("pool.redb");
    edit(&db, "tiers", &pro, |tier| {
        tier["features"]["chat"]["rate_limit"] = json!(1_000_000);
    });
    edit(&db, "keys", &capped, |key| {
        key["usage_limit"] = json!(1_000_000);
    });

    let server = Server::start(dir.path(), &key);
    assert_eq!(
        left_out(&server),
        BTreeSet::from([
            pair("tiers", &pro),
            // Its tier is not loaded.
            pair("keys", &pro_key),
            pair("keys", &capped),
        ])
    );
    assert_eq!(
        http_get(server.port, "/key?feature=chat", crate::process::TOKEN).0,
        404
    );
    for _ in 0..3 {
        let (status, body) = server.request("GET", "/key?feature=image", None).unwrap();
        assert_eq!(
            (status, body["key_id"].as_str()),
            (200, Some(plain.as_str()))
        );
    }
    assert!(server.terminate().success());
}

fn rekey(dir: &Path, old: &str, new: &str) -> std::process::Output {
    run(
        dir,
        &[("ENCRYPTION_KEY", old), ("NEW_ENCRYPTION_KEY", new)],
        &["rekey"],
    )
}

#[test]
fn rekey_reseals_everything_and_the_old_key_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (hex_key(0x61), hex_key(0x62));
    let keys = populate(dir.path(), &old, 3);
    let server = Server::start(dir.path(), &old);
    let (_, consumer_token) = create_consumer(&server, "billing", "pro");
    assert!(server.terminate().success());

    let output = rekey(dir.path(), &old, &new);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("3 keys, 3 secrets and the canary re-sealed, 5 records re-signed"),
        "{stdout}"
    );
    for secret in [&old, &new] {
        assert!(!stdout.contains(secret.as_str()) && !stderr(&output).contains(secret.as_str()));
    }

    let refused = run(
        dir.path(),
        &[("ENCRYPTION_KEY", &old), ("ADMIN_TOKEN", TOKEN)],
        &[],
    );
    assert_one_clear_line(&refused, 1, "ENCRYPTION_KEY does not match this database");

    // Every record re-signed: the tier, the keys and the consumer all load.
    let server = Server::start(dir.path(), &new);
    assert!(left_out(&server).is_empty(), "{:?}", left_out(&server));
    let served = serve_all(&server, 3);
    for (i, (id, value)) in keys.iter().enumerate() {
        assert_eq!(served[id].0, *value);
        assert_eq!(served[id].1, json!({"org": format!("org-secret-{i}")}));
    }
    assert_eq!(
        http_get(server.port, "/key?feature=chat", &consumer_token).0,
        200
    );
    // Refused while a server holds the file.
    let busy = rekey(dir.path(), &new, &hex_key(0x63));
    assert_one_clear_line(&busy, 1, "in use by another process");
    assert!(server.terminate().success());

    // Running it again (a retry after a crash, say) changes nothing.
    let again = rekey(dir.path(), &old, &new);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already sealed under NEW_ENCRYPTION_KEY")
    );
}

#[test]
fn rekey_validates_new_encryption_key_like_encryption_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = hex_key(0x71);
    populate(dir.path(), &old, 1);
    let before = std::fs::read(dir.path().join("pool.redb")).unwrap();
    let short = "abc-secret-short";
    let cases = [
        (None, "NEW_ENCRYPTION_KEY is required"),
        (
            Some(short),
            "NEW_ENCRYPTION_KEY must be exactly 64 hex characters",
        ),
        (
            Some(old.as_str()),
            "NEW_ENCRYPTION_KEY must differ from ENCRYPTION_KEY",
        ),
    ];
    for (new, expected) in cases {
        let mut env = vec![("ENCRYPTION_KEY", old.as_str())];
        env.extend(new.map(|new| ("NEW_ENCRYPTION_KEY", new)));
        let output = run(dir.path(), &env, &["rekey"]);
        assert_one_clear_line(&output, 2, expected);
        assert!(!stderr(&output).contains(short) && !stderr(&output).contains(&old));
    }
    let wrong_old = rekey(dir.path(), &hex_key(0x72), &hex_key(0x73));
    assert_one_clear_line(&wrong_old, 1, "ENCRYPTION_KEY does not match this database");
    let missing = run(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &old),
            ("NEW_ENCRYPTION_KEY", &hex_key(0x74)),
            ("DB_PATH", dir.path().join("none.redb").to_str().unwrap()),
        ],
        &["rekey"],
    );
    assert_one_clear_line(&missing, 1, "no such file");
    assert!(!dir.path().join("none.redb").exists());
    assert_eq!(std::fs::read(dir.path().join("pool.redb")).unwrap(), before);
}

/// Which key opens the file at `path`, all of it: every key loads, none is left out.
fn opens_entirely(path: &Path, sealer: &Sealer, count: usize) -> bool {
    let Ok(store) = Store::open(path, sealer) else {
        return false;
    };
    let (catalog, skipped) =
        load_catalog(&store, sealer, &keypooler::broker::Clock::manual().0).unwrap();
    assert!(
        skipped.is_empty(),
        "a mix: {} keys do not open under the key that opens the canary",
        skipped.len()
    );
    assert_eq!(catalog.key_count(), count);
    true
}

#[test]
fn a_rekey_killed_at_any_moment_leaves_the_old_key_or_the_new_one_never_a_mix() {
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let rounds = setting("KEYPOOLER_REKEY_ROUNDS", 4);
    let count = setting("KEYPOOLER_REKEY_KEYS", 3_000);
    let dir = tempfile::tempdir().unwrap();
    let (old_hex, new_hex) = (hex_key(0x81), hex_key(0x82));
    let old = sealer(&old_hex);
    let new = sealer(&new_hex);
    let base = dir.path().join("base.redb");
    large_database(&base, &old, count);

    // How long a whole rekey takes here, to kill within it.
    let timed = dir.path().join("timed.redb");
    std::fs::copy(&base, &timed).unwrap();
    let started = Instant::now();
    let env = [
        ("ENCRYPTION_KEY", old_hex.as_str()),
        ("NEW_ENCRYPTION_KEY", new_hex.as_str()),
        ("DB_PATH", timed.to_str().unwrap()),
    ];
    assert!(
        keypooler(dir.path(), &env)
            .arg("rekey")
            .output()
            .unwrap()
            .status
            .success()
    );
    // An estimate: the machine may be busier now than later.
    let mut full = started.elapsed();
    let measured = full;
    assert!(opens_entirely(&timed, &new, count));

    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut under_old, mut under_new, mut finished_first) = (0, 0, 0);
    for round in 0..rounds {
        let db = dir.path().join(format!("round-{round}.redb"));
        std::fs::copy(&base, &db).unwrap();
        let env = [
            ("ENCRYPTION_KEY", old_hex.as_str()),
            ("NEW_ENCRYPTION_KEY", new_hex.as_str()),
            ("DB_PATH", db.to_str().unwrap()),
        ];
        let mut child = keypooler(dir.path(), &env)
            .arg("rekey")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Half the kills at a random moment of the run, half during its commit.
        if round % 2 == 0 {
            let at = full.mul_f64(rng.below(1_000) as f64 / 1_000.0);
            std::thread::sleep(at.max(Duration::from_millis(1)));
            if child.try_wait().unwrap().is_some() {
                finished_first += 1;
                // The machine got faster: aim within the runs seen now.
                full = at.mul_f64(0.8);
            }
        } else {
            // The file grows when the transaction starts writing, and changes again only when
            // it commits (redb writes the pages and the header then): kill as that begins.
            let stamp = || {
                let meta = std::fs::metadata(&db).unwrap();
                (meta.len(), meta.modified().unwrap())
            };
            let running = |child: &mut std::process::Child| child.try_wait().unwrap().is_none();
            let base_len = std::fs::metadata(&base).unwrap().len();
            while stamp().0 == base_len && running(&mut child) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let grown = stamp();
            while stamp() == grown && running(&mut child) {
                std::thread::sleep(Duration::from_micros(200));
            }
            // The commit writes every re-sealed page: it lasts a while on a large file.
            let within = full.as_micros() as usize / 20;
            std::thread::sleep(Duration::from_micros(rng.below(within.max(1)) as u64));
            if !running(&mut child) {
                finished_first += 1;
            }
        }
        let _ = child.kill();
        child.wait().unwrap();
        match (
            opens_entirely(&db, &old, count),
            opens_entirely(&db, &new, count),
        ) {
            (true, false) => under_old += 1,
            (false, true) => under_new += 1,
            other => panic!("round {round}: old and new key open it: {other:?}"),
        }
        std::fs::remove_file(&db).unwrap();
    }
    println!(
        "rekey of {count} keys (a full run took {measured:?}), {rounds} rounds ({finished_first} finished before the kill): {under_old} under the old key, {under_new} under the new, 0 mixed"
    );
}

/// A database as schema 1 wrote it, built here from that format's own rules (no signatures,
/// associated data joined with `/`, a `keypooler canary v1` canary): a tier "pro" with "chat",
/// the keys `X` (with the secret `n/value`) and `X/secrets/n`, whose schema 1 associated data
/// were equal, and a consumer whose token is `schema-1-token`.
fn write_schema_1(path: &Path, sealer: &Sealer) {
    let seal =
        |plain: &str, aad: String| hex::encode(sealer.seal(plain.as_bytes(), aad.as_bytes()));
    let key = |id: &str, value: &str, secrets: Value| {
        json!({"id": id, "name": id, "tier_id": "tier-1", "active": true, "created_at_ms": 1,
            "value": seal(value, format!("keypooler:keys/{id}/value")), "secrets": secrets})
    };
    let x_secret = seal("org-x", "keypooler:keys/X/secrets/n/value".into());
    let records = [
        (
            "tiers",
            "tier-1",
            json!({"id": "tier-1", "name": "pro", "created_at_ms": 1,
            "features": {"chat": {"rate_limit": 1000, "window_seconds": 60}}}),
        ),
        ("keys", "X", key("X", "sk-x", json!({"n/value": x_secret}))),
        ("keys", "X/secrets/n", key("X/secrets/n", "sk-n", json!({}))),
        (
            "consumers",
            "c-1",
            json!({"id": "c-1", "name": "billing", "active": true,
            "created_at_ms": 1, "token_hash": hex::encode(token_hash(b"schema-1-token")),
            "scopes": ["tier-1"]}),
        ),
    ];
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(table("meta")).unwrap();
        meta.insert("schema_version", 1u32.to_le_bytes().as_slice())
            .unwrap();
        let canary = sealer.seal(b"keypooler canary v1", b"keypooler:meta/canary");
        meta.insert("canary", canary.as_slice()).unwrap();
        for name in ["tiers", "keys", "consumers"] {
            txn.open_table(table(name)).unwrap();
        }
        txn.open_table(TableDefinition::<u64, &[u8]>::new("usage_events"))
            .unwrap();
        for (name, id, record) in records {
            let bytes = serde_json::to_vec(&record).unwrap();
            txn.open_table(table(name))
                .unwrap()
                .insert(id, bytes.as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn a_schema_1_database_is_upgraded_at_its_first_start_and_serves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    let (old_hex, new_hex) = (hex_key(0x91), hex_key(0x92));
    let old = sealer(&old_hex);
    write_schema_1(&db, &old);

    let server = Server::start(dir.path(), &old_hex);
    let log = server.log().join("\n");
    assert!(log.contains("database upgraded to schema 2"), "{log}");
    assert!(left_out(&server).is_empty(), "{log}");
    let served = serve_all(&server, 4);
    assert_eq!(
        served["X"],
        ("sk-x".to_owned(), json!({"n/value": "org-x"}))
    );
    assert_eq!(served["X/secrets/n"], ("sk-n".to_owned(), json!({})));
    assert_eq!(
        http_get(server.port, "/key?feature=chat", "schema-1-token").0,
        200
    );
    assert!(server.terminate().success());

    // Upgraded once: the next start has nothing to upgrade.
    let server = Server::start(dir.path(), &old_hex);
    assert!(!server.log().join("\n").contains("database upgraded"));
    assert_eq!(serve_all(&server, 2).len(), 2);
    assert!(server.terminate().success());

    // After a rekey, every value opens under the new key with the new associated data, the
    // only one the store knows outside the upgrade.
    assert!(rekey(dir.path(), &old_hex, &new_hex).status.success());
    let new = sealer(&new_hex);
    let contents = Store::open(&db, &new).unwrap().load().unwrap();
    assert!(contents.left_out.is_empty());
    assert_eq!((contents.tiers.len(), contents.consumers.len()), (1, 1));
    let opened: BTreeMap<String, String> = contents
        .keys
        .iter()
        .map(|record| {
            (
                record.id.clone(),
                open_key(record, &new).unwrap().value.to_string(),
            )
        })
        .collect();
    assert_eq!(opened["X"], "sk-x");
    assert_eq!(opened["X/secrets/n"], "sk-n");
}
