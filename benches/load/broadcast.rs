//! The `fanout` ceiling: a minimal broadcast server with no database.
//!
//! It accepts the connections chatapp accepts (`/ws?token=...`, the same
//! PASETO tokens, checked the same way but without the account lookup), sends
//! a `ready` frame of chatapp's shape, and on a client `message` frame builds
//! the `message` event frame chatapp would send (same fields, same layout and
//! size, increasing `event_id`) — serialised once and shared by every
//! subscriber (`Utf8Bytes` clones one buffer) — acks the sender, and
//! broadcasts it to every connection of its one room through a per-connection
//! bounded queue (chatapp's 1,024 frames) drained by a writer task; a full
//! queue drops the connection from the room (chatapp closes it with 4008;
//! either way the fanout correctness check fails). The writer writes whatever
//! is queued and then flushes once, as a tuned server would.
//!
//! It runs in a process of its own, as chatapp does: the bench binary started
//! again as `fanout --broadcast-serve ADDR`. That keeps the two systems on an
//! equal footing and keeps the bench process under the open-file limit (its
//! clients alone hold up to 10,000 sockets). It exits when its stdin closes.

use crate::common::Env;
use futures_util::{SinkExt, StreamExt};
use rusty_paseto::prelude::*;
use serde::Deserialize;
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The scenario option that turns the bench binary into the ceiling server.
pub const SERVE_OPTION: &str = "broadcast-serve";
const KEY_VAR: &str = "BROADCAST_TOKEN_KEY";
/// A command (with its options) to run the ceiling under, e.g. a profiler.
const WRAPPER_VAR: &str = "BROADCAST_WRAPPER";
/// chatapp's `ws.queue_frames` default.
const QUEUE_FRAMES: usize = 1024;
/// The chat id the one room reports in `ready`.
const ROOM_CHAT: i64 = 1;

/// The ceiling server process (killed on drop).
pub struct Ceiling {
    pub addr: SocketAddr,
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Ceiling {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        self._stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the ceiling server and waits until it accepts connections.
pub async fn start(env: &Env) -> Ceiling {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = env
        .log_dir
        .join(format!("broadcast-{}-{port}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).expect("broadcast log file");
    // `BROADCAST_WRAPPER="valgrind --tool=callgrind ..."` runs the ceiling
    // under a profiler, as the scripts/callgrind-*.sh run chatapp.
    let exe = std::env::current_exe().expect("bench executable");
    let wrapper = std::env::var(WRAPPER_VAR).unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(&exe);
            command
        }
        None => Command::new(&exe),
    };
    let mut child = command
        .args(["fanout", &format!("--{SERVE_OPTION}"), &addr.to_string()])
        .args(["--out", "/dev/null"])
        .env(KEY_VAR, &env.token_key_hex)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("start the broadcast ceiling");
    let stdin = child.stdin.take();
    let ceiling = Ceiling {
        addr,
        child,
        _stdin: stdin,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the broadcast ceiling did not start; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ceiling
}

/// The ceiling server's main loop (in its own process); never returns.
pub async fn serve(addr: &str) -> ! {
    // The parent closes our stdin when it is done (or dies).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let key_hex = std::env::var(KEY_VAR).expect("BROADCAST_TOKEN_KEY");
    let key = chatapp::config::parse_token_key(&key_hex).expect("token key");
    let key = Arc::new(PasetoSymmetricKey::<V4, Local>::from(Key::from(key)));
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind broadcast server");
    eprintln!("broadcast ceiling listening on {addr}");
    let room = Arc::new(Room::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, room.clone(), key.clone()));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[derive(Default)]
struct Room {
    inner: Mutex<RoomInner>,
}

#[derive(Default)]
struct RoomInner {
    next_conn: u64,
    last_event_id: i64,
    last_message_id: i64,
    conns: Vec<(u64, mpsc::Sender<Message>)>,
}

impl Room {
    fn lock(&self) -> std::sync::MutexGuard<'_, RoomInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct User {
    id: i64,
    username: String,
}

fn authenticate(key: &PasetoSymmetricKey<V4, Local>, token: &str) -> Option<User> {
    let claims = PasetoParser::<V4, Local>::default()
        .parse(token, key)
        .ok()?;
    Some(User {
        id: claims["user_id"].as_i64()?,
        username: claims["username"].as_str()?.to_string(),
    })
}

fn token_of(request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string)
}

async fn connection(stream: TcpStream, room: Arc<Room>, key: Arc<PasetoSymmetricKey<V4, Local>>) {
    let _ = stream.set_nodelay(true);
    let mut user = None;
    // tungstenite's handshake callback type fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        user = token_of(request).and_then(|t| authenticate(&key, &t));
        if user.is_some() {
            Ok(response)
        } else {
            let mut refused = ErrorResponse::new(Some("unauthorized".into()));
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refused)
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(65536))
        .max_frame_size(Some(65536));
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let Some(user) = user else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE_FRAMES);
    let id = {
        let mut inner = room.lock();
        inner.next_conn += 1;
        let id = inner.next_conn;
        let ready = serde_json::json!({
            "type": "ready",
            "payload": {
                "user_id": user.id,
                "last_event_id": inner.last_event_id,
                "chat_ids": [ROOM_CHAT],
                "recovered": false,
            }
        })
        .to_string();
        let _ = tx.try_send(Message::text(ready));
        inner.conns.push((id, tx.clone()));
        id
    };
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = rx.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        let open = match message {
            Message::Text(text) => on_text(&room, &user, &tx, text.as_str()),
            Message::Close(_) => false,
            _ => true,
        };
        if !open {
            break;
        }
    }
    room.lock().conns.retain(|(c, _)| *c != id);
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<SendRequest>,
}

#[derive(Deserialize)]
struct SendRequest {
    chat_id: i64,
    content: String,
    client_id: Option<String>,
}

/// Handles one client text frame; false when this connection must close.
fn on_text(room: &Room, user: &User, tx: &mpsc::Sender<Message>, text: &str) -> bool {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(_) => return reply(tx, error_frame("invalid_json")),
    };
    match (frame.kind.as_str(), frame.payload) {
        ("ping", _) => reply(tx, r#"{"type":"pong","payload":{}}"#.to_string()),
        ("message", Some(req)) => {
            let ack = broadcast(room, user, req);
            reply(tx, ack)
        }
        _ => reply(tx, error_frame("invalid_payload")),
    }
}

fn reply(tx: &mpsc::Sender<Message>, text: String) -> bool {
    tx.try_send(Message::text(text)).is_ok()
}

fn error_frame(code: &str) -> String {
    serde_json::json!({"type": "error", "payload": {"code": code, "error": code, "ref": null}})
        .to_string()
}

/// Builds the event frame once, queues it for every connection in the room,
/// and returns the sender's ack.
fn broadcast(room: &Room, user: &User, req: SendRequest) -> String {
    let now = OffsetDateTime::now_utc();
    // PostgreSQL keeps microseconds.
    let now = now
        .replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now);
    let ts = now.format(&Rfc3339).unwrap_or_default();
    let content = serde_json::to_string(req.content.trim()).unwrap_or_default();
    let username = serde_json::to_string(&user.username).unwrap_or_default();
    let client_id = serde_json::to_string(&req.client_id).unwrap_or_default();
    let mut inner = room.lock();
    inner.last_event_id += 1;
    inner.last_message_id += 1;
    let (event_id, message_id) = (inner.last_event_id, inner.last_message_id);
    // The layout of chatapp's frame (`message_json::message_frame`): `type`
    // first, then the payload compact with its keys in byte order.
    let frame = format!(
        "{{\"type\":\"message\",\"payload\":{{\"chat_id\":{chat},\"client_id\":{client_id},\
         \"content\":{content},\"created_at\":\"{ts}\",\"display_name\":null,\
         \"event_id\":{event_id},\"is_edited\":false,\"mentions\":[],\
         \"message_id\":{message_id},\"reply_to\":null,\"sender_id\":{sender},\
         \"timestamp\":\"{ts}\",\"updated_at\":\"{ts}\",\"username\":{username}}}}}",
        chat = req.chat_id,
        sender = user.id,
    );
    let frame = Utf8Bytes::from(frame);
    inner
        .conns
        .retain(|(_, conn)| conn.try_send(Message::Text(frame.clone())).is_ok());
    drop(inner);
    serde_json::json!({
        "type": "ack",
        "payload": {
            "message_id": message_id,
            "event_id": event_id,
            "chat_id": req.chat_id,
            "client_id": req.client_id,
            "duplicate": false,
        }
    })
    .to_string()
}
