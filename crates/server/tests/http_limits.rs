//! The HTTP layer's own limits, over raw sockets: refusals are JSON (414,
//! 431, 400, 408, also on a later request of a keep-alive connection), slow
//! and idle connections are closed, and at the connection bound the oldest
//! connection without a request goes while a newcomer is served.

mod common;

use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(max_connections: usize, header_read_timeout: Duration) -> common::TestServer {
    common::start_in(tempfile::tempdir().unwrap(), |opts| {
        opts.http.max_connections = max_connections;
        opts.http.header_read_timeout = header_read_timeout;
        opts.http.idle_timeout = Duration::from_secs(2);
    })
    .await
}

fn addr(t: &common::TestServer) -> String {
    t.url.trim_start_matches("http://").to_string()
}

/// Sends `request` and reads until the server closes (at most 5 s).
async fn exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and JSON body of the last response in `raw`.
fn last_response(raw: &str) -> (u16, Value) {
    let start = raw.rfind("HTTP/1.1 ").unwrap_or_else(|| panic!("no response in {raw:?}"));
    let response = &raw[start..];
    let status = response[9..12].parse().unwrap();
    let body = &response[response.find("\r\n\r\n").expect("a whole head") + 4..];
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_of_the_http_layer_is_a_json_error() {
    let mut t = start(1000, Duration::from_secs(1)).await;
    let a = addr(&t);
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let big_header = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
    let many: String = (0..150).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (name, request, status) in [
        ("request line too long", long_line.as_str(), 414),
        ("head too large", big_header.as_str(), 431),
        ("too many headers", many_headers.as_str(), 431),
        ("malformed request line", "GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("malformed header", "GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", 400),
        // A well-formed first request, then a bad one on the same connection:
        // hyper's own refusal, rewritten.
        (
            "malformed second request",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nbad\r\n\r\n",
            400,
        ),
    ] {
        let raw = exchange(&a, request.as_bytes()).await;
        let (got, body) = last_response(&raw);
        assert_eq!(got, status, "{name}: {raw}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}: {body}");
    }
    // A head that stops coming: 408 after the header read timeout.
    let mut slow = TcpStream::connect(&a).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let (status, body) = last_response(&read_to_close(&mut slow).await);
    assert_eq!(status, 408, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    // The server still answers.
    let raw = exchange(&a, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(last_response(&raw).0, 200, "{raw}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_timeouts() {
    let mut t = start(1000, Duration::from_secs(1)).await;
    let a = addr(&t);
    // Never sends a byte: closed silently after the header read timeout.
    let mut idle = TcpStream::connect(&a).await.unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut idle).await, "");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "closed after {waited:?}");
    // Keep-alive after an answer: closed after the idle timeout.
    let mut kept = TcpStream::connect(&a).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let raw = read_to_close(&mut kept).await;
    let waited = started.elapsed();
    assert_eq!(last_response(&raw).0, 200, "{raw}");
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5), "closed after {waited:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_bound_the_oldest_waiting_connections_go_and_a_newcomer_is_served() {
    const BOUND: usize = 50;
    // Long enough that no socket is closed by the timeout meanwhile.
    let mut t = start(BOUND, Duration::from_secs(60)).await;
    let a = addr(&t);
    // Four times the bound of sockets that never send anything.
    let mut idle = Vec::new();
    for _ in 0..4 * BOUND {
        idle.push(TcpStream::connect(&a).await.unwrap());
    }
    // A newcomer is served at once, repeatedly.
    for _ in 0..5 {
        let started = Instant::now();
        let raw = exchange(&a, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(last_response(&raw).0, 200, "{raw}");
        assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    }
    // The oldest were closed, the newest are still open.
    let mut closed = Vec::new();
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        let eof = matches!(
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        closed.push(eof);
    }
    let evicted = closed.iter().filter(|c| **c).count();
    assert!(evicted >= 3 * BOUND, "only {evicted} of {} closed", idle.len());
    assert!(closed[..3 * BOUND].iter().all(|c| *c), "the oldest go first: {closed:?}");
    assert!(!closed[closed.len() - 1], "the newest idle connection is still open");

    // A connection with a request in flight is never evicted: a slow
    // request (a long-poll is not in the API; a body still uploading is)
    // survives a flood of newcomers.
    let mut uploading = TcpStream::connect(&a).await.unwrap();
    uploading
        .write_all(
            b"POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"name\":",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut flood = Vec::new();
    for _ in 0..2 * BOUND {
        flood.push(TcpStream::connect(&a).await.unwrap());
    }
    uploading.write_all(b"\"x!!!\"}").await.unwrap();
    let raw = read_to_close_or_first_response(&mut uploading).await;
    let (status, body) = last_response(&raw);
    assert!((400..500).contains(&status) && body["error"].is_string(), "the uploading request got its answer: {raw}");
    t.stop().await;
}

/// Reads one response (the connection stays open).
async fn read_to_close_or_first_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
