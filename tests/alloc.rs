//! Heap allocations per `GET /key`, counted over real keep-alive HTTP/1.1 connections with
//! dhat as the global allocator (its own test binary, so no other test pays for it).
//!
//! Compares keypooler's server (connection limit, header read timeout, request timeout) with
//! the plain `axum::serve` it replaced, on the same router and pool. The request timeout adds
//! no allocation (both layers wrap the router whole, their futures live inline); hyper's header
//! read timer costs one boxed timer per request head. The test fails if anything more appears.
//!
//! `cargo test --test alloc -- --nocapture` prints the figures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keypooler::app::{App, Options};
use keypooler::broker::{Clock, Limit, NewKey, TierSpec};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::Store;
use secrecy::SecretString;
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const TOKEN: &str = "alloc-token";
const REQUEST: &[u8] =
    b"GET /key?feature=chat HTTP/1.1\r\nHost: keypooler\r\nAuthorization: Bearer alloc-token\r\n\r\n";
const WARM_UP: usize = 200;
/// Requests per measured round.
const MEASURED: usize = 250;
/// Rounds measured; the fewest allocations of any round is the figure. The server's
/// once-a-second chores (saving the running time is a redb commit) allocate on other threads
/// and land in whichever round is running when they fire; they are not the request path's, and
/// a round with none of them shows the request path alone.
const ROUNDS: usize = 8;

/// Sends `REQUEST` and reads one `200` answer, without allocating.
fn get_key(stream: &mut TcpStream, buffer: &mut [u8; 4096]) {
    stream.write_all(REQUEST).unwrap();
    let mut filled = 0;
    loop {
        let read = stream.read(&mut buffer[filled..]).unwrap();
        assert!(read > 0, "the server closed the connection");
        filled += read;
        let Some(head_end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        assert!(buffer.starts_with(b"HTTP/1.1 200"), "not a 200");
        let head = &buffer[..head_end];
        let at = head
            .windows(16)
            .position(|w| w.eq_ignore_ascii_case(b"content-length: "))
            .expect("a Content-Length")
            + 16;
        let length = head[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0usize, |n, b| n * 10 + usize::from(b - b'0'));
        if filled >= head_end + 4 + length {
            assert_eq!(filled, head_end + 4 + length, "one answer per request");
            return;
        }
    }
}

/// Allocations per `GET /key` (in the round with the fewest) for the server `serve` starts on a
/// pool with one key.
fn per_request(
    runtime: &tokio::runtime::Runtime,
    serve: impl FnOnce(App, tokio::net::TcpListener) -> tokio::task::JoinHandle<()>,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let key = EncryptionKey::generate();
    let sealer = Sealer::new(&key);
    let store = Store::open(&dir.path().join("pool.redb"), &sealer).unwrap();
    let (clock, _hand) = Clock::manual();
    // The audit trail's writes happen on the writer thread, once a second, and only when the
    // server loop runs its flusher: off, so both servers compare the request path alone.
    let options = Options {
        audit: false,
        ..Options::default()
    };
    let app = App::start_with(store, sealer, clock, SecretString::from(TOKEN), options).unwrap();
    let writer = app.state.writer().clone();
    let limit = Limit {
        rate_limit: keypooler::broker::MAX_RATE_LIMIT,
        window_seconds: 60,
    };
    runtime.block_on(async {
        let tier = TierSpec::new("pro", None, [("chat".to_owned(), limit)].into()).unwrap();
        writer.create_tier(tier, None).await.unwrap();
        let key = NewKey::new("k", "pro", Zeroizing::new("sk-alloc".into())).unwrap();
        writer.add_key(key, None).await.unwrap();
    });
    drop(writer);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let server = {
        let _entered = runtime.enter();
        serve(app, listener)
    };
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    for _ in 0..WARM_UP {
        get_key(&mut stream, &mut buffer);
    }
    let fewest = (0..ROUNDS)
        .map(|_| {
            let before = dhat::HeapStats::get().total_blocks;
            for _ in 0..MEASURED {
                get_key(&mut stream, &mut buffer);
            }
            dhat::HeapStats::get().total_blocks - before
        })
        .min()
        .expect("at least one round");
    server.abort();
    fewest as f64 / MEASURED as f64
}

#[test]
fn the_timeouts_and_the_connection_limit_add_at_most_the_header_timer() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let plain = per_request(&runtime, |app, listener| {
        let router = keypooler::http::router(app.state.clone());
        tokio::spawn(async move {
            let _app = app;
            axum::serve(listener, tower::make::Shared::new(router))
                .await
                .unwrap();
        })
    });
    let ours = per_request(&runtime, |app, listener| {
        tokio::spawn(async move {
            app.serve(listener, std::future::pending()).await.unwrap();
        })
    });
    println!(
        "allocations per GET /key over keep-alive HTTP/1.1: axum::serve {plain:.2}, keypooler::server {ours:.2}"
    );
    assert!(
        ours <= plain + 1.05,
        "more than the header timer was added: {plain:.2} -> {ours:.2}"
    );
}
