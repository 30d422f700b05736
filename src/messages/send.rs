//! Sending a message, shared by REST and WebSocket. One statement stores the
//! message, touches its chat, appends its event and NOTIFYs it. Sends are
//! committed by one task on the pipeline connection: those that arrive while
//! a commit runs go together in the next one (group commit), so under load
//! PostgreSQL runs one statement per batch rather than one per message.

use super::check_content;
use super::mentions::mention_names;
use super::send_sql::{SEND_BATCH_SQL, SEND_SQL};
use crate::auth::{Sealed, revoked, token_current_sql};
use crate::db::{DbThread, Pipeline, Pool};
use crate::error::{ApiError, FieldError};
use crate::limits::RateLimits;
use crate::membership::is_member;
use crate::message_json::{message_rest_sql, sent_rest};
use crate::metrics::Metrics;
use futures_util::future::join_all;
use serde::Deserialize;
use std::sync::{Arc, LazyLock};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};

pub const CLIENT_ID_MAX_CHARS: usize = 64;

/// The most sends one commit carries; more wait for the next.
const MAX_BATCH: usize = 128;

#[derive(Debug, Deserialize)]
pub struct SendRequest {
    #[serde(default, deserialize_with = "crate::validate::integer")]
    pub chat_id: i64,
    #[serde(default)]
    pub content: String,
    pub client_id: Option<String>,
    /// The message this one answers: one of the same chat.
    #[serde(default, deserialize_with = "crate::validate::optional_integer")]
    pub reply_to_id: Option<i64>,
}

pub struct Sent {
    pub message_id: i64,
    pub chat_id: i64,
    pub client_id: Option<String>,
    /// Just stored: the message's fields as the send's statement returned
    /// them (`message_json::sent_fields_sql`); a retry: the REST body of the
    /// earlier message. See [`Sent::rest_body`].
    body: String,
    /// The `message` event's id; `None` for an idempotent retry (nothing new happened).
    pub event_id: Option<i64>,
    pub duplicate: bool,
}

impl Sent {
    fn from_row(row: &Row, duplicate: bool) -> Sent {
        Sent {
            message_id: row.get("id"),
            chat_id: row.get("chat_id"),
            client_id: row.get("client_id"),
            body: row.get(if duplicate { "body" } else { "fields" }),
            event_id: if duplicate { None } else { row.get("event_id") },
            duplicate,
        }
    }

    /// The message as REST returns it. Made here, not by the statement: a
    /// send over the socket is answered with its ids alone.
    pub fn rest_body(self) -> Result<String, ApiError> {
        if self.duplicate {
            Ok(self.body)
        } else {
            sent_rest(&self.body).map_err(ApiError::internal)
        }
    }
}

/// A send queued for its commit (see [`SendQueue::queue`]).
pub struct PendingSend {
    answer: oneshot::Receiver<Result<Option<Row>, ApiError>>,
    chat_id: i64,
    sender: Sealed,
    client_id: Option<String>,
    reply_to_id: Option<i64>,
    pool: Pool,
}

impl PendingSend {
    /// Waits for the commit: the stored message, or the earlier one with this
    /// client_id (an idempotent retry).
    pub async fn finish(self) -> Result<Sent, ApiError> {
        let answer = self
            .answer
            .await
            .map_err(|_| ApiError::internal("the send queue dropped a send"))?;
        match answer? {
            Some(row) => Ok(Sent::from_row(&row, false)),
            None => {
                let client = self.pool.get().await?;
                ensure_token_current(&*client, self.sender).await?;
                let earlier = existing_by_client_id(
                    &*client,
                    self.chat_id,
                    self.sender.id,
                    self.client_id.as_deref(),
                )
                .await;
                match (earlier, self.reply_to_id) {
                    (Err(ApiError::ChatNotFound), Some(_)) => {
                        refused_reply(&*client, self.chat_id, self.sender.id).await
                    }
                    (earlier, _) => earlier,
                }
            }
        }
    }
}

/// Nothing was inserted: first of all, the sender's token may have been
/// revoked since it was sealed (the statement checked; 401, as
/// `Auth::authenticate` would have answered).
async fn ensure_token_current(client: &impl GenericClient, sender: Sealed) -> Result<(), ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select 1 from users u where u.id = $1 and {}",
            token_current_sql("u", "$2")
        )
    });
    match client
        .query_opt(SQL.as_str(), &[&sender.id, &sender.token_version])
        .await?
    {
        Some(_) => Ok(()),
        None => Err(revoked()),
    }
}

/// Nothing was inserted: either the sender is not a member, or this client_id
/// was used before (possibly by a concurrent request that has committed since).
async fn existing_by_client_id(
    client: &impl GenericClient,
    chat_id: i64,
    sender_id: i64,
    client_id: Option<&str>,
) -> Result<Sent, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select m.id, m.chat_id, m.client_id, {}::text as body
             from messages m left join users u on u.id = m.sender_id
             where m.sender_id = $1 and m.client_id = $2 and {}",
            message_rest_sql("m", "u", "$1"),
            is_member("$3", "$1"),
        )
    });
    let Some(client_id) = client_id else {
        return Err(ApiError::ChatNotFound);
    };
    let row = client
        .query_opt(SQL.as_str(), &[&sender_id, &client_id, &chat_id])
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    let sent = Sent::from_row(&row, true);
    if sent.chat_id != chat_id {
        return Err(ApiError::ClientIdReused);
    }
    Ok(sent)
}

/// Nothing was inserted for a reply, and its client_id names no earlier
/// message: a member was refused for the original (400), anyone else for
/// the chat (404).
async fn refused_reply(
    client: &impl GenericClient,
    chat_id: i64,
    sender_id: i64,
) -> Result<Sent, ApiError> {
    let member: bool = client
        .query_one(
            &format!("select {}", is_member("$1", "$2")),
            &[&chat_id, &sender_id],
        )
        .await?
        .get(0);
    Err(if member {
        ApiError::InvalidReply
    } else {
        ApiError::ChatNotFound
    })
}

/// A validated send, as the statements take it.
struct Insert {
    chat_id: i64,
    sender_id: i64,
    /// Checked by the statement (see `auth::Sealed`).
    token_version: i32,
    content: String,
    client_id: Option<String>,
    /// The content's words for search, as a `tsvector` literal.
    search: String,
    reply_to_id: Option<i64>,
    /// What the content may mention (see `mentions::mention_names`).
    mention_names: Option<String>,
}

/// A send waiting for its commit: the row the statement returned for it, or
/// `None` when nothing was inserted (not a member, or a reused client_id).
struct Job {
    insert: Insert,
    reply: oneshot::Sender<Result<Option<Row>, ApiError>>,
}

/// The queue of sends waiting for the committing task (see the module doc).
/// The task ends when the queue is dropped.
pub struct SendQueue {
    jobs: mpsc::Sender<Job>,
    /// For looking up the message a retried client_id names.
    pool: Pool,
    max_chars: usize,
    /// One limit for sends over REST and WebSocket alike.
    rates: Arc<RateLimits>,
}

/// What a [`SendQueue`] is started with.
pub struct SendSetup {
    pub pipeline: Pipeline,
    pub pool: Pool,
    pub max_chars: usize,
    pub rates: Arc<RateLimits>,
    pub metrics: Arc<Metrics>,
}

impl SendQueue {
    /// Starts the committing task on `pipeline`, on `send_thread`. It
    /// connects and prepares right away, so the first sends do not wait for
    /// it; a failure is retried by the first send.
    pub fn start(setup: SendSetup, send_thread: &DbThread) -> SendQueue {
        let SendSetup {
            pipeline,
            pool,
            max_chars,
            rates,
            metrics,
        } = setup;
        let (jobs, queued) = mpsc::channel(MAX_BATCH * 8);
        send_thread.spawn(async move {
            if let Err(e) = pipeline.get().await {
                log::warn!("cannot prepare the send pipeline yet: {e:?}");
            }
            commit_batches(pipeline, queued, metrics).await
        });
        SendQueue {
            jobs,
            pool,
            max_chars,
            rates,
        }
    }

    /// Validates a send and queues it for commit, waiting only for room in
    /// the queue. Sends are committed in the order they were queued, so a
    /// caller may queue its next send before the last one is committed (a
    /// WebSocket client pipelining its messages) and still have them stored
    /// in the order sent.
    pub async fn queue(&self, sender: Sealed, req: SendRequest) -> Result<PendingSend, ApiError> {
        self.rates.check_send(sender.id, sender.token_version)?;
        let mut errors = Vec::new();
        if req.chat_id <= 0 {
            errors.push(FieldError::new("chat_id", "must be a positive chat id"));
        }
        let content = check_content(&req.content, self.max_chars, &mut errors);
        if let Some(c) = &req.client_id {
            let n = c.chars().count();
            if n == 0 || n > CLIENT_ID_MAX_CHARS {
                errors.push(FieldError::new(
                    "client_id",
                    format!("must be 1 to {CLIENT_ID_MAX_CHARS} characters"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        let (reply, answer) = oneshot::channel();
        // Here, on the request's task, not on the committing one.
        let search = super::words::tsvector_text(&content);
        let insert = Insert {
            chat_id: req.chat_id,
            sender_id: sender.id,
            token_version: sender.token_version,
            mention_names: mention_names(&content),
            content,
            client_id: req.client_id.clone(),
            search,
            reply_to_id: req.reply_to_id,
        };
        // First in, first out, and so is waiting for room in the queue.
        self.jobs
            .send(Job { insert, reply })
            .await
            .map_err(|_| ApiError::internal("the send queue has stopped"))?;
        Ok(PendingSend {
            answer,
            chat_id: req.chat_id,
            sender,
            client_id: req.client_id,
            reply_to_id: req.reply_to_id,
            pool: self.pool.clone(),
        })
    }

    /// The statements the pipeline connection prepares: [`SEND_SQL`], then
    /// [`SEND_BATCH_SQL`].
    pub fn statements() -> Vec<(&'static str, &'static [Type])> {
        vec![
            (
                SEND_SQL.as_str(),
                &[
                    Type::INT8,
                    Type::INT8,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT8,
                    Type::TEXT,
                    Type::INT4,
                ],
            ),
            (
                SEND_BATCH_SQL.as_str(),
                &[
                    Type::INT8_ARRAY,
                    Type::INT8_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::INT8_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::INT4_ARRAY,
                ],
            ),
        ]
    }
}

const SEND_STATEMENT: usize = 0;
const SEND_BATCH_STATEMENT: usize = 1;

/// The committing task: takes whatever is queued, up to [`MAX_BATCH`], and
/// commits it while the next sends queue.
async fn commit_batches(
    pipeline: Pipeline,
    mut queued: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queued.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics.send_batch_size.observe(batch.len() as f64);
        let started = std::time::Instant::now();
        commit(&pipeline, &mut batch).await;
        metrics.send_commit.observe(started.elapsed().as_secs_f64());
    }
}

/// Commits `batch` (emptying it): in one statement, or send by send when
/// that fails.
async fn commit(pipeline: &Pipeline, batch: &mut Vec<Job>) {
    if batch.len() > 1 {
        match insert_batch(pipeline, batch).await {
            Ok(rows) => {
                for (job, row) in batch.drain(..).zip(rows) {
                    let _ = job.reply.send(Ok(row));
                }
                return;
            }
            // Whatever fails the statement fails every send in it; alone,
            // each fails (or not) by itself.
            Err(e) => log::info!(
                "a batch of {} sends failed ({}); sending each alone",
                batch.len(),
                crate::error::chain(&e)
            ),
        }
    }
    // Pipelined: they go out back to back, each with its own answer.
    join_all(batch.drain(..).map(|job| async move {
        let _ = job.reply.send(insert_one(pipeline, &job.insert).await);
    }))
    .await;
}

async fn insert_one(pipeline: &Pipeline, insert: &Insert) -> Result<Option<Row>, ApiError> {
    let pipelined = pipeline.get().await?;
    let row = pipelined
        .client
        .query_opt(
            &pipelined.statements[SEND_STATEMENT],
            &[
                &insert.chat_id,
                &insert.sender_id,
                &insert.content,
                &insert.client_id,
                &insert.search,
                &insert.reply_to_id,
                &insert.mention_names,
                &insert.token_version,
            ],
        )
        .await?;
    Ok(row)
}

/// Each job's row, in the order of `batch`.
async fn insert_batch(pipeline: &Pipeline, batch: &[Job]) -> Result<Vec<Option<Row>>, ApiError> {
    let chat_ids: Vec<i64> = batch.iter().map(|j| j.insert.chat_id).collect();
    let sender_ids: Vec<i64> = batch.iter().map(|j| j.insert.sender_id).collect();
    let contents: Vec<&str> = batch.iter().map(|j| j.insert.content.as_str()).collect();
    let client_ids: Vec<Option<&str>> = batch
        .iter()
        .map(|j| j.insert.client_id.as_deref())
        .collect();
    let searches: Vec<&str> = batch.iter().map(|j| j.insert.search.as_str()).collect();
    let reply_to_ids: Vec<Option<i64>> = batch.iter().map(|j| j.insert.reply_to_id).collect();
    let names: Vec<Option<&str>> = batch
        .iter()
        .map(|j| j.insert.mention_names.as_deref())
        .collect();
    let versions: Vec<i32> = batch.iter().map(|j| j.insert.token_version).collect();
    let pipelined = pipeline.get().await?;
    let rows = pipelined
        .client
        .query(
            &pipelined.statements[SEND_BATCH_STATEMENT],
            &[
                &chat_ids,
                &sender_ids,
                &contents,
                &client_ids,
                &searches,
                &reply_to_ids,
                &names,
                &versions,
            ],
        )
        .await?;
    let mut by_job: Vec<Option<Row>> = batch.iter().map(|_| None).collect();
    for row in rows {
        let n: i64 = row.get("n");
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| by_job.get_mut(i)) {
            *slot = Some(row);
        }
    }
    Ok(by_job)
}
