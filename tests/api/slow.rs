//! Hostile input: slow and greedy clients, over real sockets. Timeouts here are short
//! so the tests are quick; the assertions are on what the server did (closed, answered,
//! waited), never on how long it took. The generous `BOUND` only keeps a broken server from
//! hanging the test.

use std::time::Duration;

use keypooler::config::ConnectionLimits;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_TOKEN, TestApp};

const BOUND: Duration = Duration::from_secs(20);

fn limits(header_read_ms: u64, request_ms: u64, max_connections: u32) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_millis(header_read_ms),
        request_timeout: Duration::from_millis(request_ms),
        max_connections,
        ..ConnectionLimits::default()
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: keypooler\r\n\r\n";

/// Reads one HTTP/1.1 response (head and `Content-Length` body): its status and JSON body.
async fn response(stream: &mut TcpStream) -> (u16, Value) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("every answer has a Content-Length");
            if body.len() >= length {
                assert!(head.contains("content-type: application/json"), "{head}");
                let status = head[9..12].parse().unwrap();
                return (status, serde_json::from_str(&body[..length]).unwrap());
            }
        }
        let read = tokio::time::timeout(BOUND, stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(read > 0, "closed before the answer was complete");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Reads until the server closes the connection; returns what it sent first.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(BOUND, stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection");
    // A reset is a close too.
    if let Err(err) = read {
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    received
}

async fn health_over_a_new_connection(app: &TestApp) {
    let mut stream = connect(app).await;
    stream.write_all(HEALTH).await.unwrap();
    assert_eq!(response(&mut stream).await, (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn a_half_sent_head_or_a_silent_client_is_closed_and_others_are_still_served() {
    let app = TestApp::spawn_with_limits(limits(300, 30_000, 64)).await;
    let mut half = connect(&app).await;
    half.write_all(b"GET /admin/tiers HTTP/1.1\r\nHost: keypooler\r\nAuthorization: Bea")
        .await
        .unwrap();
    let mut silent = connect(&app).await;
    // A kept-alive connection that answered once and then goes quiet is closed too.
    let mut idle = connect(&app).await;
    idle.write_all(HEALTH).await.unwrap();
    assert_eq!(response(&mut idle).await.0, 200);

    assert!(
        closed_by_server(&mut half).await.is_empty(),
        "no request was read, so nothing is answered"
    );
    assert!(closed_by_server(&mut silent).await.is_empty());
    assert!(closed_by_server(&mut idle).await.is_empty());
    health_over_a_new_connection(&app).await;
}

#[tokio::test]
async fn a_request_whose_body_stalls_is_answered_408_in_json_and_changes_nothing() {
    let app = TestApp::spawn_with_limits(limits(30_000, 300, 64)).await;
    let mut slow = connect(&app).await;
    let body = br#"{"name": "slow", "features": {"chat": 1}}"#;
    let head = format!(
        "POST /admin/tiers HTTP/1.1\r\nHost: keypooler\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    assert_eq!(
        response(&mut slow).await,
        (408, json!({"error": "request timed out"}))
    );
    // The rest of the body arrives too late: the tier was never created.
    let _ = slow.write_all(&body[10..]).await;
    let tiers: Value = app.get("/admin/tiers").await.json().await.unwrap();
    assert_eq!(tiers, json!([]));
    health_over_a_new_connection(&app).await;
}

#[tokio::test]
async fn a_connection_over_the_limit_waits_until_another_closes() {
    let app = TestApp::spawn_with_limits(limits(30_000, 30_000, 2)).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for stream in [&mut first, &mut second] {
        stream.write_all(HEALTH).await.unwrap();
        assert_eq!(response(stream).await.0, 200);
    }
    // The third connects (the kernel queues it) but is not accepted: its request is not read.
    let mut third = connect(&app).await;
    third.write_all(HEALTH).await.unwrap();
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(waited.is_err(), "over the limit, no answer: {waited:?}");
    // The connections within the limit proceed meanwhile.
    first.write_all(HEALTH).await.unwrap();
    assert_eq!(response(&mut first).await.0, 200);
    // One closes: the waiting one is accepted and answered.
    drop(first);
    assert_eq!(response(&mut third).await, (200, json!({"status": "ok"})));
    second.write_all(HEALTH).await.unwrap();
    assert_eq!(response(&mut second).await.0, 200);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_closes_idle_connections() {
    let mut app = TestApp::spawn_with_limits(limits(30_000, 30_000, 8)).await;
    app.create_tier("pro", json!({"chat": 1})).await;
    let mut idle = connect(&app).await;
    idle.write_all(HEALTH).await.unwrap();
    assert_eq!(response(&mut idle).await.0, 200);
    // A request whose body is still to come when shutdown starts. `100 Continue` proves the
    // server has read its head and the handler waits for the body.
    let mut in_flight = connect(&app).await;
    let body = br#"{"name": "late", "features": {"chat": 2}}"#;
    let head = format!(
        "POST /admin/tiers HTTP/1.1\r\nHost: keypooler\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(BOUND, in_flight.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    assert!(closed_by_server(&mut idle).await.is_empty());
    in_flight.write_all(body).await.unwrap();
    let (status, tier) = response(&mut in_flight).await;
    assert_eq!(status, 201, "{tier}");
    let app = tokio::time::timeout(BOUND, stopping)
        .await
        .expect("shutdown completes once in-flight requests are done")
        .unwrap();
    // The write answered 201 during shutdown is on disk.
    let app = app.restart().await;
    let tiers: Value = app.get("/admin/tiers").await.json().await.unwrap();
    assert_eq!(tiers.as_array().unwrap().len(), 2, "{tiers}");
}

/// A connection that never reads what it is sent: its receive buffer is small, so the server's
/// answers back up quickly.
async fn never_reading(app: &TestApp) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(app.address.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn clients_that_pipeline_and_never_read_are_closed_after_the_write_timeout() {
    const SLOTS: u32 = 4;
    const PIPELINED: usize = 500;
    let app = TestApp::spawn_with_limits(ConnectionLimits {
        write_timeout: Duration::from_secs(1),
        max_connections: SLOTS,
        ..ConnectionLimits::default()
    })
    .await;
    app.create_tier("pro", json!({"chat": 16_000_000})).await;
    // 64 KiB answers: a few fill the socket buffers.
    let id = app.add_key("big", &"v".repeat(64 * 1024), "pro").await;
    // The setup's kept-alive connection closes, so that only the clients below hold slots.
    app.request(Method::GET, "/health")
        .header(reqwest::header::CONNECTION, "close")
        .send()
        .await
        .unwrap();
    let request = format!(
        "GET /key?feature=chat HTTP/1.1\r\nHost: keypooler\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    let mut stalled = Vec::new();
    for _ in 0..SLOTS {
        let mut stream = never_reading(&app).await;
        stream
            .write_all(request.repeat(PIPELINED).as_bytes())
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Every slot is held by a client that reads nothing. Fresh clients are answered only once
    // the server has closed those: as many as there are slots, each kept open, prove that it
    // closed every one.
    let mut fresh = Vec::new();
    for _ in 0..SLOTS {
        let mut stream = connect(&app).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = response(&mut stream).await;
        assert_eq!(status, 200);
        assert_eq!(body["key_id"], id.as_str());
        fresh.push(stream);
    }
    for stream in &mut stalled {
        closed_by_server(stream).await;
    }
    drop(fresh);
    // The server stopped reading pipelined requests once their answers backed up: it served
    // a bounded number of them, not all.
    let keys: Value = app.get("/admin/keys").await.json().await.unwrap();
    let used = keys[0]["usage"]["chat"]["used"].as_u64().unwrap();
    assert!(
        used < (SLOTS as u64) * (PIPELINED as u64) / 2,
        "{used} of {} pipelined requests were answered",
        SLOTS as usize * PIPELINED
    );
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_accept_and_those_within_are_served() {
    let app = TestApp::spawn_with_limits(ConnectionLimits {
        max_connections_per_ip: Some(2),
        ..ConnectionLimits::default()
    })
    .await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for stream in [&mut first, &mut second] {
        stream.write_all(HEALTH).await.unwrap();
        assert_eq!(response(stream).await.0, 200);
    }
    // A third from 127.0.0.1 is accepted and closed at once, unanswered.
    let mut third = connect(&app).await;
    let _ = third.write_all(HEALTH).await;
    assert!(closed_by_server(&mut third).await.is_empty());
    // The two within the cap are still served.
    for stream in [&mut first, &mut second] {
        stream.write_all(HEALTH).await.unwrap();
        assert_eq!(response(stream).await.0, 200);
    }
    // One closes: its place is given back (as soon as the server has seen it close).
    drop(first);
    tokio::time::timeout(BOUND, async {
        while !answered_over_a_new_connection(&app).await {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a place is given back when a connection closes");
}

/// Whether a new connection's request gets an answer (`false`: closed unanswered).
async fn answered_over_a_new_connection(app: &TestApp) -> bool {
    let mut stream = connect(app).await;
    let _ = stream.write_all(HEALTH).await;
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte).await, Ok(1..))
}
