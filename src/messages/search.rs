//! Message search: the messages of the caller's chats whose words match a
//! query ([`words`](super::words) defines both), newest first, paged with
//! `before_id` like history. PostgreSQL matches a `tsquery` against the
//! GIN-indexed `search` vector of each message (migration 0008).
//!
//! Cost is bounded three ways: a page holds at most 100 messages, the
//! statement runs under `limits.search_timeout_ms` (past it: 503
//! `query_timeout`), and each user has a rate limit (`limits.rate.searches`).
//! A rare word is looked up in the index and its matches sorted; a common
//! one is read newest first until the page is full. What stays expensive is
//! a query whose words are common but rarely together, or common elsewhere
//! and rare in the caller's chats: the time limit ends those.

use super::json_array;
use super::words::{tsquery_text, tsvector_text};
use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::{ApiError, FieldError};
use crate::http::{
    Context, DEFAULT_LIMIT, MAX_LIMIT, Query, authed_for, query, respond, validated, with,
};
use crate::limits::Action;
use crate::membership::{ensure_member, is_member};
use crate::message_json::message_rest_sql;
use std::sync::LazyLock;
use std::time::Duration;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The longest query, in characters.
pub const Q_MAX_CHARS: usize = 200;

/// GET /api/v1/messages/search?q&chat_id&limit&before_id
pub fn route(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("messages" / "search")
        .and(warp::get())
        .and(authed_for(ctx, Action::Search))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .and(with(ctx.limits.search_timeout_ms))
        .then(search_messages)
        .map(respond)
}

/// A search request, validated.
struct Search {
    tsquery: Option<String>,
    chat_id: Option<i64>,
    before_id: Option<i64>,
    limit: i64,
}

impl Search {
    fn parse(q: &Query) -> Result<Search, ApiError> {
        let mut errors = Vec::new();
        let text = q.get("q").unwrap_or("").trim();
        if !(1..=Q_MAX_CHARS).contains(&text.chars().count()) {
            errors.push(FieldError::new(
                "q",
                format!("must be 1 to {Q_MAX_CHARS} characters after trimming"),
            ));
        }
        let limit = q.int("limit", 1, MAX_LIMIT, &mut errors);
        let chat_id = q.int("chat_id", 1, i64::MAX, &mut errors);
        let before_id = q.int("before_id", 1, i64::MAX, &mut errors);
        validated(errors)?;
        Ok(Search {
            tsquery: tsquery_text(text),
            chat_id,
            before_id,
            limit: limit.unwrap_or(DEFAULT_LIMIT),
        })
    }
}

async fn search_messages(
    user: AuthUser,
    q: Query,
    pool: Pool,
    timeout_ms: u64,
) -> Result<impl Reply, ApiError> {
    let search = Search::parse(&q)?;
    let mut client = pool.get().await?;
    let rows = match &search.tsquery {
        Some(tsquery) => {
            let params: [(&(dyn ToSql + Sync), Type); 5] = [
                (tsquery, Type::TEXT),
                (&user.id, Type::INT8),
                (&search.chat_id, Type::INT8),
                (&search.before_id, Type::INT8),
                (&search.limit, Type::INT8),
            ];
            let tx = client.transaction().await?;
            // Sent together: the limit applies to the search alone.
            let timeout = format!("set local statement_timeout = {timeout_ms}");
            let ((), rows) = tokio::try_join!(
                tx.batch_execute(&timeout),
                tx.query_typed(&SEARCH_SQL, &params)
            )?;
            tx.commit().await?;
            rows
        }
        // Nothing to look for (a query of punctuation only): no match.
        None => Vec::new(),
    };
    if rows.is_empty()
        && let Some(chat_id) = search.chat_id
    {
        ensure_member(&*client, chat_id, user.id).await?;
    }
    Ok(json_array(&rows))
}

/// Messages matching tsquery `$1` in the chats of member `$2` (only chat
/// `$3` unless null), below id `$4` (unless null), `$5` at most, newest
/// first, each as history returns it to `$2` (with their reactions).
/// Membership is part of the query. The tsquery is a parameter, so
/// PostgreSQL plans each search with it (as it plans every statement
/// prepared per call): from its statistics of the words it picks between
/// the index (a rare word: its matches, sorted) and walking the newest
/// messages (a common word: it stops when the page is full). Public so the
/// benchmark's pgbench ceiling runs the very statement the server runs.
pub static SEARCH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select {body}::text from (
             select * from messages m
             where m.search @@ $1::tsquery
               and {member}
               and ($3::bigint is null or m.chat_id = $3)
               and ($4::bigint is null or m.id < $4)
             order by m.id desc
             limit $5
         ) m
         left join users u on u.id = m.sender_id
         order by m.id desc",
        body = message_rest_sql("m", "u", "$2"),
        member = is_member("m.chat_id", "$2"),
    )
});

/// Messages given a `search` vector per round of [`maintain`].
const FILL_BATCH: i64 = 500;

/// Keeps the search index current, for as long as the runtime lives.
///
/// Merges the GIN index's pending list (the words of recent sends) into
/// the index, so that no send has to when the list fills up: every second,
/// and again shortly while there was something to merge. Each node does;
/// they take turns on the index's cleanup lock.
///
/// First, gives messages stored without a vector (before migration 0008)
/// theirs, newest first, until none is left. The server writes a vector
/// with every message, so this runs once per start: a row written without
/// one by hand gets it at the next start.
pub async fn maintain(pool: Pool) {
    let mut task = Maintenance {
        filling: true,
        merging: true,
    };
    loop {
        let busy = match task.round(&pool).await {
            Ok(busy) => busy,
            Err(e) => {
                log::warn!(
                    "search index maintenance failed: {}",
                    crate::error::chain(&e)
                );
                false
            }
        };
        let pause = if busy { 100 } else { 1000 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

struct Maintenance {
    /// Until a round finds no message without a vector.
    filling: bool,
    /// Unless the database refused: only the index's owner may merge (sends
    /// and autovacuum still do).
    merging: bool,
}

impl Maintenance {
    /// One round: whether it found work.
    async fn round(&mut self, pool: &Pool) -> Result<bool, ApiError> {
        let client = pool.get().await?;
        let mut busy = false;
        if self.filling {
            let filled = fill_missing(&*client).await?;
            self.filling = filled > 0;
            busy |= self.filling;
        }
        if self.merging {
            match client
                .query_one(
                    "select gin_clean_pending_list('messages_search'::regclass)",
                    &[],
                )
                .await
            {
                Ok(row) => busy |= row.get::<_, i64>(0) > 0,
                Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    log::warn!("cannot merge the search index's pending list: {e}");
                    self.merging = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(busy)
    }
}

/// Gives up to [`FILL_BATCH`] messages without a `search` vector theirs,
/// newest first; returns how many. A send or edit meanwhile wrote its own
/// vector, which `search is null` keeps.
async fn fill_missing(client: &impl GenericClient) -> Result<u64, ApiError> {
    let rows = client
        .query(
            "select id, content from messages where search is null order by id desc limit $1",
            &[&FILL_BATCH],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let vectors: Vec<String> = rows
        .iter()
        .map(|r| tsvector_text(r.get::<_, &str>(1)))
        .collect();
    let n = client
        .execute(
            "update messages m set search = x.search::tsvector
             from unnest($1::int8[], $2::text[]) as x (id, search)
             where m.id = x.id and m.search is null",
            &[&ids, &vectors],
        )
        .await?;
    Ok(n)
}
