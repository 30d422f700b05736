//! Slow and idle HTTP clients cannot hold connections forever: a request
//! head has a deadline from its first byte, an idle kept-alive connection
//! is closed, and open connections are capped.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `wait` passes);
/// returns what was read and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

#[tokio::test]
async fn a_request_head_trickled_byte_by_byte_is_cut_off_at_its_deadline() {
    // Arrange
    let app = spawn_app_with(|c| c.http.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();

    // Act: a header a byte every 200 ms, never finished.
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = false;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let (_, closed) = read_until_closed(&mut stream, Duration::from_millis(200)).await;
        if closed {
            cut_off = true;
            break;
        }
    }

    // Assert: cut off after about a second, though bytes kept coming.
    assert!(cut_off, "the trickling client was never cut off");
    let after = started.elapsed();
    assert!(
        after < Duration::from_secs(4),
        "cut off only after {after:?}"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    // Arrange
    let app = spawn_app_with(|c| c.http.keep_alive_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();

    // Act: one request, then nothing.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed_early) = read_until_closed(&mut stream, Duration::from_millis(500)).await;
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;

    // Assert
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!closed_early, "closed before it was idle for long");
    assert!(closed, "the idle connection is still open");
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_and_a_websocket_keeps_its_place() {
    // Arrange: a cap of 3, one of them a WebSocket, two idle connections.
    // (The test client's own kept-alive connection is closed first.)
    let app = spawn_app_with(|c| {
        c.http.max_connections = 3;
        c.http.keep_alive_secs = 2;
    })
    .await;
    let alice = app.register("alice").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ws, _) = connected(&app, &alice, None).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }

    // Act
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    let (refused, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;

    // Assert: refused with a JSON 503 and closed; the slot comes back once the WebSocket goes.
    assert!(closed, "the connection past the cap stayed open");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let body: Value = serde_json::from_str(refused.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "too_many_connections");
    drop(ws);
    let mut answered = false;
    for _ in 0..50 {
        let mut again = TcpStream::connect(app.addr).await.unwrap();
        let _ = again
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (answer, _) = read_until_closed(&mut again, Duration::from_millis(300)).await;
        if answer.starts_with("HTTP/1.1 200") {
            answered = true;
            break;
        }
    }
    assert!(answered, "the WebSocket's slot was not given back");
}

#[tokio::test]
async fn a_websocket_is_not_held_to_the_request_head_deadline() {
    // Arrange
    let app = spawn_app_with(|c| c.http.header_read_timeout_secs = 1).await;
    let alice = app.register("alice").await;
    let (mut ws, _) = connected(&app, &alice, None).await;

    // Act: frames well past the head deadline.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        ws.send_json(json!({"type": "ping"})).await;
        // Assert
        assert_eq!(ws.next_of_type("pong").await["type"], "pong");
    }
}
