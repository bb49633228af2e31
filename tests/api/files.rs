//! Bad database files, from outside: corrupt, truncated, empty, foreign, unreadable, held by
//! another server. Start-up exits 1 with one clear line, never panics, never binds the port,
//! and leaves the file byte for byte as it was.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use keypooler::store::{Store, StoreError};
use serde_json::json;

use crate::binary::assert_one_clear_line;
use crate::helpers::{hex_key, sealer};
use crate::process::{Server, TOKEN, free_port, keypooler, listens};

/// A small xorshift generator: the cases are reproducible from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A real database, written by the server: two tiers, five keys, one with secrets.
fn base_database(dir: &Path, key: &str) -> Vec<u8> {
    let server = Server::start(dir, key);
    for tier in ["pro", "free"] {
        server.create_tier(tier, "chat", 10);
    }
    for i in 0..5 {
        let body = json!({"name": format!("k{i}"), "key": format!("sk-{i}"), "tier": "pro",
            "secrets": {"org": format!("org-{i}")}});
        server.add_key(&body);
    }
    assert!(server.terminate().success());
    fs::read(dir.join("pool.redb")).unwrap()
}

/// Whether this process runs as root (file permissions do not stop root's reads).
fn running_as_root(dir: &Path) -> bool {
    let probe = dir.join("probe");
    fs::write(&probe, b"").unwrap();
    let root = fs::metadata(&probe).unwrap().uid() == 0;
    fs::remove_file(probe).unwrap();
    root
}

/// Start-up over `db` must stop with one line containing `expected`, exit 1, not bind its
/// port, and leave `db` as it was.
fn assert_refused(dir: &Path, db: &Path, key: &str, expected: &str, as_nobody: bool) {
    let before = fs::read(db).ok();
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("ENCRYPTION_KEY", key),
        ("ADMIN_TOKEN", TOKEN),
        ("SERVER_PORT", port_text.as_str()),
        ("DB_PATH", db.to_str().unwrap()),
    ];
    let mut command = keypooler(dir, &env);
    if as_nobody {
        command.uid(65534).gid(65534);
    }
    let output = command.output().unwrap();
    assert_one_clear_line(&output, 1, expected);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(!listens(port), "nothing listens on {port}");
    assert_eq!(fs::read(db).ok(), before, "{} was modified", db.display());
}

fn case(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn damaged_foreign_and_unreadable_files_are_refused_untouched_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = hex_key(0x31);
    let base = base_database(dir, &key);

    let empty = case(dir, "empty.redb", b"");
    assert_refused(
        dir,
        &empty,
        &key,
        "is not a keypooler database: the file is empty",
        false,
    );

    let half = case(dir, "half.redb", &base[..base.len() / 2]);
    assert_refused(
        dir,
        &half,
        &key,
        "is damaged (File truncated below stored layout",
        false,
    );
    let stub = case(dir, "stub.redb", &base[..1000]);
    assert_refused(dir, &stub, &key, "is damaged", false);

    let text = case(
        dir,
        "notes.redb",
        b"these are not the keys you are looking for\n",
    );
    assert_refused(dir, &text, &key, "is not a keypooler database", false);

    let foreign = dir.join("other-app.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("users"))
            .unwrap()
            .insert("alice", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    assert_refused(
        dir,
        &foreign,
        &key,
        "a redb file without keypooler's tables",
        false,
    );

    let wrong = case(dir, "wrong-key.redb", &base);
    assert_refused(
        dir,
        &wrong,
        &hex_key(0x32),
        "ENCRYPTION_KEY does not match",
        false,
    );

    // The header's commit slots scrambled: redb cannot trust either.
    let mut scrambled = base.clone();
    scrambled[64..512].fill(0xa5);
    let scrambled = case(dir, "scrambled.redb", &scrambled);
    assert_refused(dir, &scrambled, &key, "is damaged", false);

    let folder = dir.join("folder.redb");
    fs::create_dir(&folder).unwrap();
    assert_refused(dir, &folder, &key, "not a regular file", false);

    // Unreadable: permissions do not stop root, so as root the server runs as `nobody` (the
    // folder is opened up for it); otherwise as this user.
    let locked = dir.join("locked");
    fs::create_dir(&locked).unwrap();
    let unreadable = case(&locked, "pool.redb", &base);
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let as_nobody = running_as_root(dir);
    if as_nobody {
        for open in [dir, locked.as_path()] {
            fs::set_permissions(open, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let before = base.clone();
    assert_refused(&locked, &unreadable, &key, "Permission denied", as_nobody);
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::read(&unreadable).unwrap(), before);

    // And the original still opens: nothing above touched it.
    let server = Server::start(dir, &key);
    assert_eq!(
        server
            .request("GET", "/admin/keys", None)
            .unwrap()
            .1
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert!(server.terminate().success());
}

/// Applies one seeded kind of damage: a flipped bit, a run of garbage, a truncation, a header
/// byte.
pub fn damage(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.below(4) {
        0 => {
            let at = rng.below(out.len());
            out[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = rng.below(out.len());
            let end = (at + 512).min(out.len());
            for byte in &mut out[at..end] {
                *byte = rng.next() as u8;
            }
        }
        2 => out.truncate(rng.below(out.len())),
        _ => {
            let at = rng.below(4096.min(out.len()));
            out[at] ^= 0xff;
        }
    }
    out
}

/// Seeded random damage through the binary: each file is either served (the damage hit
/// unused space or was repaired) or refused cleanly and left untouched.
#[test]
fn randomly_damaged_files_never_panic_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = hex_key(0x33);
    let base = base_database(dir, &key);
    let cases: usize = std::env::var("KEYPOOLER_DAMAGE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24);
    let (mut refused, mut served) = (0, 0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for n in 0..cases {
        let bytes = damage(&base, &mut rng);
        let db = case(dir, &format!("damaged-{n}.redb"), &bytes);
        let port = free_port();
        match Server::launch(
            dir,
            &[("ENCRYPTION_KEY", &key), ("DB_PATH", db.to_str().unwrap())],
            port,
        ) {
            crate::process::Launch::Listening(server) => {
                served += 1;
                let log = server.log().join("\n");
                let status = server.terminate();
                assert!(status.success(), "case {n}: {status:?}\n{log}");
            }
            crate::process::Launch::Exited {
                status,
                stdout,
                stderr,
            } => {
                refused += 1;
                assert_eq!(status.code(), Some(1), "case {n}: {stderr}");
                assert_eq!(stderr.lines().count(), 1, "case {n}: {stderr}");
                assert!(!stderr.contains("panicked"), "case {n}: {stderr}");
                assert!(!stdout.contains("listening"), "case {n}");
                assert!(!listens(port));
                assert_eq!(fs::read(&db).unwrap(), bytes, "case {n} was modified");
            }
        }
    }
    println!(
        "damaged files through the binary: {cases} cases, {refused} refused untouched, {served} served"
    );
}

/// The same, many more cases, through the store directly (no process per case).
#[test]
fn randomly_damaged_files_are_refused_by_the_store_without_panic_or_change() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = hex_key(0x34);
    let base = base_database(dir, &key);
    let sealer = sealer(&key);
    let cases: usize = std::env::var("KEYPOOLER_DAMAGE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .map_or(400, |n: usize| n * 16);
    let (mut refused, mut served) = (0, 0);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for n in 0..cases {
        let bytes = damage(&base, &mut rng);
        let db = case(dir, "damaged.redb", &bytes);
        match Store::open(&db, &sealer).and_then(|store| store.load()) {
            Ok(_) => served += 1,
            Err(err) => {
                refused += 1;
                assert!(
                    !matches!(err, StoreError::InUse(_) | StoreError::Storage(_)),
                    "case {n}: an unclear error: {err}"
                );
                assert_eq!(
                    fs::read(&db).unwrap(),
                    bytes,
                    "case {n} was modified: {err}"
                );
            }
        }
    }
    println!(
        "damaged files through the store: {cases} cases, {refused} refused untouched, {served} opened"
    );
}

/// The binary under `umask 022` (files 0644 and folders 0755 unless it asks for less), in `dir`.
fn under_umask_022(dir: &Path, env: &[(&str, &str)]) -> std::process::Command {
    crate::process::wrapped(&["sh", "-c", "umask 022 && exec \"$0\" \"$@\""], dir, env)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// What keypooler creates is its owner's only, whatever the umask: the data folder (and the
/// folders above it that it makes) 0700, the database and every export 0600. A folder the
/// operator made keeps its mode.
#[test]
fn the_data_folder_is_created_0700_and_the_database_and_exports_0600() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("data/pools/pool.redb");
    let key = hex_key(0x61);
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", crate::process::TOKEN),
        ("SERVER_PORT", port_text.as_str()),
        ("DB_PATH", db.to_str().unwrap()),
    ];
    let server = Server::spawn(under_umask_022(dir.path(), &env), port);
    server.create_tier("pro", "chat", 10);
    assert!(server.terminate().success());
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    assert_eq!(mode(&dir.path().join("data/pools")), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(
        mode(dir.path()),
        0o755,
        "an existing folder is left as it was"
    );

    for schema in ["seed", "latest"] {
        let out = dir.path().join(format!("{schema}.db"));
        let output = under_umask_022(dir.path(), &env)
            .args(["export", "--schema", schema, "--to", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(mode(&out), 0o600, "{schema} export");

        // Imported into a new database: created 0600 too.
        let imported = dir.path().join(format!("imported/{schema}.redb"));
        let output = under_umask_022(dir.path(), &[("ENCRYPTION_KEY", key.as_str())])
            .env("DB_PATH", &imported)
            .args(["import", "--from", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(mode(&imported), 0o600);
        assert_eq!(mode(imported.parent().unwrap()), 0o700);
    }
}
