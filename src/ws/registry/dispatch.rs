//! Dispatching durable events: their membership effects (subscribing the
//! users a `chat_created` or `member_added` addresses, unsubscribing after
//! a `member_removed` or `chat_deleted`) and their delivery, in id order.

use super::{ConnId, Inner, Outbox, PENDING_LIMIT, Registry, SLOW_CONSUMER, unsubscribe_room};
use crate::events::Membership;
use crate::ws::event::Event;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Events to hand [`Registry::dispatch_all`] at once: enough to batch a group
/// commit, few enough not to fill a queue in one go or hold the lock for long.
pub const DISPATCH_BATCH: usize = 32;

/// Whether an event only reaches its chat's room: no membership effect and
/// no addressed users, so it can join a run of such events.
fn is_plain(event: &Event) -> bool {
    event.chat_id.is_some()
        && event.user_ids.is_empty()
        && event.kind.membership() == Membership::Unchanged
        && event.kind.reaches_room()
}

impl Registry {
    /// Dispatches durable events, oldest first, under one lock; older or
    /// repeated ids are ignored. A run of plain events for one chat walks the
    /// room once, queuing each connection's frames back to back, instead of
    /// once per event: a group commit's messages to one chat cost one walk.
    pub fn dispatch_all(&self, events: Vec<Arc<Event>>) {
        let mut inner = self.lock();
        let mut run: Vec<Arc<Event>> = Vec::new();
        for event in events {
            if !self.accept(&mut inner, &event) {
                continue;
            }
            let plain = is_plain(&event);
            let joins_run = plain
                && run.len() < DISPATCH_BATCH
                && run.last().is_none_or(|last| last.chat_id == event.chat_id);
            if !joins_run {
                self.route_run(&mut inner, &mut run);
            }
            if plain {
                run.push(event);
            } else {
                self.route(&mut inner, &event, None);
            }
        }
        self.route_run(&mut inner, &mut run);
    }

    /// Records a dispatched event (last id, replay cache, connections still
    /// reading their snapshot); false for an old or repeated id.
    pub(super) fn accept(&self, inner: &mut Inner, event: &Arc<Event>) -> bool {
        if event.id <= inner.last_event_id {
            return false;
        }
        inner.last_event_id = event.id;
        self.recent.push(event.clone());
        self.recent.forget_old_versions(event);
        let pending: Vec<ConnId> = inner.pending.iter().copied().collect();
        for id in pending {
            let overflow = match inner.conns.get_mut(&id).and_then(|c| c.pending.as_mut()) {
                Some(buf) => {
                    buf.push(event.clone());
                    buf.len() > PENDING_LIMIT
                }
                None => false,
            };
            if overflow {
                self.kill_locked(inner, id, SLOW_CONSUMER);
            }
        }
        true
    }

    /// Delivers a run of plain events for one chat (see [`is_plain`]) to its
    /// room, a connection's frames back to back; empties `run`. A connection
    /// that cannot take a frame gets none after it: it is closed as slow.
    pub(super) fn route_run(&self, inner: &mut Inner, run: &mut Vec<Arc<Event>>) {
        let Some(chat) = run.first().and_then(|e| e.chat_id) else {
            return;
        };
        let mut slow = Vec::new();
        if let Some(room) = inner.rooms.get(&chat) {
            let mut delivered = 0;
            for outbox in room.values() {
                for event in run.iter().filter(|e| outbox.awaits(e)) {
                    if !self.offer(outbox, &event.frame) {
                        slow.push(outbox.id);
                        break;
                    }
                    delivered += 1;
                }
            }
            self.events_delivered
                .fetch_add(delivered, Ordering::Relaxed);
        }
        run.clear();
        self.kill_slow(inner, slow);
    }

    /// Applies an event's membership effects and delivers it — to every
    /// subscriber, or (`only`) to one connection being activated.
    pub(super) fn route(&self, inner: &mut Inner, event: &Event, only: Option<ConnId>) {
        let Some(chat) = event.chat_id else { return };
        let addressed: Vec<ConnId> = event
            .user_ids
            .iter()
            .flat_map(|u| inner.users.get(u).into_iter().flatten().copied())
            .filter(|id| only.is_none_or(|o| o == *id) && !inner.pending.contains(id))
            .collect();
        let membership = event.kind.membership();
        if membership == Membership::Subscribes {
            for &id in &addressed {
                if let Some(conn) = inner.conns.get_mut(&id) {
                    conn.member_of.insert(chat);
                    conn.paused.remove(&chat);
                    let outbox = conn.outbox.clone();
                    inner.rooms.entry(chat).or_default().insert(id, outbox);
                }
            }
        }
        // The listener may dispatch an event committed before a connection's
        // snapshot after activating it: its membership effect is already in the
        // snapshot (re-applying it is harmless), but delivering it would be a
        // duplicate, hence `awaits`.
        let frame = &event.frame;
        let mut slow = self.offer_all(
            addressed
                .iter()
                .filter_map(|id| inner.conns.get(id))
                .map(|c| &*c.outbox)
                .filter(|o| o.awaits(event)),
            frame,
        );
        if event.kind.reaches_room()
            && let Some(room) = inner.rooms.get(&chat)
        {
            let others = |o: &&Outbox| o.awaits(event) && !addressed.contains(&o.id);
            slow.extend(match only {
                Some(id) => self.offer_all(
                    room.get(&id).map(|o| &**o).into_iter().filter(others),
                    frame,
                ),
                None => self.offer_all(room.values().map(|o| &**o).filter(others), frame),
            });
        }
        self.kill_slow(inner, slow);
        // A chat_deleted event addresses every member, paused connections included.
        if membership != Membership::Unsubscribes {
            return;
        }
        for id in addressed {
            if let Some(conn) = inner.conns.get_mut(&id) {
                conn.member_of.remove(&chat);
                conn.paused.remove(&chat);
            }
            unsubscribe_room(&mut inner.rooms, chat, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::ws::event::Frame;
    use crate::ws::registry::tests::{activation, addressed, event, frames, received, registry};
    use tokio::sync::mpsc;

    #[test]
    fn a_batch_reaches_each_subscriber_in_id_order_with_joins_applied_in_between() {
        let r = registry(0);
        let mut a = r.register(1, 0);
        let mut b = r.register(2, 0);
        assert!(r.activate(a.id, &activation(&[1, 2], 0)));
        assert!(r.activate(b.id, &activation(&[1], 0)));

        r.dispatch_all(vec![
            event(1, 1),
            event(2, 1),
            addressed(3, 2, EventKind::MemberAdded, vec![2]),
            event(4, 2),
            event(5, 1),
            event(6, 2),
        ]);

        assert_eq!(received(&mut a.rx), frames(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(received(&mut b.rx), frames(&[1, 2, 3, 4, 5, 6]));
        assert!(r.is_member(b.id, 2), "the join took effect");
    }

    #[test]
    fn a_batch_skips_events_a_subscriber_has_from_its_snapshot() {
        let r = registry(0);
        let mut a = r.register(1, 0);
        assert!(r.activate(a.id, &activation(&[1], 2)));

        r.dispatch_all((1..=4).map(|id| event(id, 1)).collect());

        assert_eq!(received(&mut a.rx), frames(&[3, 4]));
    }

    #[test]
    fn a_subscriber_too_slow_for_a_batch_gets_nothing_after_the_frame_it_missed() {
        // A 100-byte queue: event 2's frame does not fit, event 3's would.
        let r = Registry::new(16, 100, 0, mpsc::unbounded_channel().0);
        let mut slow = r.register(1, 0);
        assert!(r.activate(slow.id, &activation(&[1], 0)));
        let big = Arc::new(Event {
            frame: Frame::from(format!(
                "{{\"event_id\":2,\"pad\":\"{}\"}}",
                "x".repeat(100)
            )),
            ..Arc::into_inner(event(2, 1)).expect("sole owner")
        });

        r.dispatch_all(vec![event(1, 1), big, event(3, 1)]);

        assert_eq!(
            received(&mut slow.rx),
            frames(&[1]),
            "no gap: nothing after 2"
        );
        assert_eq!(*slow.kill.borrow(), Some(SLOW_CONSUMER));
    }
}
