//! The two reads every WebSocket session start makes — the session
//! snapshot (`conn`: chats, the log's head, blocks) and the presence
//! snapshot (`presence`) — prepared once, on connections of their own.
//!
//! Sent as one-off statements over the pool, PostgreSQL planned them again
//! for every start, and planning the presence snapshot took twenty times as
//! long as running it: most of the database's work of a session start (a
//! reconnect storm is nothing but starts). Prepared here, they are planned
//! once per connection. There is one connection per turn of the start line
//! (`ws.session_starts`, see `admission`), since no more starts than that
//! read at once; starts take them in turn and pipeline on them.

use crate::config::DatabaseConfig;
use crate::db::{Pipeline, Pipelined};
use crate::error::ApiError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Index of the session snapshot in [`Pipelined::statements`].
pub const SESSION: usize = 0;
/// Index of the presence snapshot in [`Pipelined::statements`].
pub const PRESENCE: usize = 1;

pub struct StartReads {
    connections: Vec<Pipeline>,
    next: AtomicUsize,
}

impl StartReads {
    /// `connections` connections (connected when first used).
    pub fn new(
        database: &DatabaseConfig,
        connections: usize,
    ) -> Result<StartReads, tokio_postgres::Error> {
        let statements = vec![
            (
                super::conn::SESSION_SNAPSHOT_SQL,
                super::conn::SESSION_SNAPSHOT_TYPES,
            ),
            (
                super::presence::PRESENCE_SNAPSHOT_SQL.as_str(),
                super::presence::PRESENCE_SNAPSHOT_TYPES,
            ),
        ];
        let connections = (0..connections.max(1))
            .map(|_| Pipeline::new(database, statements.clone()))
            .collect::<Result<_, _>>()?;
        Ok(StartReads {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// The next connection in turn, with the statements prepared
    /// ([`SESSION`], [`PRESENCE`]).
    pub async fn get(&self) -> Result<Arc<Pipelined>, ApiError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].get().await
    }
}
