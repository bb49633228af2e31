//! Where the binary listens: `BIND_ADDRESS` chooses the interface of the API and of the
//! `/metrics` listener; unset, every interface.

use std::net::{SocketAddr, TcpStream};

use crate::binary::assert_one_clear_line;
use crate::helpers::hex_key;
use crate::process::{Launch, Server, TOKEN, free_port, http_at, run};

/// Whether this host has an IPv6 loopback (containers may not).
fn has_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// `GET path` at `address` on its own connection: the status, or the error of connecting.
fn status_at(address: SocketAddr, path: &str) -> std::io::Result<u16> {
    http_at(address, "GET", path, TOKEN, &[], None).map(|(status, _, _)| status)
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

fn refused(address: SocketAddr) -> bool {
    TcpStream::connect(address)
        .is_err_and(|err| err.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Starts the binary with `BIND_ADDRESS` = `bind` (unset if `None`) and `/metrics` on its own
/// port; returns the server and both ports.
fn start(dir: &std::path::Path, bind: Option<&str>) -> (Server, u16, u16) {
    let key = hex_key(0x31);
    let (port, metrics_port) = (free_port(), free_port());
    let metrics_port_text = metrics_port.to_string();
    let mut env = vec![
        ("ENCRYPTION_KEY", key.as_str()),
        ("METRICS_PORT", metrics_port_text.as_str()),
    ];
    if let Some(bind) = bind {
        env.push(("BIND_ADDRESS", bind));
    }
    match Server::launch(dir, &env, port) {
        Launch::Listening(server) => (server, port, metrics_port),
        Launch::Exited { stderr, .. } => panic!("the server exited before listening: {stderr}"),
    }
}

#[test]
fn bind_address_127_0_0_1_serves_the_api_and_metrics_there_only() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port, metrics_port) = start(dir.path(), Some("127.0.0.1"));
    let listening = server
        .log()
        .into_iter()
        .find(|line| line.contains("listening"))
        .unwrap();
    assert!(
        listening.contains(&format!("127.0.0.1:{port}"))
            && listening.contains(&format!("127.0.0.1:{metrics_port}")),
        "{listening}"
    );
    assert_eq!(status_at(v4(port), "/admin/tiers").unwrap(), 200);
    assert_eq!(status_at(v4(metrics_port), "/metrics").unwrap(), 200);
    if has_ipv6() {
        assert!(refused(v6(port)), "the API is not on ::1");
        assert!(refused(v6(metrics_port)), "/metrics is not on ::1");
    }
    assert!(server.terminate().success());
}

#[test]
fn bind_address_ipv6_loopback_serves_there_only_and_unset_serves_both() {
    if !has_ipv6() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, port, metrics_port) = start(dir.path(), Some("::1"));
    assert_eq!(status_at(v6(port), "/admin/tiers").unwrap(), 200);
    assert_eq!(status_at(v6(metrics_port), "/metrics").unwrap(), 200);
    assert!(refused(v4(port)), "the API is not on 127.0.0.1");
    assert!(refused(v4(metrics_port)), "/metrics is not on 127.0.0.1");
    assert!(server.terminate().success());

    // Unset: every interface, both families.
    let (server, port, metrics_port) = start(dir.path(), None);
    for address in [v4(port), v6(port)] {
        assert_eq!(
            status_at(address, "/admin/tiers").unwrap(),
            200,
            "{address}"
        );
    }
    for address in [v4(metrics_port), v6(metrics_port)] {
        assert_eq!(status_at(address, "/metrics").unwrap(), 200, "{address}");
    }
    assert!(server.terminate().success());
}

#[test]
fn a_bad_bind_address_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x31);
    for bad in ["localhost", "127.0.0.1:8080", "[::1]", "256.0.0.1"] {
        let env = [
            ("ENCRYPTION_KEY", key.as_str()),
            ("ADMIN_TOKEN", TOKEN),
            ("BIND_ADDRESS", bad),
        ];
        let output = run(dir.path(), &env, &[]);
        assert_one_clear_line(&output, 2, "BIND_ADDRESS must be an IP address");
    }
    // A well-formed address this host does not have (TEST-NET-1): the bind fails, exit 1.
    let port = free_port().to_string();
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", TOKEN),
        ("BIND_ADDRESS", "192.0.2.1"),
        ("SERVER_PORT", port.as_str()),
    ];
    let output = run(dir.path(), &env, &[]);
    assert_one_clear_line(&output, 1, &format!("cannot listen on 192.0.2.1:{port}"));
}
