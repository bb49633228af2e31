//! Hostile rows: whatever a SQLite file holds, the import ends in a clean error or a success.

use super::*;

#[derive(Clone, Debug)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    /// Stored as TEXT, but not UTF-8.
    Bytes(Vec<u8>),
}

fn cell() -> impl Strategy<Value = Cell> {
    prop_oneof![
        Just(Cell::Null),
        any::<i64>().prop_map(Cell::Integer),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(16_777_215),
            Just(16_777_216),
            Just(2_147_483_647),
            Just(2_147_483_648),
            Just(31_622_401),
        ]
        .prop_map(Cell::Integer),
        any::<f64>().prop_map(Cell::Real),
        any::<String>().prop_map(Cell::Text),
        "(enc:gcm:)?[0-9a-fA-Fxz]{0,120}".prop_map(Cell::Text),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[ Tx][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
            .prop_map(Cell::Text),
        "\\{\"[a-z]{0,5}\": ?[0-9a-z\\[\\]\"]{0,8}\\}?".prop_map(Cell::Text),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Cell::Bytes),
        Just(Cell::Text("x".repeat(1 << 20))),
    ]
}

/// Every column the import reads, in the fixture that has it.
const COLUMNS: &[(&str, &str, &str)] = &[
    (SEED, "tiers", "id"),
    (SEED, "tiers", "name"),
    (SEED, "tiers", "created_at"),
    (SEED, "tier_features", "tier_id"),
    (SEED, "tier_features", "feature"),
    (SEED, "tier_features", "rate_per_minute"),
    (SEED, "keys", "id"),
    (SEED, "keys", "name"),
    (SEED, "keys", "key_encrypted"),
    (SEED, "keys", "tier_id"),
    (SEED, "keys", "is_active"),
    (SEED, "keys", "created_at"),
    (LATEST, "tiers", "description"),
    (LATEST, "tier_features", "rate_limit"),
    (LATEST, "tier_features", "window_seconds"),
    (LATEST, "keys", "key_value"),
    (LATEST, "keys", "expires_at"),
    (LATEST, "keys", "usage_limit"),
    (LATEST, "keys", "usage_count"),
    (LATEST, "keys", "usage_window_seconds"),
    (LATEST, "keys", "usage_window_start"),
    (LATEST, "keys", "metadata_json"),
    (LATEST, "key_secrets", "key_id"),
    (LATEST, "key_secrets", "name"),
    (LATEST, "key_secrets", "value"),
    (LATEST, "consumers", "id"),
    (LATEST, "consumers", "name"),
    (LATEST, "consumers", "token_hash"),
    (LATEST, "consumers", "is_active"),
    (LATEST, "consumer_scopes", "consumer_id"),
    (LATEST, "consumer_scopes", "tier_id"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn hostile_row_values_give_a_clean_error_or_a_clean_import(
        column in 0..COLUMNS.len(),
        row in 0usize..3,
        value in cell(),
    ) {
        let (fixture, table, name) = COLUMNS[column];
        let (dir, from) = copy_fixture(fixture);
        {
            let conn = rusqlite::Connection::open(&from).unwrap();
            let target = format!(
                "rowid = (SELECT rowid FROM {table} ORDER BY rowid LIMIT 1 OFFSET {row})"
            );
            let outcome = match &value {
                Cell::Null => conn.execute(&format!("UPDATE {table} SET {name} = NULL WHERE {target}"), []),
                Cell::Integer(n) => conn.execute(&format!("UPDATE {table} SET {name} = ?1 WHERE {target}"), [n]),
                Cell::Real(x) => conn.execute(&format!("UPDATE {table} SET {name} = ?1 WHERE {target}"), [x]),
                Cell::Text(t) => conn.execute(&format!("UPDATE {table} SET {name} = ?1 WHERE {target}"), [t]),
                Cell::Bytes(b) => conn.execute(&format!("UPDATE {table} SET {name} = CAST(?1 AS TEXT) WHERE {target}"), [b]),
            };
            // A NOT NULL or unique constraint may refuse the value: the file is then unchanged,
            // which is a fine case too.
            drop(outcome);
        }
        let db = dir.path().join("pool.redb");
        match import_into(&from, &fixture_key(fixture), &db, ImportMode::Refuse) {
            Ok(summary) => {
                let stored = view(&db);
                prop_assert_eq!(stored.len(), summary.tiers + summary.keys + summary.consumers);
            }
            Err(err) => {
                let message = err.to_string();
                prop_assert!(matches!(err, CompatError::BadRow { .. }), "{:?}", err);
                prop_assert!(message.len() < 1_000, "the message stays short: {}", message.len());
                for secret in ["sk-proj", "free-key", "fc-aaaa", "whsec", "org-123"] {
                    prop_assert!(!message.contains(secret), "{}", message);
                }
                prop_assert!(view(&db).is_empty(), "nothing was written");
            }
        }
    }
}
