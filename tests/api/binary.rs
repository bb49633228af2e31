//! SPEC §1, from outside: the built binary, its settings, its exit codes, its shutdown.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::helpers::hex_key;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_keypooler");
const SETTINGS: [&str; 11] = [
    "ENCRYPTION_KEY",
    "ADMIN_TOKEN",
    "SERVER_PORT",
    "DB_PATH",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "HEADER_READ_TIMEOUT",
    "REQUEST_TIMEOUT",
    "MAX_CONNECTIONS",
    "ALLOW_CORE_DUMPS",
    "MLOCK",
];

pub(crate) fn keypooler(dir: &Path, env: &[(&str, &str)]) -> Command {
    wrapped(&[], dir, env)
}

/// The binary run by `wrapper` (a command that ends by running it, e.g. `prlimit --core=0`),
/// in `dir`, with only the settings in `env` and `DB_PATH` in `dir`.
pub(crate) fn wrapped(wrapper: &[&str], dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(BIN);
            command
        }
        None => Command::new(BIN),
    };
    for name in SETTINGS {
        command.env_remove(name);
    }
    command
        .current_dir(dir)
        .env("DB_PATH", dir.join("pool.redb"))
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

pub(crate) fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    keypooler(dir, env).args(args).output().unwrap()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One line on stderr, naming the problem; no panic, no backtrace.
pub(crate) fn assert_one_clear_line(output: &Output, code: i32, expected: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert_eq!(text.lines().count(), 1, "exactly one line: {text}");
    assert!(
        text.contains(expected),
        "{text:?} should mention {expected:?}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn each_bad_setting_stops_start_up_with_one_line_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x11);
    let not_hex = "zq".repeat(32);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("ADMIN_TOKEN", "t")], "ENCRYPTION_KEY is required"),
        (
            vec![("ENCRYPTION_KEY", ""), ("ADMIN_TOKEN", "t")],
            "ENCRYPTION_KEY is required",
        ),
        (
            vec![("ENCRYPTION_KEY", "deadbeef-secret"), ("ADMIN_TOKEN", "t")],
            "ENCRYPTION_KEY must be exactly 64 hex characters",
        ),
        (
            vec![("ENCRYPTION_KEY", &not_hex), ("ADMIN_TOKEN", "t")],
            "ENCRYPTION_KEY must be hex",
        ),
        (vec![("ENCRYPTION_KEY", &key)], "ADMIN_TOKEN is required"),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", "t"),
                ("SERVER_PORT", "0"),
            ],
            "SERVER_PORT must be an integer from 1 to 65535",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", "t"),
                ("SERVER_PORT", "99999"),
            ],
            "SERVER_PORT must be an integer from 1 to 65535",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", "t"),
                ("LOG_LEVEL", "verbose"),
            ],
            "LOG_LEVEL must be one of debug, info, warn, error",
        ),
        (
            vec![
                ("ENCRYPTION_KEY", &key),
                ("ADMIN_TOKEN", "t"),
                ("LOG_FORMAT", "xml"),
            ],
            "LOG_FORMAT must be json or pretty",
        ),
    ];
    for (env, expected) in cases {
        let output = run(dir.path(), &env, &[]);
        assert_one_clear_line(&output, 2, expected);
        let text = stderr(&output);
        for secret in ["deadbeef-secret", &not_hex, &key] {
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
        ("ADMIN_TOKEN", "t"),
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
        ("ADMIN_TOKEN", "t"),
        ("DB_PATH", db_text),
    ];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, "keypooler import --from");
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}

/// A free port to give a server.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server, started from the binary on a free port.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    /// Everything it wrote on stdout (its logs), collected until it exits.
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(dir: &Path, key: &str) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let env = [
            ("ENCRYPTION_KEY", key),
            ("ADMIN_TOKEN", "binary-token"),
            ("SERVER_PORT", port_text.as_str()),
        ];
        Self::spawn(keypooler(dir, &env), port)
    }

    /// Starts `command` (set up to listen on `port`) and waits until it listens.
    pub(crate) fn spawn(mut command: Command, port: u16) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The "listening" log line is written once the port is bound.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = String::new();
        loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening") {
                break;
            }
        }
        let stdout = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                seen.push_str(&line);
                seen.push('\n');
            }
            seen
        });
        Self {
            child,
            port,
            stdout: Some(stdout),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn terminate(self) -> std::process::ExitStatus {
        self.stop().0
    }

    /// SIGTERM, then waits for the exit: its status, and all it wrote on stdout and stderr.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        let mut output = self.stdout.take().unwrap().join().unwrap();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut output).unwrap();
        (status, output)
    }
}

fn http_get(port: u16, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
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
        http_get(server.port, "/admin/tiers", "binary-token"),
        (200, "[]".into())
    );
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    let wrong = hex_key(0x22);
    let env = [("ENCRYPTION_KEY", wrong.as_str()), ("ADMIN_TOKEN", "t")];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, "ENCRYPTION_KEY does not match this database");
    assert!(!stderr(&output).contains(&wrong));

    // The right key still opens it: the refusal changed nothing.
    let server = Server::start(dir.path(), &key);
    assert_eq!(http_get(server.port, "/admin/tiers", "binary-token").0, 200);
    assert!(server.terminate().success());
}

#[test]
fn a_database_in_use_by_a_running_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x11);
    let server = Server::start(dir.path(), &key);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", "t"),
        ("SERVER_PORT", "1"),
    ];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, "in use by another process");
    assert!(server.terminate().success());
}
