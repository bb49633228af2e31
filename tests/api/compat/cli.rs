//! The built binary: settings from the environment, one summary line, one error line.

use super::*;

/// The built binary, run to its end in `dir` with only the settings in `env`.
fn keypooler(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    crate::process::run(dir, env, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_binary_imports_and_exports_with_a_one_line_summary() {
    let (dir, from) = copy_fixture(SEED);
    let ours_hex = hex_key(OURS);
    let source_hex = fixture_key(SEED);
    let env = [
        ("ENCRYPTION_KEY", ours_hex.as_str()),
        ("SOURCE_ENCRYPTION_KEY", source_hex.as_str()),
    ];
    let output = keypooler(
        dir.path(),
        &env,
        &["import", "--from", from.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("(seed schema)")
            && stdout.contains(": 2 tiers, 5 keys, 0 consumers, 0 skipped,"),
        "{stdout}"
    );
    assert_eq!(text(&output.stderr), "", "no progress bar off a terminal");

    let out = dir.path().join("out.db");
    let output = keypooler(dir.path(), &env[..1], &["export", "--to", "out.db"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.contains("(seed schema): 2 tiers, 5 keys"),
        "{stdout}"
    );
    let exported = bytes(&out);

    let output = keypooler(dir.path(), &env[..1], &["export", "--to", "out.db"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("already exists; pass --force"));
    assert_eq!(bytes(&out), exported);

    // The sqlite3 command line, when installed, opens it and sees the Go service's schema.
    if let Ok(check) = Command::new("sqlite3")
        .arg(&out)
        .arg("PRAGMA integrity_check")
        .output()
    {
        assert_eq!(text(&check.stdout).trim(), "ok");
        let schema = |path: &Path| {
            text(
                &Command::new("sqlite3")
                    .arg(path)
                    .arg(".schema")
                    .output()
                    .unwrap()
                    .stdout,
            )
        };
        let (_f, fixture) = copy_fixture(SEED);
        assert_eq!(schema(&out), schema(&fixture));
    }
}

/// One line on stderr, this exit code, no panic, no secret.
fn assert_one_line(output: &Output, code: i32, expected: &str, secrets: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(expected),
        "{stderr:?} should contain {expected:?}"
    );
    assert!(!stderr.contains("panicked"));
    for secret in secrets {
        assert!(!stderr.contains(secret), "a secret was echoed: {stderr}");
    }
}

#[test]
fn the_binary_fails_with_one_line_and_creates_nothing() {
    let (dir, from) = copy_fixture(SEED);
    let from = from.to_str().unwrap();
    let ours_hex = hex_key(OURS);
    let wrong = hex_key(0x77);
    let db = dir.path().join("pool.redb");

    let output = keypooler(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &ours_hex),
            ("SOURCE_ENCRYPTION_KEY", &wrong),
        ],
        &["import", "--from", from],
    );
    assert_one_line(
        &output,
        1,
        "failed; nothing was written: keys row dd50ab8f-8134-4ef6-9914-fa2f1a715e6f: key_encrypted: the value does not open",
        &[&ours_hex, &wrong, "sk-proj"],
    );
    assert!(!db.exists(), "no database was created");

    let output = keypooler(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &ours_hex),
            ("SOURCE_ENCRYPTION_KEY", "abc-secret"),
        ],
        &["import", "--from", from],
    );
    assert_one_line(
        &output,
        2,
        "SOURCE_ENCRYPTION_KEY (--encryption-key-from) must be exactly 64 hex characters",
        &["abc-secret"],
    );

    let output = keypooler(dir.path(), &[], &["import", "--from", from]);
    assert_one_line(&output, 2, "ENCRYPTION_KEY is required", &[]);

    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex)],
        &["import", "--from", "missing.db"],
    );
    assert_one_line(&output, 1, "cannot open missing.db", &[]);
    assert!(!db.exists());

    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex)],
        &["export", "--to", "out.db"],
    );
    assert_one_line(
        &output,
        1,
        "pool.redb does not exist: nothing to export",
        &[],
    );

    // A server (here: an open store) holds the database.
    let held = Store::open(&db, &ours()).unwrap();
    let output = keypooler(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &ours_hex),
            ("SOURCE_ENCRYPTION_KEY", &fixture_key(SEED)),
        ],
        &["import", "--from", from],
    );
    assert_one_line(&output, 1, "is in use by another process", &[]);
    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex)],
        &["export", "--to", "out.db"],
    );
    assert_one_line(&output, 1, "is in use by another process", &[]);
    drop(held);
    assert!(view(&db).is_empty());
    assert!(!dir.path().join("out.db").exists());
}

/// The Go service's DATABASE_URL set, no database at DB_PATH yet: one warning naming the import
/// command (never the URL's password), and the server starts all the same. Once DB_PATH
/// exists, nothing is said.
#[test]
fn database_url_with_no_database_yet_warns_once_and_starts() {
    use crate::process::{Launch, Server, free_port, http_get};
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(OURS);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        (
            "DATABASE_URL",
            "postgres://kp:url-secret-9@db.internal:5432/keypooler?sslmode=disable",
        ),
    ];
    let mut server = match Server::launch(dir.path(), &env, free_port()) {
        Launch::Listening(server) => server,
        Launch::Exited { stderr, .. } => panic!("did not start: {stderr}"),
    };
    assert_eq!(http_get(server.port, "/health", "").0, 200);
    let (_, log) = server.stop();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("DATABASE_URL"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("keypooler import --from"),
        "{log}"
    );
    assert!(!log.contains("url-secret-9"), "{log}");

    server = match Server::launch(dir.path(), &env, free_port()) {
        Launch::Listening(server) => server,
        Launch::Exited { stderr, .. } => panic!("did not start again: {stderr}"),
    };
    let (_, log) = server.stop();
    assert!(!log.contains("DATABASE_URL"), "DB_PATH exists now: {log}");
}

/// One transaction of every key leaves about as many freed pages in the redb file as it holds;
/// the command gives them back. (The library's `import` leaves them: the command compacts.)
#[test]
fn the_binary_compacts_the_file_it_imported_into() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging.redb");
    crate::helpers::large_database(&staging, &ours(), 3_000);
    let from = dir.path().join("go.db");
    let contents = Store::open(&staging, &ours()).unwrap().load().unwrap();
    export(
        &contents,
        &ours(),
        &from,
        Schema::Latest,
        false,
        0,
        &ProgressBar::hidden(),
    )
    .unwrap();
    let ours_hex = hex_key(OURS);
    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex), ("DB_PATH", "pool.redb")],
        &["import", "--from", "go.db"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut imported = Store::open(&dir.path().join("pool.redb"), &ours()).unwrap();
    assert!(
        !imported.compact().unwrap(),
        "the command left pages to give back"
    );
    assert_eq!(imported.load().unwrap().keys.len(), 3_000);

    let uncompacted = dir.path().join("library.redb");
    import_into(&from, &ours_hex, &uncompacted, ImportMode::Refuse).unwrap();
    let mut library = Store::open(&uncompacted, &ours()).unwrap();
    assert!(
        library.compact().unwrap(),
        "a plain import leaves freed pages"
    );
}
