//! Ciphertexts are bound to their record, and `keypooler rekey` rotates the key atomically.
//! All through the built binary, with the redb file edited or inspected directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use keypooler::broker::{KeyInfo, Plaintext};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::{Store, TierRecord, key_record, load_catalog};
use redb::{ReadableTable, TableDefinition};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::binary::{assert_one_clear_line, stderr};
use crate::files::Rng;
use crate::helpers::hex_key;
use crate::process::{Server, TOKEN, keypooler, run};

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

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
        let (status, answer) = server.request("POST", "/admin/keys", Some(&body)).unwrap();
        assert_eq!(status, 201);
        keys.push((answer["id"].as_str().unwrap().to_owned(), value));
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
fn a_ciphertext_moved_to_another_record_does_not_open_and_is_reported_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x51);
    let keys = populate(dir.path(), &key, 4);
    let (a, b) = (&keys[0].0, &keys[1].0);

    // Swap the sealed values of the first two keys, inside redb.
    {
        let db = redb::Database::open(dir.path().join("pool.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(KEYS).unwrap();
            let record = |id: &str| -> Value {
                serde_json::from_slice(table.get(id).unwrap().unwrap().value()).unwrap()
            };
            let (mut first, mut second) = (record(a), record(b));
            std::mem::swap(&mut first["value"], &mut second["value"]);
            for record in [first, second] {
                let id = record["id"].as_str().unwrap().to_owned();
                let bytes = serde_json::to_vec(&record).unwrap();
                table.insert(id.as_str(), bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    let server = Server::start(dir.path(), &key);
    let log = server.log();
    let left_out: BTreeSet<String> = log
        .iter()
        .filter(|line| line.contains("record left out of the pool"))
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["level"], "ERROR");
            assert_eq!(entry["table"], "keys");
            entry["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(left_out, BTreeSet::from([a.clone(), b.clone()]));
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

    let output = rekey(dir.path(), &old, &new);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("3 keys, 3 secrets and the canary re-sealed"),
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

    let server = Server::start(dir.path(), &new);
    let served = serve_all(&server, 3);
    for (i, (id, value)) in keys.iter().enumerate() {
        assert_eq!(served[id].0, *value);
        assert_eq!(served[id].1, json!({"org": format!("org-secret-{i}")}));
    }
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

/// A database of `count` keys written through the store (faster than HTTP for 20k keys).
fn large_database(path: &Path, sealer: &Sealer, count: usize) {
    let store = Store::open(path, sealer).unwrap();
    let batch = store.begin().unwrap();
    batch
        .put_tier(&TierRecord {
            id: "tier-1".into(),
            name: "pro".into(),
            description: String::new(),
            created_at_ms: 1,
            features: BTreeMap::new(),
        })
        .unwrap();
    let secrets = BTreeMap::from([("org".to_string(), Zeroizing::new("org-1".to_string()))]);
    for i in 0..count {
        let info = KeyInfo {
            id: format!("key-{i:06}").into(),
            name: format!("k{i}").into(),
            tier_id: "tier-1".into(),
            active: true,
            created_at_ms: i as i64,
            expires_at_ms: None,
        };
        let value = format!("sk-{i}");
        let plain = Plaintext {
            value: &value,
            metadata: &serde_json::Map::new(),
            secrets: &secrets,
        };
        batch.put_key(&key_record(&info, &plain, sealer)).unwrap();
    }
    batch.commit().unwrap();
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
    let old = Sealer::new(&EncryptionKey::parse_hex(&old_hex).unwrap());
    let new = Sealer::new(&EncryptionKey::parse_hex(&new_hex).unwrap());
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
