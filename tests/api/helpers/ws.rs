//! A real WebSocket client for tests, with typed waits.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl WsClient {
    pub async fn connect(addr: std::net::SocketAddr, token: &str, since: Option<i64>) -> WsClient {
        let mut url = format!("ws://{addr}/ws?token={token}");
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        WsClient { stream }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.stream
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("ws send");
    }

    /// The next JSON frame, or `None` on close/timeout.
    pub async fn next_json_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => {
                    return Some(serde_json::from_str(&t).expect("server sends JSON"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next JSON frame; panics if none arrives within [`WAIT`].
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(WAIT)
            .await
            .expect("a frame within the wait")
    }

    /// Skips frames until one of type `kind` arrives.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Asserts no frame of type `kind` arrives within `wait` (other frames are skipped).
    pub async fn expect_no(&mut self, kind: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(frame) = self
            .next_json_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            assert_ne!(frame["type"], kind, "unexpected frame: {frame}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("connection not closed within the wait"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::Dropped,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Closed::Code(
                        frame
                            .map(|f| u16::from(f.code))
                            .unwrap_or(u16::from(CloseCode::Status)),
                    );
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
