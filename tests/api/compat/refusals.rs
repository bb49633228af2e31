//! Refusals: a bad source or an unsuitable target stops the import, and nothing is written.

use super::*;

/// Imports `from` into a target that already holds the seed fixture (with `mode`), expecting an
/// error that contains `message`; the target must hold exactly what it held. A bad source file
/// is refused before the target is even opened: then the target is byte for byte the same.
fn assert_refused(from: &Path, source_key: &str, mode: ImportMode, message: &str) -> CompatError {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    // Opening a redb file rewrites its header, so the bytes are taken after the view.
    let held = view(&db);
    let before = (bytes(&db), held);
    let err = import_into(from, source_key, &db, mode).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(message),
        "{text:?} should contain {message:?}"
    );
    if read_source(from, &sealer(source_key), &ProgressBar::hidden()).is_err() {
        assert_eq!(bytes(&db), before.0, "the target was not even opened");
    }
    assert_eq!(view(&db), before.1, "the target holds what it held");
    for secret in ["sk-proj", "sk-ant", "free-key", "fc-", "whsec", "org-123"] {
        assert!(!text.contains(secret), "a value was echoed: {text}");
    }
    err
}

#[test]
fn every_bad_row_aborts_naming_table_row_and_reason_and_writes_nothing() {
    let seed_key = fixture_key(SEED);
    let latest_key = fixture_key(LATEST);
    let free1 = "043d79b3-8ddf-4d36-86d4-ddf50110a74b";
    let cases: Vec<(&str, String, String)> = vec![
        (
            SEED,
            format!("UPDATE keys SET tier_id = 'no-such-tier' WHERE id = '{free1}'"),
            format!("keys row {free1}: tier_id names no tier in the file"),
        ),
        (
            SEED,
            format!("UPDATE keys SET created_at = 'yesterday' WHERE id = '{free1}'"),
            format!(
                "keys row {free1}: created_at is not a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)"
            ),
        ),
        (
            SEED,
            "UPDATE tier_features SET rate_per_minute = 2147483648 WHERE feature = 'chat'".into(),
            "tier_features row 923ef101-b09e-4bd7-8919-42c44918b90c/chat: limit: rate_limit must be an integer from 1 to 2147483647".into(),
        ),
        (
            SEED,
            "UPDATE tier_features SET rate_per_minute = 0 WHERE feature = 'chat'".into(),
            "rate_limit must be an integer from 1 to 2147483647".into(),
        ),
        (
            SEED,
            "UPDATE tier_features SET rate_per_minute = 'lots' WHERE feature = 'chat'".into(),
            "tier_features row 923ef101-b09e-4bd7-8919-42c44918b90c/chat: rate_per_minute is not an integer".into(),
        ),
        (
            SEED,
            format!("UPDATE keys SET key_encrypted = 'zz-not-hex' WHERE id = '{free1}'"),
            format!("keys row {free1}: key_encrypted: the sealed value is not hex"),
        ),
        (
            SEED,
            format!("UPDATE keys SET key_encrypted = 'abcd' WHERE id = '{free1}'"),
            format!("keys row {free1}: key_encrypted: the sealed value is too short"),
        ),
        (
            SEED,
            format!("UPDATE keys SET name = CAST(x'ff00fe' AS TEXT) WHERE id = '{free1}'"),
            format!("keys row {free1}: name is not UTF-8 text"),
        ),
        (
            SEED,
            format!("UPDATE keys SET name = '   ' WHERE id = '{free1}'"),
            format!("keys row {free1}: name is required"),
        ),
        (
            SEED,
            format!("UPDATE keys SET id = 'bad' || char(10) || 'id' WHERE id = '{free1}'"),
            "keys row at rowid 4: id must be 1 to 128 characters".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET metadata_json = '[1, 2]' WHERE name = 'oa-1'".into(),
            "keys row 9b810e76-6ec9-d286-63ca-828dd5f4b3b2: metadata_json is not a JSON object".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET metadata_json = '{\"plan\": ' WHERE name = 'fc-01'".into(),
            "metadata_json is not JSON".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET expires_at = '2099-02-30T00:00:00Z' WHERE name = 'fc-02'".into(),
            "keys row 35bf992d-c9e9-c616-612e-7696a6cecc1b: expires_at is not a timestamp".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET usage_count = -1 WHERE name = 'fc-02'".into(),
            "usage_count must not be negative".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET usage_limit = 0 WHERE name = 'fc-02'".into(),
            "usage_limit must be an integer from 1 to 4294967294".into(),
        ),
        (
            LATEST,
            "UPDATE tier_features SET window_seconds = 0 WHERE feature = 'chat'".into(),
            "tier_features row 1e2feb89-414c-343c-1027-c4d1c386bbc4/chat: limit: window_seconds must be an integer from 1 to 31622400".into(),
        ),
        (
            LATEST,
            "UPDATE key_secrets SET value = 'enc:gcm:00ff' WHERE name = 'webhook_secret'".into(),
            "key_secrets row 78e51061-7311-d8a3-c2ce-6f447ed4d57b/webhook_secret: value: the sealed value is too short".into(),
        ),
        (
            LATEST,
            "UPDATE key_secrets SET key_id = 'gone' WHERE name = 'webhook_secret'".into(),
            "key_secrets row gone/webhook_secret: key_id names no key in the file".into(),
        ),
        (
            LATEST,
            "UPDATE consumers SET token_hash = 'not-a-hash'".into(),
            "consumers row cd447e35-b8b6-d8fe-442e-3d437204e52d: token_hash is not a SHA-256 (64 hex characters)".into(),
        ),
        (
            LATEST,
            "UPDATE consumer_scopes SET tier_id = 'gone'".into(),
            "consumer_scopes row cd447e35-b8b6-d8fe-442e-3d437204e52d/gone: tier_id names no tier in the file".into(),
        ),
        (
            LATEST,
            "UPDATE tiers SET created_at = 20261128 WHERE name = 'openai'".into(),
            "tiers row 1e2feb89-414c-343c-1027-c4d1c386bbc4: created_at is a number, not text".into(),
        ),
    ];
    for (fixture, sql, message) in &cases {
        let (_dir, from) = altered(fixture, sql);
        let key = if *fixture == SEED {
            &seed_key
        } else {
            &latest_key
        };
        let err = assert_refused(&from, key, ImportMode::Merge, message);
        assert!(matches!(err, CompatError::BadRow { .. }), "{err:?}");
    }
}

/// A direction override, isolate or zero-width character in a name (or an id) is refused on
/// import as on the API: the error names the row and the column, never the value.
#[test]
fn names_with_direction_overrides_or_invisible_characters_are_refused_naming_the_row() {
    let hidden = "contains control or format characters (such as direction overrides or zero-width characters)";
    let free1 = "043d79b3-8ddf-4d36-86d4-ddf50110a74b";
    let pro = "923ef101-b09e-4bd7-8919-42c44918b90c";
    let consumer = "cd447e35-b8b6-d8fe-442e-3d437204e52d";
    // char(8238) is U+202E, 8294/8297 U+2066/U+2069, 8203 U+200B, 65279 U+FEFF.
    let cases: Vec<(&str, String, String)> = vec![
        (
            SEED,
            "UPDATE tiers SET name = 'pro' || char(8238) || 'eerf' WHERE name = 'pro'".into(),
            format!("tiers row {pro}: name {hidden}"),
        ),
        (
            SEED,
            "UPDATE tier_features SET feature = 'ch' || char(8203) || 'at' WHERE feature = 'chat'"
                .into(),
            "tier_features row at rowid".into(),
        ),
        (
            SEED,
            format!("UPDATE keys SET name = char(8294) || 'k' || char(8297) WHERE id = '{free1}'"),
            format!("keys row {free1}: name {hidden}"),
        ),
        (
            SEED,
            format!("UPDATE keys SET id = id || char(8238) WHERE id = '{free1}'"),
            "keys row at rowid 4: id must be 1 to 128 characters, without spaces around it or control or format characters".into(),
        ),
        (
            LATEST,
            "UPDATE key_secrets SET name = 'webhook' || char(65279) WHERE name = 'webhook_secret'"
                .into(),
            "key_secrets row at rowid".into(),
        ),
        (
            LATEST,
            "UPDATE consumers SET name = name || char(8238)".into(),
            format!("consumers row {consumer}: name {hidden}"),
        ),
    ];
    for (fixture, sql, message) in &cases {
        let (_dir, from) = altered(fixture, sql);
        let err = assert_refused(&from, &fixture_key(fixture), ImportMode::Merge, message);
        assert!(matches!(err, CompatError::BadRow { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(hidden) || text.contains("id must be"),
            "{text}"
        );
        for c in ['\u{202E}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{FEFF}'] {
            assert!(!text.contains(c), "a value was echoed: {text:?}");
        }
    }
}

/// A SQLite file's schema is code: a view or a generated column runs the file's SQL whenever
/// it is read. The import reads plain tables only, and refuses a view, a virtual table or a
/// generated column under a name it reads, before reading a row; what it does not read (an
/// unrelated view, a trigger, which never fires on a read) is left alone.
#[test]
fn a_view_or_generated_column_where_a_table_belongs_is_refused_unread() {
    let cases = [
        (
            // Reads exactly like the table (rowid included): only its kind gives it away.
            "ALTER TABLE keys RENAME TO keys_real;
             CREATE VIEW keys AS SELECT rowid AS rowid, id, name, upper(key_encrypted) AS
                 key_encrypted, tier_id, is_active, created_at FROM keys_real;",
            "is a SQLite database but not the Go keypooler's: keys is a view, not a table (the import reads tables only)",
        ),
        (
            "ALTER TABLE tier_features RENAME TO tf;
             CREATE VIEW tier_features AS SELECT rowid AS rowid, * FROM tf;",
            "tier_features is a view, not a table",
        ),
        (
            "ALTER TABLE keys ADD COLUMN probe TEXT GENERATED ALWAYS AS (upper(key_encrypted)) VIRTUAL;",
            "keys has a generated column (the import reads stored values only)",
        ),
    ];
    for (sql, message) in cases {
        let (_dir, from) = altered(SEED, sql);
        let err = assert_refused(&from, &fixture_key(SEED), ImportMode::Merge, message);
        assert!(matches!(err, CompatError::NotKeypooler { .. }), "{err:?}");
    }

    // A trigger on a table it reads and a view it does not read: imported as the plain file is.
    let (_dir, from) = altered(
        SEED,
        "CREATE TRIGGER grab AFTER INSERT ON keys BEGIN
             UPDATE tiers SET name = 'x' || randomblob(4);
         END;
         CREATE VIEW everything AS SELECT * FROM keys, tiers;",
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    assert_eq!((summary.tiers, summary.keys), (2, 5));
    let plain = tempfile::tempdir().unwrap();
    let expected = plain.path().join("pool.redb");
    import_fixture(SEED, &expected);
    assert_eq!(view(&db), view(&expected));
}

/// Metadata nested 127 deep parses as a row, but inside its stored record it is one level
/// deeper than start-up's decoder goes: such a key would stop `serve` and `export`. The import
/// decodes every record as start-up will, and refuses it, naming the row.
#[test]
fn a_key_that_would_not_load_back_is_refused_naming_the_row() {
    let nested = format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127));
    let (_dir, from) = altered(
        LATEST,
        &format!("UPDATE keys SET metadata_json = '{nested}' WHERE name = 'fc-01'"),
    );
    let fc01 = expected(LATEST)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "fc-01")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = assert_refused(
        &from,
        &fixture_key(LATEST),
        ImportMode::Merge,
        &format!(
            "keys row {fc01}: keypooler could not load it back once stored: the record is not valid JSON (recursion limit exceeded)"
        ),
    );
    assert!(matches!(err, CompatError::BadRow { .. }), "{err:?}");

    // Into a new database: refused, and no file is left that start-up could not open.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    assert!(import_into(&from, &fixture_key(LATEST), &db, ImportMode::Refuse).is_err());
    let contents = Store::open(&db, &ours()).unwrap().load().unwrap();
    assert!(contents.keys.is_empty() && contents.left_out.is_empty());
}

#[test]
fn a_wrong_source_key_is_refused_and_nothing_is_written() {
    let (_dir, from) = copy_fixture(SEED);
    let err = assert_refused(
        &from,
        &hex_key(0x77),
        ImportMode::Replace,
        "keys row dd50ab8f-8134-4ef6-9914-fa2f1a715e6f: key_encrypted: the value does not open under this ENCRYPTION_KEY (is the source file's key ENCRYPTION_KEY, or does it need --encryption-key-from?)",
    );
    assert!(!err.to_string().contains(&hex_key(0x77)));
    // A fresh target given a bad file stays empty.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    assert!(import_into(&from, &hex_key(0x77), &db, ImportMode::Refuse).is_err());
    assert!(view(&db).is_empty());
}

#[test]
fn files_that_are_not_the_go_keypoolers_database_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are not the tables you are looking for").unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let redb = dir.path().join("ours.redb");
    drop(Store::open(&redb, &ours()).unwrap());
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        .unwrap();
    let half = dir.path().join("half.db");
    rusqlite::Connection::open(&half)
        .unwrap()
        .execute_batch(
            "CREATE TABLE tiers (id TEXT PRIMARY KEY, name TEXT);
             CREATE TABLE tier_features (tier_id TEXT, feature TEXT, budget INTEGER);
             CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT, tier_id TEXT, key_encrypted TEXT);",
        )
        .unwrap();
    let mut truncated = bytes(&fixtures().join(format!("{SEED}.db"))).unwrap();
    truncated.truncate(1000);
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &truncated).unwrap();
    let cases = [
        (
            text.clone(),
            "is not a SQLite database: it does not start with the SQLite header",
        ),
        (empty, "is not a SQLite database: the file is empty"),
        (
            redb,
            "is not a SQLite database: it does not start with the SQLite header",
        ),
        (
            other,
            "is a SQLite database but not the Go keypooler's: it needs the tables tiers, tier_features and keys",
        ),
        (
            half,
            "is a SQLite database but not the Go keypooler's: tier_features has neither rate_per_minute nor rate_limit",
        ),
        (cut, "is not a SQLite database"),
        (dir.path().join("missing.db"), "cannot open"),
    ];
    for (path, message) in &cases {
        let before = bytes(path);
        assert_refused(path, &hex_key(OURS), ImportMode::Merge, message);
        assert_eq!(bytes(path), before, "the source is untouched");
    }
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "these are not the tables you are looking for"
    );
}

#[test]
fn a_non_empty_target_needs_merge_or_replace() {
    let (_dir, from) = copy_fixture(LATEST);
    let err = assert_refused(
        &from,
        &fixture_key(LATEST),
        ImportMode::Refuse,
        "already holds 2 tiers, 5 keys and 0 consumers; choose --merge (keep them, skip ids already present) or --replace (delete them first)",
    );
    assert!(matches!(err, CompatError::TargetNotEmpty { .. }));
}

#[test]
fn merge_skips_ids_already_present_and_replace_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    let seed_only = view(&db);

    let (_l, latest) = copy_fixture(LATEST);
    let merged = import_into(&latest, &fixture_key(LATEST), &db, ImportMode::Merge).unwrap();
    assert_eq!((merged.tiers, merged.keys, merged.skipped), (2, 5, 0));
    let both = view(&db);
    assert_eq!(both.len(), seed_only.len() + 8);
    assert!(seed_only.iter().all(|(id, record)| both[id] == *record));

    let (_s, seed) = copy_fixture(SEED);
    let again = import_into(&seed, &fixture_key(SEED), &db, ImportMode::Merge).unwrap();
    assert_eq!((again.tiers, again.keys, again.skipped), (0, 0, 7));
    assert_eq!(view(&db), both);

    let replaced = import_into(&latest, &fixture_key(LATEST), &db, ImportMode::Replace).unwrap();
    assert_eq!(
        (replaced.tiers, replaced.keys, replaced.consumers),
        (2, 5, 1)
    );
    let fresh = tempfile::tempdir().unwrap();
    let latest_only = fresh.path().join("pool.redb");
    import_fixture(LATEST, &latest_only);
    assert_eq!(view(&db), view(&latest_only));
}

#[test]
fn merge_refuses_a_tier_name_already_used_by_another_id() {
    let (_dir, from) = altered(
        SEED,
        "UPDATE tiers SET id = 'other-pro' WHERE name = 'pro';
         UPDATE tier_features SET tier_id = 'other-pro' WHERE tier_id = '923ef101-b09e-4bd7-8919-42c44918b90c';
         UPDATE keys SET tier_id = 'other-pro' WHERE tier_id = '923ef101-b09e-4bd7-8919-42c44918b90c';",
    );
    assert_refused(
        &from,
        &fixture_key(SEED),
        ImportMode::Merge,
        "tiers row other-pro: a tier named \"pro\" is already in the database under another id",
    );
}

/// The attack a hostile `--merge` file tries: a tier row reusing the id of a tier already in
/// the database (so it is skipped), and a new consumer, whose token the attacker knows, scoped
/// to it. The import is refused whole, naming the scope row; the token draws nothing.
#[tokio::test]
async fn merge_refuses_a_consumer_scoped_to_a_tier_it_did_not_create_and_the_token_draws_nothing() {
    let pro = "923ef101-b09e-4bd7-8919-42c44918b90c";
    let hash = hex::encode(Sha256::digest(b"attacker-token"));
    let (_src, from) = altered(
        LATEST,
        &format!(
            "INSERT INTO tiers (id, name, description) VALUES ('{pro}', 'decoy', '');
             INSERT INTO tier_features (tier_id, feature, rate_limit, window_seconds)
                 VALUES ('{pro}', 'chat', 1, 60);
             INSERT INTO consumers (id, name, token_hash) VALUES ('planted', 'planted', '{hash}');
             INSERT INTO consumer_scopes (consumer_id, tier_id) VALUES ('planted', '{pro}');"
        ),
    );
    let message = format!(
        "consumer_scopes row planted/{pro}: the tier is already in the database (its row was skipped): an imported consumer may draw only from tiers the import creates"
    );
    assert_refused(&from, &fixture_key(LATEST), ImportMode::Merge, &message);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    let err = import_into(&from, &fixture_key(LATEST), &db, ImportMode::Merge).unwrap_err();
    assert!(err.to_string().contains(&message), "{err}");
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), at(IN_WINDOW)).await;
    for feature in ["chat", "firecrawl_scrape"] {
        let (status, _) = app.key_as("attacker-token", feature).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{feature}");
    }
    let consumers = crate::helpers::expect(app.get("/admin/consumers").await, StatusCode::OK).await;
    assert_eq!(consumers, json!([]));
    // The pool itself serves as before.
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
}

/// A consumer whose token hash is already some consumer's (in the database, or twice in the
/// file) is refused: two consumers would answer to one token.
#[test]
fn a_token_hash_already_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(LATEST, &db);
    let before = view(&db);
    // The same consumer under a new id and name, scoped to nothing.
    let (_src, from) = altered(
        LATEST,
        "UPDATE consumers SET id = 'copy', name = 'copy'; DELETE FROM consumer_scopes;",
    );
    let err = import_into(&from, &fixture_key(LATEST), &db, ImportMode::Merge).unwrap_err();
    assert_eq!(
        err.to_string(),
        "consumers row copy: its token_hash is already the token of a consumer in the database"
    );
    assert_eq!(view(&db), before);

    let (_src, from) = altered(
        LATEST,
        "INSERT INTO consumers (id, name, token_hash)
             SELECT 'twin', 'twin', upper(token_hash) FROM consumers;",
    );
    let err = import_into(&from, &fixture_key(LATEST), &db, ImportMode::Merge).unwrap_err();
    assert_eq!(
        err.to_string(),
        "consumers row twin: another consumer has the same token_hash"
    );
    assert_eq!(view(&db), before);
}

#[tokio::test]
async fn a_database_held_by_a_running_server_is_refused() {
    let app = TestApp::spawn().await;
    let (src_dir, from) = copy_fixture(SEED);
    let err = import_into(&from, &fixture_key(SEED), &app.db_path, ImportMode::Merge).unwrap_err();
    assert!(
        matches!(err, CompatError::Store(StoreError::InUse(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("is in use by another process"));
    let err = export_to(
        &app.db_path,
        &src_dir.path().join("out.db"),
        Schema::Seed,
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("is in use by another process"));
    // The server still serves: nothing was imported.
    let body = crate::helpers::expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(body, json!([]));
}

#[test]
fn a_source_path_with_spaces_question_marks_and_percent_signs_opens() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("go data?v=1#x %41 ключ");
    std::fs::create_dir(&folder).unwrap();
    let from = folder.join("pool 2.db");
    std::fs::copy(fixtures().join(format!("{SEED}.db")), &from).unwrap();
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    assert_eq!(summary.keys, 5);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1);
}

#[test]
fn a_wal_file_with_a_live_writer_is_read_with_its_pending_transactions() {
    let (dir, from) = copy_fixture(SEED);
    let writer = rusqlite::Connection::open(&from).unwrap();
    writer
        .execute_batch("PRAGMA wal_autocheckpoint = 0")
        .unwrap();
    let sealed = sealer(&fixture_key(SEED)).seal_go("written-while-running");
    writer
        .execute(
            "INSERT INTO keys (id, name, key_encrypted, tier_id) VALUES ('live-1', 'live', ?1, 'f3a5f86b-6aec-42e7-842b-716118eaced5')",
            [sealed],
        )
        .unwrap();
    assert!(dir.path().join(format!("{SEED}.db-wal")).exists());
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    assert_eq!(summary.keys, 6);
    assert_eq!(view(&db)["key live-1"]["value"], "written-while-running");
}
