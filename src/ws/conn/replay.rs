//! Replaying what a resuming client missed: the events in `(since, upto]`
//! its user is entitled to ([`Event::replayed_to`]), from the node's replay
//! cache while it reaches back far enough, else from the log, a page at a
//! time.

use super::Services;
use super::writer::Writer;
use crate::db::Pool;
use crate::error::ApiError;
use crate::events::READ_EVENTS_SQL;
use crate::ws::close::UNAVAILABLE;
use crate::ws::event::{Event, Frame};
use tokio_tungstenite::tungstenite::Error as WsError;

/// Frames read and sent at a time.
const REPLAY_PAGE: i64 = 500;

/// A replay due to a connection: `(after, upto]` for `user_id`, a member of
/// `chat_ids` (sorted) as of event `upto`.
pub(super) struct Replay {
    pub after: i64,
    pub upto: i64,
    pub user_id: i64,
    pub chat_ids: Vec<i64>,
}

impl Replay {
    /// Sends the replay through `writer`; false when the connection was
    /// killed meanwhile (or the log could not be read: then it is killed).
    pub(super) async fn run(
        mut self,
        writer: &mut Writer,
        services: &Services,
    ) -> Result<bool, WsError> {
        let registry = &services.hub.registry;
        while self.after < self.upto {
            let wanted = |e: &Event| e.replayed_to(self.user_id, &self.chat_ids);
            let held = registry
                .recent()
                .page(self.after, self.upto, REPLAY_PAGE as usize, wanted);
            let (frames, through) = match held {
                Some(page) => page,
                None => match self.read_log(&services.pool).await {
                    Ok(page) => page,
                    Err(e) => {
                        log::warn!("replay failed: {}", crate::error::chain(&e));
                        registry.kill(writer.conn_id(), UNAVAILABLE);
                        return Ok(false);
                    }
                },
            };
            if !writer.send_page(frames).await? {
                return Ok(false);
            }
            self.after = through;
        }
        Ok(true)
    }

    /// The next page from the log: the frames of the user's events after
    /// `after`, with the id to resume from. The query narrows the log to
    /// the user's chats and the events addressed to them; which of those the
    /// user gets is decided by the same rule as the cache's.
    async fn read_log(&self, pool: &Pool) -> Result<(Vec<(i64, Frame)>, i64), ApiError> {
        let client = pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "{} where e.id > $2 and e.id <= $3 and ($1 = any(e.user_ids) or e.chat_id = any($5))
                     order by e.id limit $4",
                    READ_EVENTS_SQL.as_str()
                ),
                &[
                    &self.user_id,
                    &self.after,
                    &self.upto,
                    &REPLAY_PAGE,
                    &self.chat_ids,
                ],
            )
            .await?;
        let through = match rows.last() {
            Some(last) if rows.len() as i64 == REPLAY_PAGE => last.get(0),
            _ => self.upto,
        };
        let frames = rows
            .iter()
            .filter_map(Event::from_row)
            .filter(|e| e.replayed_to(self.user_id, &self.chat_ids))
            .map(|e| (e.id, e.frame))
            .collect();
        Ok((frames, through))
    }
}
