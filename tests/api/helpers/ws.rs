//! A real WebSocket client for tests, with typed waits.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// The published schema of every frame the server sends: `ServerFrame` of
/// `asyncapi.yaml`, its references resolved within the document.
static SERVER_FRAME: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let mut doc: Value =
        serde_yaml::from_str(chatapp::contract::ASYNCAPI_YAML).expect("asyncapi.yaml parses");
    doc["$ref"] = "#/components/schemas/ServerFrame".into();
    jsonschema::validator_for(&doc).expect("ServerFrame is a JSON Schema")
});

/// Parses a frame the server sent and checks it against the published
/// schema, so an undocumented type or field fails the test that saw it.
pub fn server_frame(text: &str) -> Value {
    let frame: Value = serde_json::from_str(text).expect("server sends JSON");
    let errors: Vec<String> = SERVER_FRAME
        .iter_errors(&frame)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "a frame asyncapi.yaml does not describe: {frame}\n  {}",
        errors.join("\n  ")
    );
    frame
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames already read (looking for another, see [`WsClient::take_first`])
    /// and not yet returned: the next reads return these first.
    ahead: VecDeque<Value>,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// What [`WsClient::next_or_close`] read.
pub enum Next {
    Frame(Value),
    /// The close code and reason; `None` when the TCP connection ended
    /// without a close frame.
    Closed(Option<(u16, String)>),
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
        WsClient::from_stream(stream)
    }

    pub fn from_stream(stream: WebSocketStream<MaybeTlsStream<TcpStream>>) -> WsClient {
        WsClient {
            stream,
            ahead: VecDeque::new(),
        }
    }

    /// The frames read ahead (see [`WsClient::take_first`]), not yet returned.
    pub fn read_ahead(&self) -> &VecDeque<Value> {
        &self.ahead
    }

    /// The first frame of type `kind`, read ahead of any others, which the
    /// next reads return in order; panics if none arrives within [`WAIT`].
    pub async fn take_first(&mut self, kind: &str) -> Value {
        if let Some(i) = self.ahead.iter().position(|f| f["type"] == kind) {
            return self.ahead.remove(i).expect("found");
        }
        loop {
            let frame = self.read_json_within(WAIT).await;
            let frame = frame.unwrap_or_else(|| panic!("no {kind} frame within the wait"));
            if frame["type"] == kind {
                return frame;
            }
            self.ahead.push_back(frame);
        }
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
        match self.ahead.pop_front() {
            Some(frame) => Some(frame),
            None => self.read_json_within(wait).await,
        }
    }

    /// The next JSON frame off the socket.
    async fn read_json_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return Some(server_frame(&t)),
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
        match self.close_frame().await {
            Some((code, _)) => Closed::Code(code),
            None => Closed::Dropped,
        }
    }

    /// Reads until the server closes; returns the close code and reason, or
    /// `None` when the TCP connection ended without a close frame.
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            if let Next::Closed(close) = self.next_or_close().await {
                return close;
            }
        }
    }

    /// The next JSON frame, or how the connection ended; panics if neither
    /// comes within [`WAIT`].
    pub async fn next_or_close(&mut self) -> Next {
        if let Some(frame) = self.ahead.pop_front() {
            return Next::Frame(frame);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("no frame and no close within the wait"),
                Ok(None) | Ok(Some(Err(_))) => return Next::Closed(None),
                Ok(Some(Ok(Message::Text(t)))) => return Next::Frame(server_frame(&t)),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Next::Closed(Some(match frame {
                        Some(f) => (u16::from(f.code), f.reason.to_string()),
                        None => (u16::from(CloseCode::Status), String::new()),
                    }));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
