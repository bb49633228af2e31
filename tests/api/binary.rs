//! From outside: the built binary, its settings, its exit codes, its shutdown.

use std::process::Output;

use crate::helpers::hex_key;
use crate::process::{Server, TOKEN, http_get, run};

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One line on stderr, naming the problem; no panic, no backtrace.
pub fn assert_one_clear_line(output: &Output, code: i32, expected: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert_eq!(text.lines().count(), 1, "exactly one line: {text}");
    assert!(
        text.contains(expected),
        "{text:?} should mention {expected:?}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// An admin token one character too short: refused without being echoed.
const SHORT_TOKEN: &str = "short-secret-15";

#[test]
fn each_bad_setting_stops_start_up_with_one_line_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x11);
    let not_hex = "zq".repeat(32);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("ADMIN_TOKEN", TOKEN)], "ENCRYPTION_KEY is required"),
        (
            vec![("ENCRYPTION_KEY", ""), ("ADMIN_TOKEN", TOKEN)],
            "ENCRYPTION_KEY is required",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", "deadbeef-secret"),
                ("ADMIN_TOKEN", TOKEN),
            ],
            "ENCRYPTION_KEY must be exactly 64 hex characters",
        ),
        (
            vec![("ENCRYPTION_KEY", &not_hex), ("ADMIN_TOKEN", TOKEN)],
            "ENCRYPTION_KEY must be hex",
        ),
        (vec![("ENCRYPTION_KEY", &key)], "ADMIN_TOKEN is required"),
        (
            vec![("ENCRYPTION_KEY", &key), ("ADMIN_TOKEN", SHORT_TOKEN)],
            "ADMIN_TOKEN must be at least 16 characters",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("SERVER_PORT", "0"),
            ],
            "SERVER_PORT must be an integer from 1 to 65535",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("SERVER_PORT", "99999"),
            ],
            "SERVER_PORT must be an integer from 1 to 65535",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("LOG_LEVEL", "verbose"),
            ],
            "LOG_LEVEL must be one of debug, info, warn, error",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("LOG_FORMAT", "xml"),
            ],
            "LOG_FORMAT must be json or pretty",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("AUDIT", "sometimes"),
            ],
            "AUDIT must be on or off",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("METRICS_PORT", "0"),
            ],
            "METRICS_PORT must be an integer from 1 to 65535",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("METRICS", "sometimes"),
            ],
            "METRICS must be on or off",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("WRITE_TIMEOUT", "forever"),
            ],
            "WRITE_TIMEOUT must be a number of seconds",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", TOKEN),
                ("MAX_CONNECTIONS_PER_IP", "-1"),
            ],
            "MAX_CONNECTIONS_PER_IP must be an integer from 1 to 1000000",
        ),
    ];
    for (env, expected) in cases {
        let output = run(dir.path(), &env, &[]);
        assert_one_clear_line(&output, 2, expected);
        let text = stderr(&output);
        for secret in ["deadbeef-secret", &not_hex, &key, SHORT_TOKEN] {
            assert!(!text.contains(secret), "a secret was echoed: {text}");
        }
    }
    assert!(
        !dir.path().join("pool.redb").exists(),
        "nothing was created"
    );
}

#[test]
fn a_flag_overrides_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x11);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", TOKEN),
        ("SERVER_PORT", "8080"),
    ];
    let output = run(dir.path(), &env, &["serve", "--server-port", "0"]);
    assert_one_clear_line(&output, 2, "SERVER_PORT must be");
    let output = run(dir.path(), &env, &["--log-level", "shout"]);
    assert_one_clear_line(&output, 2, "LOG_LEVEL must be");
}

#[test]
fn a_sqlite_file_at_db_path_is_refused_untouched_naming_the_import_command() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(&db, &bytes).unwrap();
    let key = hex_key(0x11);
    let db_text = db.to_str().unwrap();
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", TOKEN),
        ("DB_PATH", db_text),
    ];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, "keypooler import --from");
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}

#[test]
fn the_binary_serves_stops_on_sigterm_and_refuses_a_wrong_key_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x11);
    let server = Server::start(dir.path(), &key);
    assert_eq!(
        http_get(server.port, "/health", ""),
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_eq!(
        http_get(server.port, "/admin/tiers", TOKEN),
        (200, "[]".into())
    );
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    let wrong = hex_key(0x22);
    let env = [("ENCRYPTION_KEY", wrong.as_str()), ("ADMIN_TOKEN", TOKEN)];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, "ENCRYPTION_KEY does not match this database");
    assert!(!stderr(&output).contains(&wrong));

    // The right key still opens it: the refusal changed nothing.
    let server = Server::start(dir.path(), &key);
    assert_eq!(http_get(server.port, "/admin/tiers", TOKEN).0, 200);
    assert!(server.terminate().success());
}

#[test]
fn a_database_in_use_by_a_running_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x11);
    let server = Server::start(dir.path(), &key);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", TOKEN),
        ("SERVER_PORT", "1"),
    ];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, "in use by another process");
    assert!(server.terminate().success());
}

/// Each thread of process `pid`: its id, name and niceness (field 19 of its /proc stat; the name
/// in parentheses before it may hold spaces, so fields are counted after it).
fn thread_niceness(pid: u32) -> Vec<(u32, String, i32)> {
    let mut threads: Vec<(u32, String, i32)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let task = task.unwrap();
            let tid = task.file_name().to_str().unwrap().parse().unwrap();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            let (head, tail) = stat.rsplit_once(')').unwrap();
            let name = head.split_once('(').unwrap().1.to_owned();
            // After the name: state is field 3, so niceness (19) is the 17th.
            let nice = tail.split_whitespace().nth(16).unwrap().parse().unwrap();
            (tid, name, nice)
        })
        .collect();
    threads.sort();
    threads
}

/// The writer yields the core to request threads: its work (audit flushes, admin writes) never
/// holds up `GET /key` on a saturated core. It is 10 nicer than the process (at most 19), and every
/// other thread keeps the process's priority, whatever the test run's own niceness. The server
/// starts serving only once the writer runs at its priority, so this holds from the first answer.
/// (Threads are told apart by id, not name: a thread takes its name only once it first runs.)
#[test]
fn the_writer_thread_runs_below_the_request_threads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hex_key(0x33));
    let threads = thread_niceness(server.pid());
    let process = threads
        .iter()
        .find(|&&(tid, _, _)| tid == server.pid())
        .map(|&(_, _, nice)| nice)
        .unwrap_or_else(|| panic!("no main thread: {threads:?}"));
    let (writer, others): (Vec<_>, Vec<_>) = threads
        .iter()
        .partition(|(_, name, _)| name == "keypooler-write");
    let writer: Vec<i32> = writer.iter().map(|&&(_, _, nice)| nice).collect();
    assert_eq!(writer, [(process + 10).min(19)], "{threads:?}");
    // A worker answered the start-up probe, so at least one has taken its name.
    assert!(
        others.iter().any(|(_, name, _)| name == "keypooler-http")
            && others.iter().all(|&&(_, _, nice)| nice == process),
        "{threads:?}"
    );
    assert!(server.terminate().success());
}
