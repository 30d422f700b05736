//! The WebSocket handshake, done here instead of by `warp::ws()` so the
//! socket's buffers can be sized and its sending half written directly.
//! warp's `Ws` fixes tungstenite's 128 KiB read buffer, which is zero-filled
//! on the first read — 128 KiB resident per idle connection — and copies
//! every outgoing frame into a fresh `String`.

use crate::error::ApiError;
use crate::server::ServerIo;
use hyper::upgrade::{OnUpgrade, Parts};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// An upgraded connection: client frames are read with tungstenite; server
/// frames are written to the socket's sending half by `conn::wire`.
pub struct Socket {
    pub read: WebSocketStream<ReadSide>,
    pub write: OwnedWriteHalf,
}

/// The receiving half as tungstenite reads it. tungstenite answers a ping
/// or a close by writing to the stream it reads; those writes are dropped
/// here: the connection's reader queues the answers to its writer, which
/// owns the sending half (two writers of one socket could interleave frames).
pub struct ReadSide {
    /// Bytes the HTTP server had read past the upgrade request.
    early: Bytes,
    io: OwnedReadHalf,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = buf.remaining().min(self.early.len());
            buf.put_slice(&self.early[..n]);
            self.early = self.early.slice(n..);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An accepted upgrade request, to be answered with [`Upgrade::reply`].
pub struct Upgrade {
    key: String,
    on_upgrade: OnUpgrade,
}

/// Matches a WebSocket upgrade request (RFC 6455 4.2.1); anything else is
/// rejected as 400 `upgrade_required`.
pub fn websocket() -> impl Filter<Extract = (Upgrade,), Error = Rejection> + Clone {
    warp::header::optional::<String>("connection")
        .and(warp::header::optional::<String>("upgrade"))
        .and(warp::header::optional::<String>("sec-websocket-version"))
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |connection: Option<String>,
             upgrade: Option<String>,
             version: Option<String>,
             key: Option<String>,
             on_upgrade: Option<OnUpgrade>| async move {
                let asks_upgrade = connection.is_some_and(|c| {
                    c.split(',')
                        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
                }) && upgrade
                    .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"));
                match (
                    asks_upgrade,
                    version.as_deref().map(str::trim),
                    key,
                    on_upgrade,
                ) {
                    (true, Some("13"), Some(key), Some(on_upgrade)) => Ok(Upgrade {
                        key: key.trim().to_string(),
                        on_upgrade,
                    }),
                    _ => Err(warp::reject::custom(ApiError::UpgradeRequired)),
                }
            },
        )
}

impl Upgrade {
    /// Answers 101 and, once the connection is handed over, serves it with `serve`.
    pub fn reply<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => return log::debug!("WebSocket upgrade did not complete: {e}"),
            };
            // The TCP stream underneath, split into halves that need no lock
            // between them.
            let Ok(parts) = upgraded.downcast::<ServerIo>() else {
                return log::error!("an upgraded connection is not the server's TCP stream");
            };
            let Parts { io, read_buf, .. } = parts;
            // Copied, and the original dropped now: those bytes share the
            // HTTP connection's read buffer (8 KiB), which would otherwise
            // stay allocated for the socket's lifetime, even when empty.
            let early = Bytes::copy_from_slice(&read_buf);
            drop(read_buf);
            let (read, write) = io.into_inner().into_inner().into_split();
            let read = ReadSide { early, io: read };
            let read = WebSocketStream::from_raw_socket(read, Role::Server, Some(config)).await;
            serve(Socket { read, write }).await
        });
        let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
        let reply = warp::reply::with_header(reply, "connection", "upgrade");
        let reply = warp::reply::with_header(reply, "upgrade", "websocket");
        warp::reply::with_header(reply, "sec-websocket-accept", accept).into_response()
    }
}

/// tungstenite's buffers for one socket: reads of at most 1 KiB into a
/// buffer of that size, which every connection keeps for its lifetime, idle
/// or not (client frames are small, a few sit in 1 KiB, and a larger frame
/// grows the buffer for itself). It writes nothing that reaches the client
/// (see [`ReadSide`]), so it buffers nothing.
pub fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}
