//! Poison records: a stored tier, key or consumer that does not decode is reported by id (never
//! a value) and left out, like a key whose sealed value does not open; the server serves the
//! rest, and `export` writes the rest and names what it left out. All through the built binary,
//! with the redb file written behind its back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use keypooler::broker::{KeyInfo, Plaintext};
use keypooler::store::{Store, key_record};
use redb::TableDefinition;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::binary::stderr;
use crate::helpers::{hex_key, sealer};
use crate::process::{Server, run};

const TIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("tiers");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");

/// A text no report may ever show: it stands for a value inside a poison record.
const HIDDEN: &str = "sk-live-hidden-7f3a";

/// JSON objects nested `depth` deep, `{"a": {"a": … 1 …}}`.
fn nested(depth: usize) -> serde_json::Map<String, Value> {
    let mut value = json!(1);
    for _ in 1..depth {
        value = json!({ "a": value });
    }
    serde_json::Map::from_iter([("a".to_string(), value)])
}

/// Writes four records start-up cannot decode into the database at `path` (closed): a key whose
/// metadata nests 127 deep (written by the store itself: it encodes, only decoding has a depth
/// limit), a key with a field of the wrong type holding [`HIDDEN`], a consumer that is not JSON,
/// and a tier without a name. Returns their ids as `table/id`.
fn plant_poison(path: &Path, key: &str, tier_id: &str) -> BTreeSet<String> {
    let sealer = sealer(key);
    {
        let store = Store::open(path, &sealer).unwrap();
        let batch = store.begin().unwrap();
        let info = KeyInfo {
            id: "poison-deep".into(),
            name: "deep".into(),
            tier_id: tier_id.into(),
            active: true,
            created_at_ms: 1,
            expires_at_ms: None,
        };
        let value = Zeroizing::new(HIDDEN.to_string());
        let plain = Plaintext {
            value: &value,
            metadata: &nested(127),
            secrets: &BTreeMap::new(),
        };
        batch.put_key(&key_record(&info, &plain, &sealer)).unwrap();
        batch.commit().unwrap();
    }
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let wrong_type = json!({"id": "poison-type", "name": "t", "tier_id": tier_id,
            "active": HIDDEN, "created_at_ms": 1, "value": "00"});
        txn.open_table(KEYS)
            .unwrap()
            .insert(
                "poison-type",
                serde_json::to_vec(&wrong_type).unwrap().as_slice(),
            )
            .unwrap();
        let garbage = format!("\u{1}not json {HIDDEN}");
        txn.open_table(CONSUMERS)
            .unwrap()
            .insert("poison-bytes", garbage.as_bytes())
            .unwrap();
        txn.open_table(TIERS)
            .unwrap()
            .insert("poison-tier", br#"{"id": "poison-tier"}"#.as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    [
        "keys/poison-deep",
        "keys/poison-type",
        "consumers/poison-bytes",
        "tiers/poison-tier",
    ]
    .map(String::from)
    .into()
}

#[test]
fn records_that_do_not_decode_are_left_out_by_id_and_the_rest_is_served_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x71);
    let server = Server::start(dir.path(), &key);
    server.create_tier("pro", "chat", 1000);
    let (_, tiers) = server.request("GET", "/admin/tiers", None).unwrap();
    let tier_id = tiers[0]["id"].as_str().unwrap().to_owned();
    let mut values = BTreeSet::new();
    for i in 0..3 {
        let value = format!("sk-good-{i}");
        let body = json!({"name": format!("k{i}"), "key": value, "tier": "pro"});
        server.add_key(&body);
        values.insert(value);
    }
    assert!(server.terminate().success());
    let poison = plant_poison(&dir.path().join("pool.redb"), &key, &tier_id);

    // Start-up reports each by id and serves the rest.
    let server = Server::start(dir.path(), &key);
    let log = server.log();
    let left_out: BTreeSet<String> = log
        .iter()
        .filter(|line| line.contains("record left out of the pool"))
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["level"], "ERROR");
            format!(
                "{}/{}",
                entry["table"].as_str().unwrap(),
                entry["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(left_out, poison);
    let deep = log.iter().find(|l| l.contains("poison-deep")).unwrap();
    assert!(deep.contains("recursion limit exceeded"), "{deep}");
    let opened = log.iter().find(|l| l.contains("database opened")).unwrap();
    let opened: Value = serde_json::from_str(opened).unwrap();
    assert_eq!(
        (opened["pool_size"].as_u64(), opened["skipped"].as_u64()),
        (Some(3), Some(4))
    );
    assert!(!log.join("\n").contains(HIDDEN), "a value reached the log");
    let served: BTreeSet<String> = (0..6)
        .map(|_| {
            let (status, body) = server.request("GET", "/key?feature=chat", None).unwrap();
            assert_eq!(status, 200, "{body}");
            body["value"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(served, values);
    assert!(server.terminate().success());

    // Export writes the rest and names what it left out, by id.
    let env = [("ENCRYPTION_KEY", key.as_str())];
    for schema in ["seed", "latest"] {
        let to = format!("{schema}.db");
        let output = run(
            dir.path(),
            &env,
            &["export", "--schema", schema, "--to", to.as_str()],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            stdout.contains(": 1 tiers, 3 keys, 0 consumers")
                && stdout.contains(
                    "4 records left out (unsigned or unreadable): tiers/poison-tier, keys/poison-deep, keys/poison-type, consumers/poison-bytes"
                ),
            "{stdout}"
        );
        assert!(!stdout.contains(HIDDEN));
        let conn = rusqlite::Connection::open(dir.path().join(&to)).unwrap();
        let keys: i64 = conn
            .query_row("SELECT count(*) FROM keys", [], |row| row.get(0))
            .unwrap();
        assert_eq!(keys, 3);
    }
}
