//! Online backups: `GET /admin/backup` while the server serves and writes, and
//! `keypooler backup` against the running binary.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keypooler::broker::Clock;
use keypooler::store::{Contents, Store, UsageRecord, load_catalog, open_key};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Notify;

use crate::binary::assert_one_clear_line;
use crate::helpers::{TestApp, expect, expect_error, hex_key, sealer};
use crate::process::{Launch, Server, TOKEN, free_port, http_get, run};

/// A key a writer task had acknowledged: which task, its place in that task's sequence, and
/// what it was created with.
#[derive(Clone, Debug)]
struct Acked {
    task: usize,
    seq: usize,
    id: String,
    value: String,
    tier: String,
}

/// Every record of the database at `path`, opened with `key_hex` (which checks the canary);
/// every key's value is opened too, and none is left out at start-up.
fn open_and_load(path: &Path, key_hex: &str) -> (Contents, BTreeMap<String, String>) {
    let sealer = sealer(key_hex);
    let store = Store::open(path, &sealer).expect("the backup opens under the same key");
    let (_, skipped) = load_catalog(&store, &sealer, &Clock::monotonic()).unwrap();
    assert!(skipped.is_empty(), "records left out of the backup's pool");
    let contents = store.load().unwrap();
    let values = contents
        .keys
        .iter()
        .map(|key| {
            let opened = open_key(key, &sealer).expect("every value decrypts");
            (key.id.clone(), opened.value.to_string())
        })
        .collect();
    (contents, values)
}

/// No file of a backup is left in the data folder: the copy's file is gone once it was sent.
fn assert_no_backup_files(folder: &Path) {
    let names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|name| !name.contains("backup")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_write_load_holds_every_acknowledged_write_and_opens() {
    const TASKS: usize = 4;
    const MOST_PER_TASK: usize = 400;
    let app = Arc::new(TestApp::spawn().await);
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Each task creates a tier every fifth key and puts its keys in its newest tier, so a key
    // and its tier are two writes a snapshot must hold together.
    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let (app, acked, progress, stop) = (
                Arc::clone(&app),
                Arc::clone(&acked),
                Arc::clone(&progress),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut tier = String::new();
                for seq in 0..MOST_PER_TASK {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if seq % 5 == 0 {
                        tier = format!("t{task}-{seq}");
                        app.create_tier(&tier, json!({"chat": 1000})).await;
                    }
                    let value = format!("sk-{task}-{seq}");
                    let id = app.add_key(&format!("k{task}-{seq}"), &value, &tier).await;
                    acked.lock().unwrap().push(Acked {
                        task,
                        seq,
                        id,
                        value,
                        tier: tier.clone(),
                    });
                    progress.notify_one();
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 40 {
        progress.notified().await;
    }

    // Everything acknowledged before the backup is asked for must be in it.
    let before = acked.lock().unwrap().clone();
    let response = app.get("/admin/backup").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/octet-stream");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"keypooler-backup-")
            && disposition.ends_with(".redb\""),
        "{disposition}"
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
    // The server kept serving and writing meanwhile: the writers finish on their own.
    let after_backup = acked.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(acked.lock().unwrap().len() >= after_backup);
    assert_no_backup_files(app.db_path.parent().unwrap());

    let restore = tempfile::tempdir().unwrap();
    let path = restore.path().join("pool.redb");
    std::fs::write(&path, &bytes).unwrap();
    let (contents, values) = open_and_load(&path, &app.key_hex);
    for key in &before {
        assert_eq!(
            values.get(&key.id),
            Some(&key.value),
            "key {} of task {} acknowledged before the backup",
            key.seq,
            key.task
        );
    }
    // One commit, whole: each task's keys (and tiers) are a prefix of what it wrote, and every
    // key's tier is there, under the name it was created in.
    let tiers: HashMap<&str, &str> = contents
        .tiers
        .iter()
        .map(|tier| (tier.id.as_str(), tier.name.as_str()))
        .collect();
    let all = acked.lock().unwrap().clone();
    for task in 0..TASKS {
        let written: Vec<&Acked> = all.iter().filter(|key| key.task == task).collect();
        let held = written
            .iter()
            .take_while(|key| values.contains_key(&key.id))
            .count();
        assert!(
            written[held..]
                .iter()
                .all(|key| !values.contains_key(&key.id)),
            "task {task}: the backup holds a later key without an earlier one"
        );
        for key in &written[..held] {
            let record = contents.keys.iter().find(|k| k.id == key.id).unwrap();
            assert_eq!(tiers.get(record.tier_id.as_str()), Some(&key.tier.as_str()));
        }
    }
    let stored_keys = contents.keys.len();
    assert_eq!(stored_keys, values.len());
    assert!(stored_keys >= before.len());

    // Restoring is starting on the file.
    let app = TestApp::on_database_at(restore, path, &app.key_hex, app.wall.unix_now_ms()).await;
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys.as_array().unwrap().len(), stored_keys);
    let (status, served) = app.key("chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        values
            .get(served["key_id"].as_str().unwrap())
            .map(String::as_str),
        served["value"].as_str()
    );
}

/// A database of about `megabytes` MiB (in audit events), too large to sit whole in the socket
/// buffers between a server and a client that does not read.
fn large_database(path: &Path, key_hex: &str, megabytes: usize) {
    let store = Store::open(path, &sealer(key_hex)).unwrap();
    let batch = store.begin().unwrap();
    let events: Vec<UsageRecord> = (0..megabytes * 256)
        .map(|n| UsageRecord {
            key_id: format!("{n:0>4000}"),
            consumer_id: None,
            feature: "chat".into(),
            created_at_ms: 1,
            event: None,
        })
        .collect();
    batch.append_usage(&events, u64::MAX).unwrap();
    batch.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_at_a_time_the_second_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/pool.redb");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let key_hex = hex_key(0x5a);
    large_database(&path, &key_hex, 24);
    let app = TestApp::on_database_at(dir, path, &key_hex, 1_700_000_000_000).await;

    // The first is answered and not read: its file is being sent.
    let first = app.get("/admin/backup").await;
    assert_eq!(first.status(), StatusCode::OK);
    expect_error(
        app.get("/admin/backup").await,
        StatusCode::CONFLICT,
        "a backup is already running; try again once it has finished",
    )
    .await;
    // The server serves meanwhile.
    assert_eq!(
        expect(app.get("/admin/health").await, StatusCode::OK).await["pool_size"],
        0
    );

    // Once it is sent, the slot is free again (the server notices the end of the first just
    // after its client does).
    let bytes = first.bytes().await.unwrap();
    assert!(bytes.len() > 24 << 20);
    let mut attempts = 0;
    let again = loop {
        let response = app.get("/admin/backup").await;
        if response.status() != StatusCode::CONFLICT || attempts == 500 {
            break response;
        }
        attempts += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.bytes().await.unwrap().len(), bytes.len());
    assert_no_backup_files(app.db_path.parent().unwrap());
}

/// `keypooler backup` against `port`, run in `dir`.
fn backup_command(dir: &Path, port: u16, token: &str, args: &[&str]) -> std::process::Output {
    let url = format!("http://127.0.0.1:{port}");
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    run(
        dir,
        &[("KEYPOOLER_URL", url.as_str()), ("ADMIN_TOKEN", token)],
        &all,
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Nothing but `expected` in `folder`: no temporary file left behind.
fn assert_only(folder: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected);
}

#[test]
fn the_backup_command_writes_a_private_file_a_server_starts_on() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x21);
    let server = Server::start(dir.path(), &key);
    server.create_tier("pro", "chat", 100);
    let (status, _) = server
        .request(
            "POST",
            "/admin/keys",
            Some(&json!({"name": "k", "key": "sk-live", "tier": "pro"})),
        )
        .unwrap();
    assert_eq!(status, 201);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("pool-backup.redb");
    let to = file.to_str().unwrap();

    let written = backup_command(dir.path(), server.port, TOKEN, &["--to", to]);
    let stdout = String::from_utf8_lossy(&written.stdout);
    assert!(written.status.success(), "{written:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("1 tiers, 1 keys, 0 consumers"), "{stdout}");
    assert_eq!(mode(&file), 0o600);
    assert_only(&out, &["pool-backup.redb"]);

    // An existing file is kept unless --force.
    let before = std::fs::read(&file).unwrap();
    let refused = backup_command(dir.path(), server.port, TOKEN, &["--to", to]);
    assert_one_clear_line(&refused, 1, "exists; pass --force to replace it");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    let forced = backup_command(dir.path(), server.port, TOKEN, &["--to", to, "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(mode(&file), 0o600);
    assert_only(&out, &["pool-backup.redb"]);

    // The wrong token: the server's message, on one line, and no file.
    let other = out.join("other.redb");
    let wrong = backup_command(
        dir.path(),
        server.port,
        "not-the-admin-token-at-all",
        &["--to", other.to_str().unwrap()],
    );
    assert_one_clear_line(&wrong, 3, "401 Unauthorized: invalid token");
    assert_only(&out, &["pool-backup.redb"]);
    server.stop();

    // No server there: one line, exit 1.
    let nobody = backup_command(dir.path(), free_port(), TOKEN, &["--to", to, "--force"]);
    assert_one_clear_line(&nobody, 1, "cannot connect");
    // Bad settings: exit 2.
    let no_token = run(dir.path(), &[], &["backup", "--to", to]);
    assert_one_clear_line(&no_token, 2, "ADMIN_TOKEN is required");
    let https = run(
        dir.path(),
        &[
            ("ADMIN_TOKEN", TOKEN),
            ("KEYPOOLER_URL", "https://pool.example"),
        ],
        &["backup", "--to", to],
    );
    assert_one_clear_line(&https, 2, "KEYPOOLER_URL must be an http:// URL");

    // Restoring is starting a server on the file.
    let restored = tempfile::tempdir().unwrap();
    let port = free_port();
    let launched = Server::launch(
        restored.path(),
        &[("ENCRYPTION_KEY", &key), ("DB_PATH", to)],
        port,
    );
    let Launch::Listening(server) = launched else {
        panic!("the server did not start on the backup");
    };
    let (status, body) = http_get(server.port, "/key?feature=chat", TOKEN);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sk-live"), "{body}");
    server.stop();
}
