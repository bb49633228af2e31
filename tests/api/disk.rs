//! Disk trouble under a running server: a full disk (a small tmpfs). The admin call answers 500
//! with a clear JSON error, the served pool stays as it was, `GET /key` keeps serving, and
//! writes work again once space is back, without a restart. A read-only file system is refused
//! at start-up with one line.
//!
//! Mounting needs root, so the test is ignored by a plain `cargo test`; CI runs it as root with
//! `cargo test -- --include-ignored`. When `mount` fails the test fails, saying why.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::helpers::hex_key;
use crate::process::{Server, TOKEN, free_port};

/// A tmpfs mounted for the test, unmounted (lazily) when dropped, even after a failure.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        let failure = match output {
            Ok(output) if output.status.success() => return Self(at.into()),
            Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
            Err(err) => err.to_string(),
        };
        panic!("cannot mount a tmpfs ({failure}); this test needs root");
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

/// Every value `GET /key` serves for `feature` in `rounds` calls.
fn served(server: &Server, feature: &str, rounds: usize) -> BTreeSet<String> {
    (0..rounds)
        .map(|_| {
            let (status, body) = server
                .request("GET", &format!("/key?feature={feature}"), None)
                .unwrap();
            assert_eq!(status, 200, "{body}");
            body["value"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn key_names(server: &Server) -> BTreeSet<String> {
    let (status, keys) = server.request("GET", "/admin/keys", None).unwrap();
    assert_eq!(status, 200);
    keys.as_array()
        .unwrap()
        .iter()
        .map(|key| key["name"].as_str().unwrap().to_owned())
        .collect()
}

fn add_key(server: &Server, name: &str, padding: usize) -> (u16, serde_json::Value) {
    let body = json!({"name": name, "key": format!("sk-{name}"), "tier": "pro",
        "metadata": {"padding": "p".repeat(padding)}});
    server.request("POST", "/admin/keys", Some(&body)).unwrap()
}

/// Asserts a failed write: 500, the JSON error naming the cause, nothing changed.
fn assert_unsaved(answer: (u16, serde_json::Value), cause: &str) {
    let (status, body) = answer;
    assert_eq!(status, 500, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.starts_with("the change was not saved") && message.contains(cause),
        "{message}"
    );
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_full_or_read_only_disk_fails_the_write_cleanly_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "4m");
    let db = disk.0.join("pool.redb");
    let key = hex_key(0x41);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("DB_PATH", db.to_str().unwrap()),
    ];
    let crate::process::Launch::Listening(server) = Server::launch(dir.path(), &env, free_port())
    else {
        panic!("the server did not start on the tmpfs");
    };
    server.create_tier("pro", "chat", 1000);
    for name in ["a", "b", "c"] {
        assert_eq!(add_key(&server, name, 0).0, 201);
    }
    let before: BTreeSet<String> = ["sk-a", "sk-b", "sk-c"].map(String::from).into();
    assert_eq!(served(&server, "chat", 3), before);

    // A full disk: a key big enough to need new pages cannot be saved.
    let filler = disk.0.join("filler");
    fill(&filler);
    assert_unsaved(
        add_key(&server, "big", 512 * 1024),
        "No space left on device",
    );
    assert_unsaved(
        add_key(&server, "big-again", 512 * 1024),
        "No space left on device",
    );
    assert_eq!(served(&server, "chat", 6), before, "the pool is unchanged");
    assert_eq!(key_names(&server), ["a", "b", "c"].map(String::from).into());

    // Space back: the writer reopens the file and writes work again.
    fs::remove_file(&filler).unwrap();
    assert_eq!(add_key(&server, "d", 512 * 1024).0, 201);
    let mut after = before.clone();
    after.insert("sk-d".into());
    assert_eq!(served(&server, "chat", 4), after);

    let log = server.log().join("\n");
    assert!(server.terminate().success());
    assert!(log.contains("write batch failed"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Everything acknowledged is on disk; nothing refused is.
    let crate::process::Launch::Listening(server) = Server::launch(dir.path(), &env, free_port())
    else {
        panic!("the server did not restart");
    };
    assert_eq!(
        key_names(&server),
        ["a", "b", "c", "d"].map(String::from).into()
    );
    assert!(server.terminate().success());

    // Read-only: Linux refuses to remount a file system read-only while a file on it is open
    // for writing (the running server's), so this is the start-up case: one line, exit 1.
    disk.remount_read_only();
    let bytes = fs::read(&db).unwrap();
    let output = crate::process::run(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", key.as_str()),
            ("ADMIN_TOKEN", TOKEN),
            ("DB_PATH", db.to_str().unwrap()),
            ("SERVER_PORT", "1"),
        ],
        &[],
    );
    crate::binary::assert_one_clear_line(&output, 1, "Read-only file system");
    assert_eq!(fs::read(&db).unwrap(), bytes);
}
