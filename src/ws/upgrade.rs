//! The WebSocket handshake, done here instead of by `warp::ws()` so the
//! socket's buffers can be sized. warp's `Ws` fixes tungstenite's 128 KiB read
//! buffer, which is zero-filled on the first read — 128 KiB resident per idle
//! connection — and copies every outgoing frame into a fresh `String`, where
//! tungstenite itself can send one shared buffer to every subscriber.

use crate::error::ApiError;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub type WebSocket = WebSocketStream<TokioIo<Upgraded>>;

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
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    serve(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
                        .await
                }
                Err(e) => log::debug!("WebSocket upgrade did not complete: {e}"),
            }
        });
        let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
        let reply = warp::reply::with_header(reply, "connection", "upgrade");
        let reply = warp::reply::with_header(reply, "upgrade", "websocket");
        warp::reply::with_header(reply, "sec-websocket-accept", accept).into_response()
    }
}

/// Buffers for one socket: reads of at most 1 KiB into a buffer of that
/// size, which every connection keeps for its lifetime, idle or not (client
/// frames are small, a few sit in 1 KiB, and a larger frame grows the buffer
/// for itself), and writes batched up to 16 KiB. The write
/// buffer needs no cap: a blocked socket stops the writer task at the next
/// frame, so at most one frame past 16 KiB is ever buffered, and the
/// connection's queue limits do the rest.
pub fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}
