//! Queuing frames: the non-blocking offer every delivery goes through (a
//! full queue marks its connection as too slow), and the ephemeral
//! broadcasts (typing, read, presence) that skip the event log.

use super::queue::PushError;
use super::{ConnId, Inner, Outbox, Registry, SLOW_CONSUMER, Sender};
use crate::ws::event::Frame;
use crate::ws::ids::IdSet;
use std::sync::atomic::Ordering;

impl Registry {
    /// Tries to queue without waiting; false means the consumer is too slow.
    pub(super) fn offer(&self, outbox: &Outbox, frame: &Frame) -> bool {
        match outbox.tx.try_push(frame.clone()) {
            Ok(()) => true,
            Err(PushError::Full) => false,
            Err(PushError::Closed) => true,
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

    /// Delivers an ephemeral frame to a chat's subscribers; see [`Registry::broadcast_rooms`].
    pub fn broadcast_room(&self, chat: i64, frame: Frame, sender: Option<Sender>) {
        self.broadcast_rooms(&[chat], frame, sender);
    }

    /// Delivers an ephemeral frame once to each connection subscribed to any
    /// of `chats`, except the sender's own and those a block hides it from.
    pub fn broadcast_rooms(&self, chats: &[i64], frame: Frame, sender: Option<Sender>) {
        let mut inner = self.lock();
        let wanted =
            |o: &&Outbox| sender.is_none_or(|s| o.user_id != s.user_id && !inner.hides(o.id, s));
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
}
