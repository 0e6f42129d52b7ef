//! The HTTP server itself, driven over raw TCP with hand-written HTTP/1.1 so that connection
//! reuse and closes are explicit: header, body and keep-alive idle timeouts, a 401 answered
//! before the body is read keeping the connection, and h2c still being served.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both_backends;
use crate::helpers::*;

/// The default test config with the server timeouts set (seconds).
fn config(header: f64, body: f64, keepalive: f64) -> String {
    format!(
        "{DEFAULT_CONFIG}  http_header_read_timeout: {header}\n  http_body_read_timeout: {body}\n  \
         http_keepalive_timeout: {keepalive}\n"
    )
}

/// Reads one HTTP/1.1 response (head + Content-Length body). `None` if the server closed or reset
/// the connection first, or nothing complete arrived within `within`.
async fn read_response(s: &mut TcpStream, within: Duration) -> Option<(u16, String, Value)> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = &buf[end + 4..end + 4 + len];
                return Some((
                    status,
                    head,
                    serde_json::from_slice(body).unwrap_or(Value::Null),
                ));
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Waits until the server closes (EOF or reset) and returns how long that took, or `None` if the
/// connection was still open after `within`. Any bytes the server sends meanwhile are skipped.
async fn closed_after(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

const LIVELINESS: &[u8] = b"GET /health/liveliness HTTP/1.1\r\nHost: purser\r\n\r\n";

/// A client that sends part of a request head and stalls is disconnected after the header read
/// timeout, and so is one that connects and sends nothing; the keep-alive timeout (longer) is
/// not what closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_disconnects_stalled_clients() {
    let app = TestApp::spawn_with(Backend::Sqlite, &config(1.0, 30.0, 30.0)).await;
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(b"POST /key/generate HTTP/1.1\r\nHost: purser\r\nAuthori")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let t = closed_after(&mut partial, Duration::from_secs(6))
        .await
        .expect("a stalled request head must be disconnected");
    assert!(t >= Duration::from_millis(800), "closed too early: {t:?}");
    closed_after(&mut silent, Duration::from_secs(6))
        .await
        .expect("a connection that never sends a request must be disconnected");
    // The server still serves others.
    let (s, _) = app.get_anon("/health/liveliness").await;
    assert_eq!(s, 200);
    app.shutdown().await;
}

/// A client that sends the head with a Content-Length and stalls mid-body gets a 408 in the
/// OpenAI-style error shape, then the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_read_timeout_answers_408() {
    let app = TestApp::spawn_with(Backend::Sqlite, &config(30.0, 1.0, 30.0)).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /key/generate HTTP/1.1\r\nHost: purser\r\nAuthorization: Bearer {MASTER}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user_id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let (status, _, body) = read_response(&mut s, Duration::from_secs(6))
        .await
        .expect("a stalled body must be answered");
    assert_eq!(status, 408, "{body}");
    assert!(start.elapsed() >= Duration::from_millis(800));
    let msg = assert_proxy_error(&body, 408, "timeout_error");
    assert!(msg.contains("request body"), "{msg}");
    closed_after(&mut s, Duration::from_secs(3))
        .await
        .expect("closed after the 408 (the rest of the body was never read)");
    app.shutdown().await;
}

/// An idle kept-alive connection is closed after the keep-alive timeout, which is measured
/// separately from (and here longer than) the header read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_closed() {
    let app = TestApp::spawn_with(Backend::Sqlite, &config(1.0, 30.0, 3.0)).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(LIVELINESS).await.unwrap();
    let (status, _, _) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("first response");
    assert_eq!(status, 200);
    // Idle for longer than the header timeout, shorter than the keep-alive timeout: still open.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    s.write_all(LIVELINESS).await.unwrap();
    let (status, _, _) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("an idle connection within the keep-alive timeout is reused");
    assert_eq!(status, 200);
    let t = closed_after(&mut s, Duration::from_secs(10))
        .await
        .expect("an idle kept-alive connection must be closed");
    assert!(t >= Duration::from_millis(2500), "closed too early: {t:?}");
    app.shutdown().await;
}

/// A 401 decided from the headers, before the body was read, answers and keeps the
/// connection: the next request on the same socket is served.
async fn unauthorized_body_keeps_connection(b: Backend) {
    let app = TestApp::spawn(b).await;
    let body = serde_json::json!({
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": "x".repeat(20_000)}],
    })
    .to_string();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: purser\r\nAuthorization: Bearer sk-not-a-key\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The body follows a little later, as it does from a client on a real network: the gateway
    // has decided on 401 by then.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let (status, head, err) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("401 answered");
    assert_eq!(status, 401, "{err}");
    assert_proxy_error(&err, 401, "");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    s.write_all(LIVELINESS).await.unwrap();
    let (status, _, _) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("the connection survives the 401");
    assert_eq!(status, 200);
    app.shutdown().await;
}

/// The drain is bounded: a refused request declaring a large body is answered at once, without
/// reading it, and the connection closes.
async fn unauthorized_large_body_is_not_read(b: Backend) {
    let app = TestApp::spawn(b).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: purser\r\nAuthorization: Bearer sk-not-a-key\r\n\
          Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{",
    )
    .await
    .unwrap();
    let start = Instant::now();
    let (status, head, _) = read_response(&mut s, Duration::from_secs(3))
        .await
        .expect("401 answered without waiting for the body");
    assert_eq!(status, 401);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    closed_after(&mut s, Duration::from_secs(3))
        .await
        .expect("closed after the 401");
    app.shutdown().await;
}

both_backends!(
    unauthorized_body_keeps_connection,
    unauthorized_large_body_is_not_read
);

/// Cleartext HTTP/2 (prior knowledge) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = client
            .get(app.url("/health/liveliness"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
    }
    app.shutdown().await;
}
