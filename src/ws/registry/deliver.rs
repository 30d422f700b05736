//! Queuing frames: the non-blocking offer every delivery goes through (a
//! full queue marks its connection as too slow), and the ephemeral
//! broadcasts (typing, read, presence) that skip the event log.

use super::{ConnId, Inner, Outbox, Registry, SLOW_CONSUMER};
use crate::ws::event::Frame;
use crate::ws::ids::IdSet;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

impl Registry {
    /// Tries to queue without waiting; false means the consumer is too slow.
    pub(super) fn offer(&self, outbox: &Outbox, frame: &Frame) -> bool {
        let len = frame.len();
        if outbox.queued_bytes.load(Ordering::Relaxed) + len > self.queue_bytes {
            return false;
        }
        match outbox.tx.try_send(frame.clone()) {
            Ok(()) => {
                outbox.queued_bytes.fetch_add(len, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Queues `frame` for each target; returns those too slow to take it.
    pub(super) fn offer_all<'a>(
        &self,
        targets: impl Iterator<Item = &'a Outbox>,
        frame: &Frame,
    ) -> Vec<ConnId> {
        let mut delivered = 0;
        let mut slow = Vec::new();
        for outbox in targets {
            if self.offer(outbox, frame) {
                delivered += 1;
            } else {
                slow.push(outbox.id);
            }
        }
        self.events_delivered
            .fetch_add(delivered, Ordering::Relaxed);
        slow
    }

    /// Closes connections too slow to take what was queued for them (4008).
    pub(super) fn kill_slow(&self, inner: &mut Inner, slow: Vec<ConnId>) {
        for id in slow {
            self.kill_locked(inner, id, SLOW_CONSUMER);
        }
    }

    /// Queues `frame` for each of `ids`; closes those too slow to take it.
    pub(super) fn deliver(
        &self,
        inner: &mut Inner,
        ids: impl IntoIterator<Item = ConnId>,
        frame: &Frame,
    ) {
        let slow = self.offer_all(
            ids.into_iter()
                .filter_map(|id| inner.conns.get(&id))
                .map(|c| &*c.outbox),
            frame,
        );
        self.kill_slow(inner, slow);
    }

    /// Delivers an ephemeral frame to a chat's subscribers, except `skip_user`'s connections.
    pub fn broadcast_room(&self, chat: i64, frame: Frame, skip_user: Option<i64>) {
        self.broadcast_rooms(&[chat], frame, skip_user);
    }

    /// Delivers an ephemeral frame once to each connection subscribed to any of
    /// `chats`, except `skip_user`'s own.
    pub fn broadcast_rooms(&self, chats: &[i64], frame: Frame, skip_user: Option<i64>) {
        let mut inner = self.lock();
        let wanted = |o: &&Outbox| skip_user.is_none_or(|u| o.user_id != u);
        let rooms = chats.iter().filter_map(|c| inner.rooms.get(c));
        let slow = if chats.len() == 1 {
            self.offer_all(
                rooms.flat_map(|r| r.values().map(|o| &**o)).filter(wanted),
                &frame,
            )
        } else {
            // A connection in several of the chats hears it once.
            let mut seen = IdSet::default();
            self.offer_all(
                rooms
                    .flat_map(|r| r.values().map(|o| &**o))
                    .filter(wanted)
                    .filter(|o| seen.insert(o.id)),
                &frame,
            )
        };
        self.kill_slow(&mut inner, slow);
    }

    /// Delivers an ephemeral frame to every connection of these users.
    pub fn broadcast_users(&self, users: &[i64], frame: Frame) {
        let mut inner = self.lock();
        let targets: Vec<ConnId> = users
            .iter()
            .flat_map(|u| inner.users.get(u).into_iter().flatten().copied())
            .collect();
        self.deliver(&mut inner, targets, &frame);
    }
}
