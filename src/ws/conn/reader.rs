//! A connection's reader: reads client frames, answers each in the order
//! received, and enforces the idle timeout, the token's expiry and the
//! bad-frame limit.

use super::Services;
use super::wire;
use super::writer::killed;
use crate::auth::{AuthUser, Sealed};
use crate::error::ApiError;
use crate::events::{Live, notify_live};
use crate::limits::Action;
use crate::messages::{PendingSend, Sent};
use crate::validate::json_has_nul;
use crate::ws::close::{CloseReason, GARBAGE, IDLE, TOKEN_EXPIRED, TOO_BIG};
use crate::ws::event::Frame;
use crate::ws::protocol::{ClientFrame, ServerFrame, parse_client_frame};
use crate::ws::registry::ConnId;
use futures_util::future::{self, BoxFuture};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Stream, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Bad frames tolerated per window before the client is closed with 1008.
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(10);
/// Replies a connection may have outstanding (sends waiting for their commit,
/// and the replies queued behind them) before its reader stops reading until
/// the oldest is due.
const PIPELINED_SENDS: usize = 32;

/// The connection being read: whose it is and what it may use.
pub(super) struct Reader<'a> {
    pub services: &'a Services,
    pub user: &'a AuthUser,
    pub id: ConnId,
}

/// A reply to a client frame: ready now, or once its send is committed.
enum Reply {
    Now(String),
    Later(BoxFuture<'static, String>),
}

/// What handling a well-formed frame came to.
enum Handled {
    Reply(ServerFrame),
    /// A message queued for commit; its ack follows the commit.
    Queued(PendingSend),
}

/// Where a reader runs: where it may stop (see `conn::serve`).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Lane {
    /// On the runtime, until the client sends its first message.
    Runtime,
    /// On the readers' thread, until the end.
    Readers,
}

impl Reader<'_> {
    /// Reads until the client goes away or the connection is closed, or, in
    /// [`Lane::Runtime`], until the client's first `message` frame, which
    /// is returned unhandled.
    pub(super) async fn run<S>(
        &self,
        mut stream: S,
        kill: watch::Receiver<Option<CloseReason>>,
        lane: Lane,
    ) -> Option<Message>
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let hub = &self.services.hub;
        let idle = Duration::from_millis(hub.config.idle_timeout_ms);
        let mut idle_deadline = Instant::now() + idle;
        let until_expiry = (self.user.expires_at - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let expiry = tokio::time::sleep(until_expiry);
        tokio::pin!(expiry);
        let killed = killed(kill);
        tokio::pin!(killed);
        let mut bad_frames = 0u32;
        let mut window_start = Instant::now();
        // Replies in the order their frames arrived; a send's ack waits for
        // its commit while the frames behind it are read (and their sends queued).
        let mut replies: FuturesOrdered<BoxFuture<'static, String>> = FuturesOrdered::new();
        loop {
            tokio::select! {
                _ = &mut killed => return None,
                _ = tokio::time::sleep_until(idle_deadline) => {
                    hub.registry.kill(self.id, IDLE);
                    return None;
                }
                _ = &mut expiry => {
                    hub.registry.kill(self.id, TOKEN_EXPIRED);
                    return None;
                }
                Some(reply) = replies.next(), if !replies.is_empty() => {
                    hub.registry.send_to(self.id, Frame::from(reply));
                }
                message = stream.next(), if replies.len() < PIPELINED_SENDS => {
                    let message = match message {
                        None => return None,
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            // tungstenite reports an oversized frame as a capacity error.
                            if matches!(e, WsError::Capacity(_)) {
                                hub.registry.kill(self.id, TOO_BIG);
                            }
                            return None;
                        }
                    };
                    idle_deadline = Instant::now() + idle;
                    if message.is_close() {
                        return None;
                    }
                    if lane == Lane::Runtime && is_send(&message) {
                        // No reply is outstanding before a client's first
                        // send, so the reader can move without its state
                        // (its bad-frame count starts afresh, once).
                        return Some(message);
                    }
                    let reply = if let Message::Ping(payload) = &message {
                        // Answered through the queue: the writer owns the socket.
                        hub.registry.send_to(self.id, wire::pong(payload));
                        continue;
                    } else if let Message::Text(text) = &message {
                        // Boxed: the state of the queries a frame may run
                        // would otherwise sit in every idle connection's task.
                        Box::pin(self.handle_text(text.as_str())).await
                    } else if message.is_binary() {
                        Err(ServerFrame::Error {
                            code: "invalid_frame",
                            error: "binary frames are not supported; send JSON text".into(),
                            reference: None,
                            retry_after_ms: None,
                        })
                    } else {
                        continue; // a pong: the idle deadline already moved.
                    };
                    let reply = match reply {
                        Ok(Some(reply)) => reply,
                        Ok(None) => continue,
                        Err(error) => {
                            if window_start.elapsed() > BAD_FRAME_WINDOW {
                                window_start = Instant::now();
                                bad_frames = 0;
                            }
                            bad_frames += 1;
                            if bad_frames > hub.config.max_bad_frames {
                                hub.registry.kill(self.id, GARBAGE);
                                return None;
                            }
                            Reply::Now(error.to_text(None))
                        }
                    };
                    match reply {
                        Reply::Now(frame) if replies.is_empty() => {
                            hub.registry.send_to(self.id, Frame::from(frame));
                        }
                        Reply::Now(frame) => replies.push_back(future::ready(frame).boxed()),
                        Reply::Later(frame) => replies.push_back(frame),
                    }
                }
            }
        }
    }

    /// Handles one client text frame. `Ok(Some)` is the reply, `Ok(None)`
    /// means none is due, and `Err` is an error frame for a malformed frame
    /// (counted towards the garbage limit). Refusals of well-formed requests
    /// are replies.
    async fn handle_text(&self, text: &str) -> Result<Option<Reply>, ServerFrame> {
        let (frame, reference) = parse_client_frame(text).map_err(ServerFrame::from)?;
        // Refused before it is queued: a send PostgreSQL refuses would fail
        // the whole group commit it joined.
        let handled = if json_has_nul(text.as_bytes()) {
            Err(ApiError::InvalidText)
        } else {
            self.handle_frame(frame).await
        };
        Ok(match handled {
            Ok(Some(Handled::Reply(frame))) => Some(Reply::Now(frame.to_text(reference.as_ref()))),
            Ok(Some(Handled::Queued(pending))) => Some(Reply::Later(
                async move {
                    match pending.finish().await {
                        Ok(sent) => ack(&sent).to_text(reference.as_ref()),
                        Err(e) => ServerFrame::error(&e, reference).to_text(None),
                    }
                }
                .boxed(),
            )),
            Ok(None) => None,
            Err(e) => Some(Reply::Now(ServerFrame::error(&e, reference).to_text(None))),
        })
    }

    async fn handle_frame(&self, frame: ClientFrame) -> Result<Option<Handled>, ApiError> {
        let Services {
            hub,
            pool,
            sends,
            rates,
        } = self.services;
        let user = self.user;
        let reply = |frame| Ok(Some(Handled::Reply(frame)));
        // A frame over its limit gets `rate_limited` (never counted as a bad
        // frame, never a disconnect); a typing signal is dropped silently.
        // Message sends are limited where REST sends are, in the send queue.
        match &frame {
            ClientFrame::Typing { .. } => {
                if rates.check_user(Action::Typing, user.id).is_err() {
                    return Ok(None);
                }
            }
            ClientFrame::Read { .. } => rates.check_user(Action::MarkRead, user.id)?,
            ClientFrame::Message(_) => {}
            ClientFrame::Ping | ClientFrame::JoinChat { .. } | ClientFrame::LeaveChat { .. } => {
                rates.check_user(Action::Frame, user.id)?
            }
        }
        match frame {
            ClientFrame::Ping => reply(ServerFrame::Pong {}),
            ClientFrame::Message(req) => Ok(Some(Handled::Queued(
                sends.queue(Sealed::from(user), req).await?,
            ))),
            ClientFrame::JoinChat { chat_id } | ClientFrame::LeaveChat { chat_id } => {
                let pause = matches!(frame, ClientFrame::LeaveChat { .. });
                if !hub.registry.set_paused(self.id, chat_id, pause) {
                    return Err(ApiError::ChatNotFound);
                }
                reply(ServerFrame::Ack(
                    json!({ "chat_id": chat_id, "subscribed": !pause }),
                ))
            }
            ClientFrame::Typing { chat_id } => {
                if !hub.registry.is_member(self.id, chat_id) {
                    return Err(ApiError::ChatNotFound);
                }
                if hub.typing_allowed(user.id, chat_id) {
                    let client = pool.get().await?;
                    let signal = Live::Typing {
                        chat_id,
                        user_id: user.id,
                        username: user.username.clone(),
                    };
                    notify_live(&*client, &signal).await?;
                }
                Ok(None)
            }
            ClientFrame::Read {
                chat_id,
                message_id,
            } => {
                let client = pool.get().await?;
                let marker =
                    crate::chats::read::advance_read_marker(&*client, chat_id, user.id, message_id)
                        .await?;
                reply(ServerFrame::Ack(
                    serde_json::to_value(marker).unwrap_or(Value::Null),
                ))
            }
        }
    }
}

/// Whether `message` is a well-formed `message` frame (a send).
fn is_send(message: &Message) -> bool {
    let Message::Text(text) = message else {
        return false;
    };
    matches!(
        parse_client_frame(text.as_str()),
        Ok((ClientFrame::Message(_), _))
    )
}

fn ack(sent: &Sent) -> ServerFrame {
    ServerFrame::Ack(json!({
        "message_id": sent.message_id,
        "event_id": sent.event_id,
        "chat_id": sent.chat_id,
        "client_id": sent.client_id,
        "duplicate": sent.duplicate,
    }))
}
