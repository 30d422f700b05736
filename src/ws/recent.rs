//! The replay cache: a node's latest dispatched events, with consecutive
//! ids, up to a byte budget. A client resuming with `since` is replayed
//! from here when the events it missed are all still held, instead of from
//! the log (where a reconnect storm makes PostgreSQL build every missed
//! frame once per client).

use super::event::{Event, Frame};
use crate::events::EventKind;
use crate::message_json::{SENDER_FIELDS, reply_preview};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

pub struct ReplayCache {
    held: RwLock<Held>,
    /// The byte budget; 0 holds nothing.
    limit: usize,
}

#[derive(Default)]
struct Held {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl ReplayCache {
    pub fn new(limit: usize) -> ReplayCache {
        ReplayCache {
            held: RwLock::new(Held::default()),
            limit,
        }
    }

    /// Holds `event`, the newest dispatched; the oldest go when the budget is spent.
    pub fn push(&self, event: Arc<Event>) {
        if self.limit == 0 {
            return;
        }
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        held.push(event, self.limit);
    }

    /// Keeps no old text of the message `latest` (an edit or a deletion) is
    /// about: its earlier held events are rewritten with the current text,
    /// or, once it is deleted, held without a frame (replay skips them; so
    /// are the other events that follow it, its reactions), and
    /// held replies to it show its current preview (or that it is deleted),
    /// as the log would build them now.
    pub fn forget_old_versions(&self, latest: &Event) {
        let (Some(message_id), true) = (latest.message_id, self.limit > 0) else {
            return;
        };
        let current: Option<Value> = match latest.kind {
            EventKind::MessageUpdated => serde_json::from_str(latest.frame.as_str()).ok(),
            EventKind::MessageDeleted => None,
            _ => return,
        };
        let reply_to = reply_to_now(message_id, current.as_ref());
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        let Held { events, bytes } = &mut *held;
        for slot in events.iter_mut() {
            if slot.id >= latest.id || slot.frame.is_empty() {
                continue;
            }
            let own = slot.message_id == Some(message_id);
            let frame = match &current {
                None if own && slot.kind.follows_message() => Frame::from_static(""),
                Some(frame) if own && slot.kind.shows_message() => {
                    let mut frame = frame.clone();
                    frame["type"] = Value::from(slot.kind.as_str());
                    frame["payload"]["event_id"] = Value::from(slot.id);
                    Frame::from(frame.to_string())
                }
                _ if slot.reply_to_id == Some(message_id) && slot.kind.shows_message() => {
                    let Ok(mut frame) = serde_json::from_str::<Value>(slot.frame.as_str()) else {
                        continue;
                    };
                    frame["payload"]["reply_to"] = reply_to.clone();
                    Frame::from(frame.to_string())
                }
                _ => continue,
            };
            reframe(slot, frame, bytes);
        }
    }

    /// Keeps no name of a deleted account: the held frames of its messages
    /// are rewritten without a sender, and those of replies to them without
    /// the original's sender, as the log builds them now (the messages stay,
    /// their sender null). Deletions are rare, so the held
    /// frames are searched here rather than indexed by sender on every push;
    /// only those containing the id's digits are parsed.
    pub fn forget_sender(&self, user_id: i64) {
        if self.limit == 0 {
            return;
        }
        let digits = user_id.to_string();
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        let Held { events, bytes } = &mut *held;
        for slot in events.iter_mut() {
            let candidate = matches!(slot.kind, EventKind::Message | EventKind::MessageUpdated)
                && slot.frame.as_str().contains(&digits);
            if !candidate {
                continue;
            }
            let Ok(mut frame) = serde_json::from_str::<Value>(slot.frame.as_str()) else {
                continue;
            };
            let payload = &mut frame["payload"];
            let sent = payload["sender_id"] == user_id;
            let answers = payload["reply_to"]["sender_id"] == user_id;
            if !sent && !answers {
                continue;
            }
            if sent {
                for field in SENDER_FIELDS {
                    payload[field] = Value::Null;
                }
            }
            if answers {
                payload["reply_to"]["sender_id"] = Value::Null;
            }
            reframe(slot, Frame::from(frame.to_string()), bytes);
        }
    }

    /// Drops every held event. A node's listener that was away may have
    /// missed live signals that made some of them stale (an account's
    /// deletion is announced, never logged); replays read the log, which
    /// builds frames as they are now, until the cache fills again.
    pub fn clear(&self) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        *held = Held::default();
    }

    /// Whether event `after + 1` is held, so a replay from `after` starts in memory.
    pub fn holds_after(&self, after: i64) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        match (held.events.front(), held.events.back()) {
            (Some(first), Some(last)) => first.id <= after + 1 && after < last.id,
            _ => false,
        }
    }

    /// How many of the newest logged events a starting node should read to
    /// fill its budget (events average a few hundred bytes).
    pub fn preload_estimate(&self) -> usize {
        (self.limit / 384).min(100_000)
    }

    /// Holds `events` (consecutive, oldest first, all at or below the last
    /// dispatched id) as the oldest held events, within the budget.
    pub fn preload(&self, events: Vec<Event>) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if !held.events.is_empty() {
            return;
        }
        for event in events {
            held.push(Arc::new(event), self.limit);
        }
    }

    /// Frames of held events in `(after, upto]` for which `wanted` holds, at
    /// most `limit` of them, with the id of the last event looked at (resume
    /// from there). `None` when event `after + 1` is not held: read the log.
    pub fn page(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
        wanted: impl Fn(&Event) -> bool,
    ) -> Option<(Vec<(i64, Frame)>, i64)> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let first = held.events.front()?.id;
        if after + 1 < first || after >= held.events.back()?.id {
            return None;
        }
        let mut frames = Vec::new();
        let mut scanned = after;
        for event in held.events.range((after + 1 - first) as usize..) {
            if event.id > upto || frames.len() == limit {
                break;
            }
            scanned = event.id;
            // An empty frame is a deleted message's event: nothing to replay.
            if !event.frame.is_empty() && wanted(event) {
                frames.push((event.id, event.frame.clone()));
            }
        }
        Some((frames, scanned))
    }
}

/// Replaces the frame of held event `slot`, keeping `bytes` (the held total) true.
fn reframe(slot: &mut Arc<Event>, frame: Frame, bytes: &mut usize) {
    *bytes = *bytes + frame.len() - slot.frame.len();
    *slot = Arc::new(Event {
        frame,
        ..(**slot).clone()
    });
}

/// What a reply to message `id` shows once the message is as `current`
/// (its `message_updated` frame), or deleted (`None`): as
/// `message_json::message_json_sql` builds it.
fn reply_to_now(id: i64, current: Option<&Value>) -> Value {
    match current {
        Some(frame) => {
            let payload = &frame["payload"];
            let content = payload["content"].as_str().unwrap_or_default();
            json!({"id": id, "sender_id": payload["sender_id"],
                   "content": reply_preview(content), "deleted": false})
        }
        None => json!({"id": id, "sender_id": null, "content": null, "deleted": true}),
    }
}

impl Held {
    fn push(&mut self, event: Arc<Event>, limit: usize) {
        // A hole (events pruned before this node saw them) would make the
        // held range lie about what it covers: start over after it.
        if self
            .events
            .back()
            .is_some_and(|last| last.id + 1 != event.id)
        {
            self.events.clear();
            self.bytes = 0;
        }
        self.bytes += event.held_bytes();
        self.events.push_back(event);
        while self.bytes > limit {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.held_bytes(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, chat_id: i64) -> Arc<Event> {
        Arc::new(Event {
            id,
            chat_id: Some(chat_id),
            kind: EventKind::Message,
            user_ids: Vec::new(),
            message_id: None,
            reply_to_id: None,
            frame: Frame::from(format!("{{\"event_id\":{id}}}")),
        })
    }

    fn cache_of(limit: usize, ids: impl IntoIterator<Item = (i64, i64)>) -> ReplayCache {
        let cache = ReplayCache::new(limit);
        for (id, chat) in ids {
            cache.push(event(id, chat));
        }
        cache
    }

    fn ids(page: Option<(Vec<(i64, Frame)>, i64)>) -> Option<(Vec<i64>, i64)> {
        page.map(|(frames, through)| (frames.into_iter().map(|(id, _)| id).collect(), through))
    }

    #[test]
    fn held_events_serve_a_range_they_cover_in_pages() {
        let cache = cache_of(1 << 20, (1..=10).map(|id| (id, id % 2)));
        let odd = |e: &Event| e.chat_id == Some(1);
        assert_eq!(ids(cache.page(2, 9, 100, odd)), Some((vec![3, 5, 7, 9], 9)));
        // A full page stops at its last frame; the next page resumes there.
        assert_eq!(ids(cache.page(0, 10, 2, odd)), Some((vec![1, 3], 3)));
        // Up to the newest held event; the rest is the log's.
        assert_eq!(ids(cache.page(8, 12, 100, odd)), Some((vec![9], 10)));
        assert_eq!(ids(cache.page(10, 12, 100, odd)), None);
    }

    #[test]
    fn the_oldest_events_go_first_when_the_budget_is_spent() {
        let one = event(1, 1).held_bytes();
        let cache = cache_of(3 * one, (1..=5).map(|id| (id, 1)));
        let all = |_: &Event| true;
        assert_eq!(ids(cache.page(1, 5, 100, all)), None, "event 2 is gone");
        assert_eq!(ids(cache.page(2, 5, 100, all)), Some((vec![3, 4, 5], 5)));
    }

    #[test]
    fn a_hole_in_the_ids_drops_what_came_before_it() {
        let cache = cache_of(1 << 20, [1, 2, 3, 7, 8].map(|id| (id, 1)));
        let all = |_: &Event| true;
        assert_eq!(ids(cache.page(2, 8, 100, all)), None);
        assert_eq!(ids(cache.page(6, 8, 100, all)), Some((vec![7, 8], 8)));
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let cache = cache_of(0, [(1, 1)]);
        assert_eq!(ids(cache.page(0, 1, 100, |_| true)), None);
    }

    fn message_event(id: i64, kind: EventKind, message_id: i64, content: &str) -> Arc<Event> {
        Arc::new(Event {
            id,
            chat_id: Some(1),
            kind,
            user_ids: Vec::new(),
            message_id: Some(message_id),
            reply_to_id: None,
            frame: Frame::from(
                serde_json::json!({"type": kind.as_str(), "payload":
                    {"event_id": id, "message_id": message_id, "content": content}})
                .to_string(),
            ),
        })
    }

    fn held_frames(cache: &ReplayCache) -> Vec<String> {
        let (frames, _) = cache.page(0, i64::MAX, 100, |_| true).unwrap();
        frames.into_iter().map(|(_, f)| f.to_string()).collect()
    }

    #[test]
    fn a_deleted_account_is_no_longer_named_by_its_held_messages() {
        let sent_by = |id: i64, sender: i64, name: &str| {
            Arc::new(Event {
                frame: Frame::from(
                    serde_json::json!({"type": "message", "payload": {"event_id": id,
                        "message_id": id, "content": "hi", "sender_id": sender,
                        "username": name, "display_name": name}})
                    .to_string(),
                ),
                ..(*message_event(id, EventKind::Message, id, "hi")).clone()
            })
        };
        let cache = ReplayCache::new(1 << 20);
        cache.push(sent_by(1, 5, "bob"));
        // Its digits contain bob's: only the parsed sender_id counts.
        cache.push(sent_by(2, 55, "carol"));
        cache.push(event(3, 1));

        cache.forget_sender(5);

        let frames: Vec<Value> = held_frames(&cache)
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        for field in SENDER_FIELDS {
            assert!(frames[0]["payload"][field].is_null(), "{}", frames[0]);
        }
        assert_eq!(frames[0]["payload"]["content"], "hi");
        assert_eq!(frames[1]["payload"]["sender_id"], 55);
        assert_eq!(frames[1]["payload"]["username"], "carol");
        assert_eq!(frames[2], serde_json::json!({"event_id": 3}));
    }

    #[test]
    fn an_edit_rewrites_the_held_versions_and_a_deletion_drops_them() {
        let cache = ReplayCache::new(1 << 20);
        cache.push(message_event(1, EventKind::Message, 7, "first"));
        cache.push(message_event(2, EventKind::Message, 8, "other"));
        let edit = message_event(3, EventKind::MessageUpdated, 7, "second");
        cache.push(edit.clone());

        cache.forget_old_versions(&edit);

        let frames = held_frames(&cache);
        assert!(frames[0].contains("second") && frames[0].contains("\"type\":\"message\""));
        assert!(frames[0].contains("\"event_id\":1"), "{}", frames[0]);
        assert!(frames[1].contains("other"));
        assert!(!frames.iter().any(|f| f.contains("first")), "{frames:?}");

        let deletion = Arc::new(Event {
            id: 4,
            chat_id: Some(1),
            kind: EventKind::MessageDeleted,
            user_ids: Vec::new(),
            message_id: Some(7),
            reply_to_id: None,
            frame: Frame::from("{\"type\":\"message_deleted\"}"),
        });
        cache.push(deletion.clone());
        cache.forget_old_versions(&deletion);

        let frames = held_frames(&cache);
        assert_eq!(
            frames.len(),
            2,
            "only the other message and the deletion: {frames:?}"
        );
        assert!(!frames.iter().any(|f| f.contains("second")), "{frames:?}");
    }

    /// A held reply (event `id`, message `id`) to message 7 by user 5.
    fn reply_to_seven(id: i64) -> Arc<Event> {
        Arc::new(Event {
            reply_to_id: Some(7),
            frame: Frame::from(
                serde_json::json!({"type": "message", "payload": {"event_id": id,
                    "message_id": id, "content": "ok", "sender_id": 6,
                    "reply_to": {"id": 7, "sender_id": 5, "content": "first", "deleted": false}}})
                .to_string(),
            ),
            ..(*message_event(id, EventKind::Message, id, "ok")).clone()
        })
    }

    fn reply_to_of(cache: &ReplayCache, at: usize) -> Value {
        let frame: Value = serde_json::from_str(&held_frames(cache)[at]).unwrap();
        frame["payload"]["reply_to"].clone()
    }

    #[test]
    fn held_replies_show_their_original_as_it_is_now() {
        let cache = ReplayCache::new(1 << 20);
        cache.push(message_event(1, EventKind::Message, 7, "first"));
        cache.push(reply_to_seven(2));
        let long = "é".repeat(250);
        let edit = message_event(3, EventKind::MessageUpdated, 7, &long);
        cache.push(edit.clone());

        cache.forget_old_versions(&edit);

        let preview: String = long.chars().take(200).collect();
        assert_eq!(reply_to_of(&cache, 1)["content"], preview.as_str());
        assert_eq!(reply_to_of(&cache, 1)["deleted"], false);

        let deletion = Arc::new(Event {
            kind: EventKind::MessageDeleted,
            frame: Frame::from("{\"type\":\"message_deleted\"}"),
            ..(*message_event(4, EventKind::MessageDeleted, 7, "")).clone()
        });
        cache.push(deletion.clone());
        cache.forget_old_versions(&deletion);

        assert_eq!(
            reply_to_of(&cache, 0),
            serde_json::json!({"id": 7, "sender_id": null, "content": null, "deleted": true})
        );
    }

    #[test]
    fn a_deleted_account_is_no_longer_named_by_held_replies_to_its_messages() {
        let cache = ReplayCache::new(1 << 20);
        cache.push(reply_to_seven(1));

        cache.forget_sender(5);

        assert_eq!(reply_to_of(&cache, 0)["sender_id"], Value::Null);
        assert_eq!(reply_to_of(&cache, 0)["content"], "first");
    }
}
