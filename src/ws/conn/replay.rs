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
use std::sync::LazyLock;
use tokio_postgres::types::Type;

/// Frames read and sent at a time.
const REPLAY_PAGE: i64 = 500;

/// SQL: the ids of user `$1`'s events in `($2, $3]` — those of their chats
/// `$4` and those addressed to them — in id order, at most `$5`. Each chat
/// is walked by its own index range and stops at `$5`, so the cost follows
/// what the user is entitled to, not the size of the log. Which of these
/// the user is replayed is `Event::replayed_to`'s call.
static CANDIDATES_SQL: &str = "
    select id from (
        select x.id from unnest($4::bigint[]) c(chat_id), lateral (
            select e.id from events e
            where e.chat_id = c.chat_id and e.id > $2 and e.id <= $3
            order by e.id limit $5) x
        union
        select e.id from events e
        where e.user_ids @> array[$1::bigint] and e.user_ids <> '{}' and e.id > $2 and e.id <= $3
    ) ids order by id limit $5";

const CANDIDATE_TYPES: &[Type] = &[
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8_ARRAY,
    Type::INT8,
];

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
    ) -> std::io::Result<bool> {
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
            services
                .hub
                .metrics
                .replayed_events
                .inc_by(frames.len() as u64);
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
        // `= any(array(..))` rather than `in (..)`: the planner costs an
        // `in` by the candidates' limit, not the handful they are, and on a
        // small log joins them against a scan of every event.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "{} where e.id = any(array({CANDIDATES_SQL})) order by e.id",
                READ_EVENTS_SQL.as_str()
            )
        });
        let client = pool.get().await?;
        let rows = client.query_typed(&SQL, &self.params(&REPLAY_PAGE)).await?;
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

    /// Whether the replay is within `budget` events, counting at most
    /// `budget + 1` of them: past it the client is told `recovered: false`
    /// (re-fetch over REST) instead of being replayed from a long stretch of
    /// the log. What the node holds in memory costs no reading and is not
    /// counted.
    pub(super) async fn within_budget(
        &self,
        services: &Services,
        budget: usize,
    ) -> Result<bool, ApiError> {
        if self.after >= self.upto || services.hub.registry.recent().holds_after(self.after) {
            return Ok(true);
        }
        let limit = budget as i64 + 1;
        let sql = format!("select count(*) from ({CANDIDATES_SQL}) candidates");
        let client = services.pool.get().await?;
        let count: i64 = client
            .query_typed(&sql, &self.params(&limit))
            .await?
            .first()
            .map_or(0, |r| r.get(0));
        Ok(count <= budget as i64)
    }

    /// The candidates query's parameters, `limit` the last.
    fn params<'a>(
        &'a self,
        limit: &'a i64,
    ) -> Vec<(&'a (dyn tokio_postgres::types::ToSql + Sync), Type)> {
        let values: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &self.user_id,
            &self.after,
            &self.upto,
            &self.chat_ids,
            limit,
        ];
        values
            .into_iter()
            .zip(CANDIDATE_TYPES.iter().cloned())
            .collect()
    }
}
