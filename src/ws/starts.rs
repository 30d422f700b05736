//! The reads every WebSocket session start makes, on connections of their
//! own: the session snapshot (`conn`: chats, the log's head, blocks),
//! prepared once, and the presence snapshot, read in batches
//! (`presence::snapshot`).
//!
//! Sent as one-off statements over the pool, PostgreSQL planned the reads
//! again for every start: for a user with few peers, planning a start's own
//! presence snapshot took twenty times as long as running it. Prepared here,
//! the session snapshot is planned once per connection; the presence
//! snapshot, one read for a batch of starts, is planned per batch (see there
//! why). There is one connection per turn of the start line
//! (`ws.session_starts`, see `admission`), since no more starts than that
//! read at once, but no more than the pool has (a line set wider than the
//! pool did not get more connections from it either); each read takes the
//! one with the fewest reads under way, pipelining behind them.

use crate::config::DatabaseConfig;
use crate::db::{Pipeline, Pipelined};
use crate::error::ApiError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Index of the session snapshot in [`Pipelined::statements`].
pub const SESSION: usize = 0;

/// A node's connections for session starts, each with a count of the reads
/// under way on it.
pub struct StartReads {
    connections: Vec<(Pipeline, AtomicUsize)>,
}

/// A connection lent to one read, with its statements prepared
/// ([`SESSION`]); counted as busy until dropped.
pub struct StartConnection<'a> {
    pub conn: Arc<Pipelined>,
    _busy: Busy<'a>,
}

/// One read under way on a connection.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StartReads {
    /// One connection per turn of a line of `session_starts`, at most the
    /// pool's size (connected when first used).
    pub fn new(
        database: &DatabaseConfig,
        session_starts: usize,
    ) -> Result<StartReads, tokio_postgres::Error> {
        let connections = session_starts.min(database.pool_size as usize);
        let statements = vec![(
            super::conn::SESSION_SNAPSHOT_SQL,
            super::conn::SESSION_SNAPSHOT_TYPES,
        )];
        let connections = (0..connections.max(1))
            .map(|_| {
                Ok((
                    Pipeline::new(database, statements.clone())?,
                    AtomicUsize::new(0),
                ))
            })
            .collect::<Result<_, tokio_postgres::Error>>()?;
        Ok(StartReads { connections })
    }

    /// The connection with the fewest reads under way: a read queued behind
    /// a large presence snapshot would wait for it while another connection
    /// sat idle.
    pub async fn get(&self) -> Result<StartConnection<'_>, ApiError> {
        let (pipeline, busy) = self.least_busy();
        Ok(StartConnection {
            conn: pipeline.get().await?,
            _busy: busy,
        })
    }

    fn least_busy(&self) -> (&Pipeline, Busy<'_>) {
        let (pipeline, busy) = self
            .connections
            .iter()
            .min_by_key(|(_, busy)| busy.load(Ordering::Relaxed))
            .expect("at least one connection");
        busy.fetch_add(1, Ordering::Relaxed);
        (pipeline, Busy(busy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(session_starts: usize, pool_size: u32) -> StartReads {
        let database = DatabaseConfig {
            url: "postgres://nobody@127.0.0.1:1/none".into(),
            pool_size,
            ..DatabaseConfig::default()
        };
        StartReads::new(&database, session_starts).unwrap()
    }

    fn index(reads: &StartReads, pipeline: &Pipeline) -> usize {
        let index = reads
            .connections
            .iter()
            .position(|(p, _)| std::ptr::eq(p, pipeline));
        index.unwrap()
    }

    #[test]
    fn a_read_takes_the_connection_with_the_fewest_reads_under_way() {
        let reads = reads(3, 16);

        let (a, _busy_a) = reads.least_busy();
        let (b, busy_b) = reads.least_busy();
        let (c, _busy_c) = reads.least_busy();
        let (a, b, c) = (index(&reads, a), index(&reads, b), index(&reads, c));
        drop(busy_b);
        let (next, _busy_next) = reads.least_busy();

        assert_eq!(
            [a, b, c]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        assert_eq!(index(&reads, next), b, "the connection freed is taken next");
    }

    #[test]
    fn there_is_one_connection_per_turn_and_no_more_than_the_pool_has() {
        assert_eq!(reads(8, 16).connections.len(), 8);
        assert_eq!(reads(64, 16).connections.len(), 16);
    }

    #[test]
    fn there_is_at_least_one_connection() {
        let reads = reads(0, 16);

        let (_, first) = reads.least_busy();
        let (_, second) = reads.least_busy();

        assert_eq!(reads.connections.len(), 1);
        drop((first, second));
        assert_eq!(reads.connections[0].1.load(Ordering::Relaxed), 0);
    }
}
