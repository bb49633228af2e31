//! The built binary as a process: started on a free port, its log captured, stopped with
//! SIGTERM or killed with SIGKILL; and a minimal HTTP/1.1 client that reports a dropped
//! connection as an error (a request the server never answered).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_keypooler");
const SETTINGS: &[&str] = &[
    "ENCRYPTION_KEY",
    "NEW_ENCRYPTION_KEY",
    "SOURCE_ENCRYPTION_KEY",
    "ADMIN_TOKEN",
    "SERVER_PORT",
    "BIND_ADDRESS",
    "DB_PATH",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "AUDIT",
    "METRICS",
    "METRICS_PORT",
    "METRICS_TOKEN",
    "METRICS_PER_KEY",
    "METRICS_PER_KEY_MAX",
    "HEADER_READ_TIMEOUT",
    "REQUEST_TIMEOUT",
    "MAX_CONNECTIONS",
    "WRITE_TIMEOUT",
    "MAX_CONNECTIONS_PER_IP",
    "ALLOW_CORE_DUMPS",
    "MLOCK",
    "KEYPOOLER_URL",
    "DATABASE_URL",
];
pub const TOKEN: &str = "binary-admin-token";

/// The binary with a clean environment, run in `dir`, with `DB_PATH` = `dir/pool.redb` unless
/// `env` says otherwise.
pub fn keypooler(dir: &Path, env: &[(&str, &str)]) -> Command {
    wrapped(&[], dir, env)
}

/// The binary run by `wrapper` (a command that ends by running it, e.g. `prlimit --core=0`),
/// otherwise as [`keypooler`].
pub fn wrapped(wrapper: &[&str], dir: &Path, env: &[(&str, &str)]) -> Command {
    let binary = shared_binary();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
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

/// The binary at a path every user may run, for the tests that run it as `nobody`: the built
/// one when every folder above it lets others through (as here), else a copy in a temp folder
/// that does (a checkout under a private home folder, say).
pub fn shared_binary() -> &'static Path {
    use std::os::unix::fs::PermissionsExt;
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let built = Path::new(BIN);
        let others_may_enter = |dir: &Path| {
            std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0)
        };
        if built
            .ancestors()
            .skip(1)
            .filter(|dir| !dir.as_os_str().is_empty())
            .all(others_may_enter)
        {
            return built.to_path_buf();
        }
        let dir = std::env::temp_dir().join(format!("keypooler-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("keypooler");
        std::fs::copy(built, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server, started from the binary.
pub struct Server {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    /// Collects the log until the process closes its stdout.
    sink: Option<std::thread::JoinHandle<()>>,
}

/// How a start-up ended: listening, or exited (with what it printed).
pub enum Launch {
    Listening(Server),
    Exited {
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

impl Server {
    /// Starts a server with `key` and the test token; panics if it does not listen.
    pub fn start(dir: &Path, key: &str) -> Self {
        match Self::launch(dir, &[("ENCRYPTION_KEY", key)], free_port()) {
            Launch::Listening(server) => server,
            Launch::Exited { stderr, .. } => panic!("the server exited before listening: {stderr}"),
        }
    }

    /// Starts the binary on `port` with `env` (plus the test token) and waits for its
    /// "listening" line or its exit.
    pub fn launch(dir: &Path, env: &[(&str, &str)], port: u16) -> Launch {
        let port_text = port.to_string();
        let mut all = vec![("ADMIN_TOKEN", TOKEN), ("SERVER_PORT", port_text.as_str())];
        all.extend_from_slice(env);
        let child = keypooler(dir, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self::wait_listening(child, port)
    }

    /// Reads the log until the "listening" line (written once the port is bound) or the end.
    pub fn wait_listening(mut child: Child, port: u16) -> Launch {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let listening = line.contains("\"listening\"") || line.contains(" listening");
            log.lock().unwrap().push(line);
            if listening {
                let lines_to = Arc::clone(&log);
                let sink = std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        lines_to.lock().unwrap().push(line);
                    }
                });
                return Launch::Listening(Server {
                    child,
                    port,
                    log,
                    sink: Some(sink),
                });
            }
        }
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        let stdout = log.lock().unwrap().join("\n");
        Launch::Exited {
            status,
            stdout,
            stderr,
        }
    }

    /// Starts `command` (set up to listen on `port`); panics if it exits before listening.
    pub fn spawn(mut command: Command, port: u16) -> Self {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        match Self::wait_listening(child, port) {
            Launch::Listening(server) => server,
            Launch::Exited { stderr, .. } => panic!("the server exited before listening: {stderr}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the exit: its status, and all it wrote on stdout and stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let status = self.signal_term_and_wait();
        if let Some(sink) = self.sink.take() {
            sink.join().unwrap();
        }
        let mut output = self.log().join("\n");
        output.push('\n');
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut output).unwrap();
        }
        (status, output)
    }

    fn signal_term_and_wait(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown, no flush, no destructor.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal_term_and_wait()
    }

    /// Creates a tier with one feature and asserts the 201.
    pub fn create_tier(&self, name: &str, feature: &str, limit: u32) {
        let body = serde_json::json!({"name": name, "features": {feature: limit}});
        let (status, answer) = self.request("POST", "/admin/tiers", Some(&body)).unwrap();
        assert_eq!(status, 201, "{answer}");
    }

    /// Adds the key `body` describes, asserts the 201 and answers its id.
    pub fn add_key(&self, body: &serde_json::Value) -> String {
        let (status, answer) = self.request("POST", "/admin/keys", Some(body)).unwrap();
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> std::io::Result<(u16, serde_json::Value)> {
        let (status, text) = http(self.port, method, path, TOKEN, body)?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }
}

impl Drop for Server {
    /// A test that fails half-way leaves no server behind (a no-op once it has exited).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to its end.
pub fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    keypooler(dir, env).args(args).output().unwrap()
}

/// Runs the binary to its end with `input` on its stdin.
pub fn run_with_input(dir: &Path, env: &[(&str, &str)], args: &[&str], input: &[u8]) -> Output {
    let mut child = keypooler(dir, env)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// One request on its own connection; an error when the connection fails or drops before a
/// whole response arrived.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, String)> {
    http_with_headers(port, method, path, token, &[], body).map(|(status, _, body)| (status, body))
}

/// [`http`] with `headers` added to the request; answers the status, the response's head and
/// its body.
pub fn http_with_headers(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, String, String)> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    http_at(address, method, path, token, headers, body)
}

/// [`http_with_headers`] to any `address` (another interface, IPv6).
pub fn http_at(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no complete response"))?;
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let header = |wanted: &str| {
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim())
        })
    };
    // A streamed body (a listing, /metrics) comes in chunks.
    if header("transfer-encoding") == Some("chunked") {
        return Ok((status, head.to_owned(), dechunk(body)?));
    }
    let length = header("content-length")
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(body.len());
    if body.len() < length {
        return Err(std::io::Error::other("the response was cut short"));
    }
    Ok((status, head.to_owned(), body.to_owned()))
}

/// A body sent with `Transfer-Encoding: chunked`, joined; an error unless it ends with the last
/// (empty) chunk, as a body cut short does not.
fn dechunk(mut raw: &str) -> std::io::Result<String> {
    let cut = || std::io::Error::other("the chunked response was cut short");
    let mut text = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n").ok_or_else(cut)?;
        let size = usize::from_str_radix(size, 16).map_err(|_| cut())?;
        if size == 0 {
            return if rest == "\r\n" {
                Ok(text)
            } else {
                Err(std::io::Error::other("trailing bytes after the last chunk"))
            };
        }
        text.push_str(rest.get(..size).ok_or_else(cut)?);
        raw = rest[size..].strip_prefix("\r\n").ok_or_else(cut)?;
    }
}

pub fn http_get(port: u16, path: &str, token: &str) -> (u16, String) {
    http(port, "GET", path, token, None).unwrap()
}

/// Whether something accepts connections on `port`.
pub fn listens(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
