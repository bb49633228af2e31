//! A throwaway PostgreSQL server for the tests that need one: one per test binary, started on
//! first use (initdb and pg_ctl into a temp folder, on a free port, as a non-root user: initdb
//! refuses root), a fresh database per test. A watcher process stops the server and removes its
//! folder once this test process has gone, however it ends.
//!
//! The server asks for a password (SCRAM), so that every URL the tests hand keypooler carries
//! one, and every error can be checked for it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::free_port;

/// The superuser's name and password on the test server.
pub const USER: &str = "kp";
pub const PASSWORD: &str = "pg-secret-hunter2";

pub struct Server {
    port: u16,
}

/// The PostgreSQL programs: on the PATH, or in Debian's versioned folder.
fn bin(program: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|dir| dir.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{program} not found: install postgresql (apt-get install postgresql)")
        })
}

/// `program` run as the `postgres` user when we are root (initdb and postgres refuse root).
fn as_server_user(program: &str) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin(program));
        command
    } else {
        Command::new(bin(program))
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.stdin(Stdio::null()).output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Server {
    /// The server of this test binary, started on first use.
    pub fn get() -> &'static Server {
        static SERVER: OnceLock<Server> = OnceLock::new();
        SERVER.get_or_init(Server::start)
    }

    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("keypooler-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if rustix::process::geteuid().is_root() {
            let id = |flag: &str| -> u32 {
                let output = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "no postgres user: install postgresql"
                );
                String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .parse()
                    .unwrap()
            };
            std::os::unix::fs::chown(&dir, Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let password_file = dir.join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        let data = dir.join("data");
        let mut initdb = as_server_user("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", password_file.display()));
        run(initdb, "initdb");
        let port = free_port();
        let mut start = as_server_user("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.display()
            ))
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "start"]);
        run(start, "pg_ctl start");
        watch(&dir, &data);
        Server { port }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// A URL on which nothing listens.
    pub fn refused_url() -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/go?sslmode=disable",
            free_port()
        )
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = self.client("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(&name)
    }

    /// A connection to `database` (call it off the async runtime: the client runs its own).
    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls).unwrap()
    }
}

/// A client for the database at `url`.
pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// Stops the server and removes `dir` once this process has gone.
fn watch(dir: &Path, data: &Path) {
    let stop = if rustix::process::geteuid().is_root() {
        "runuser -u postgres -- \"$0\" -D \"$1\" -m immediate stop"
    } else {
        "\"$0\" -D \"$1\" -m immediate stop"
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf \"$2\"",
        pid = std::process::id()
    );
    // `setsid --fork` leaves the watcher in a session of its own and returns at once.
    let started = Command::new("setsid")
        .args(["--fork", "sh", "-c", &script])
        .arg(bin("pg_ctl"))
        .arg(data)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "setsid failed");
}

/// Runs `f` on a thread of its own: the synchronous client may not run on the async runtime.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap())
}
