//! Secret hygiene: the built binary turns core dumps off and makes itself not
//! dumpable, unless told otherwise; `MLOCK` locks its memory or stops with one clear line.
//! Observed from outside, through /proc.
//!
//! The server runs as `nobody` here (via `setpriv`), with a core limit raised first (via
//! `prlimit`): a process that is not dumpable has its /proc files owned by root rather than by
//! its user, which is how another process can tell. Both need root, so these tests are ignored by
//! a plain `cargo test`; CI runs them as root with `cargo test -- --include-ignored`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::binary::assert_one_clear_line;
use crate::helpers::hex_key;
use crate::process::{Server, free_port, wrapped};

const NOBODY: u32 = 65_534;

/// `prlimit` with these limits, then `setpriv` to nobody, then the binary.
fn as_nobody<'a>(limits: &'a [&'a str]) -> Vec<&'a str> {
    let mut wrapper = vec!["prlimit"];
    wrapper.extend_from_slice(limits);
    wrapper.extend([
        "--",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ]);
    wrapper
}

/// A temp folder nobody can write to.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn start(dir: &Path, wrapper: &[&str], extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let port_text = port.to_string();
    let key = hex_key(0x42);
    let mut env = vec![
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", "hardening-admin-token"),
        ("SERVER_PORT", port_text.as_str()),
    ];
    env.extend_from_slice(extra);
    Server::spawn(wrapped(wrapper, dir, &env), port)
}

/// The soft and hard values of one line of /proc/<pid>/limits.
fn limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in {limits}"));
    let mut values = line[name.len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

fn proc_owner(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_owned()
}

#[test]
#[ignore = "needs root: runs the server as nobody (setpriv) under a raised core limit (prlimit)"]
fn core_dumps_are_off_and_the_process_is_not_dumpable_unless_allowed() {
    let dir = shared_dir();
    let wrapper = as_nobody(&["--core=unlimited:unlimited"]);
    let server = start(dir.path(), &wrapper, &[]);
    let pid = server.pid();
    assert_eq!(
        limit(pid, "Max core file size"),
        ("0".into(), "0".into()),
        "soft and hard core limits are 0"
    );
    assert_eq!(
        proc_owner(pid),
        0,
        "not dumpable: /proc/<pid> belongs to root"
    );
    let (status, logs) = server.stop();
    assert!(status.success(), "{logs}");
    let hardened = logs
        .lines()
        .find(|line| line.contains("process hardened"))
        .expect("the hardening is logged");
    assert!(
        hardened.contains(r#""core_dumps":false"#) && hardened.contains(r#""dumpable":false"#),
        "{hardened}"
    );

    // The switch leaves both as they were.
    let server = start(dir.path(), &wrapper, &[("ALLOW_CORE_DUMPS", "true")]);
    let pid = server.pid();
    assert_eq!(
        limit(pid, "Max core file size"),
        ("unlimited".into(), "unlimited".into())
    );
    assert_eq!(
        proc_owner(pid),
        NOBODY,
        "dumpable: /proc/<pid> belongs to its user"
    );
    assert!(server.stop().0.success());
}

/// As root (`CAP_IPC_LOCK`), so the memlock limit does not apply.
#[test]
#[ignore = "needs root: CAP_IPC_LOCK to lock all memory past the memlock limit"]
fn mlock_locks_all_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[], &[]);
    assert_eq!(
        status_field(server.pid(), "VmLck:"),
        "0 kB",
        "off by default"
    );
    assert!(server.stop().0.success());

    let server = start(dir.path(), &[], &[("MLOCK", "true")]);
    let locked = status_field(server.pid(), "VmLck:");
    let kib: u64 = locked.trim_end_matches(" kB").parse().unwrap();
    assert!(kib > 1_024, "locked: {locked}");
    let (status, logs) = server.stop();
    assert!(status.success());
    assert!(logs.contains(r#""memory_locked":true"#), "{logs}");
}

#[test]
#[ignore = "needs root: runs the server as nobody (setpriv) under a set memlock limit (prlimit)"]
fn mlock_under_a_low_memlock_limit_stops_with_one_line_naming_the_limit() {
    let dir = shared_dir();
    let wrapper = as_nobody(&["--memlock=65536:65536"]);
    let key = hex_key(0x42);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", "hardening-admin-token"),
        ("SERVER_PORT", "1"),
    ];
    let output = wrapped(&wrapper, dir.path(), &env)
        .arg("--mlock")
        .output()
        .unwrap();
    assert_one_clear_line(&output, 1, "the memlock limit (RLIMIT_MEMLOCK) is 64 KiB");
    assert!(
        !dir.path().join("pool.redb").exists(),
        "stopped before opening the database"
    );
}
