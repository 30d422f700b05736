// Client state: chats, their timelines, presence, typing, the outbox.
// Every source (REST pages, replayed and live frames, acks) goes through here,
// and everything is keyed (message id, client_id, chat id) so that seeing the
// same thing twice changes nothing.

const TYPING_MS = 4000;

export function normalizeMessage(m) {
  const id = m.message_id ?? m.id;
  return {
    id,
    chatId: m.chat_id,
    senderId: m.sender_id,
    username: m.sender?.username ?? m.username ?? null,
    displayName: m.sender?.display_name ?? m.display_name ?? null,
    content: m.content,
    edited: !!m.is_edited,
    clientId: m.client_id ?? null,
    createdAt: new Date(m.created_at ?? m.timestamp ?? Date.now()),
    replyTo: m.reply_to ?? null, // {id, sender_id, content, deleted}
    mentions: m.mentions ?? [],
    // [{emoji, count, me}] from REST; frames carry none (undefined: keep what is held).
    reactions: m.reactions?.map((r) => ({ ...r })),
  };
}

/** A message replacing `old`: a frame's copy keeps the reactions held (and what is known of how current they are). */
function merged(m, old) {
  if (m.reactions) return m;
  return { ...m, reactions: old?.reactions || [], known: old?.known, l0: old?.l0 };
}

function newTimeline() {
  return {
    msgs: new Map(), // id → message
    pending: new Map(), // client_id → {clientId, chatId, content, createdAt, failed, error}
    notes: [], // system notes heard live: {key, text, afterId, createdAt}
    deleted: new Set(),
    readBy: new Map(), // user id → last message id they read (from live `read` frames)
    typing: new Map(), // user id → {name, until}
    loaded: false,
    hasMore: true,
    loading: false,
    version: 0,
  };
}

export class Store {
  constructor(me) {
    this.me = me;
    this.chats = new Map();
    this.timelines = new Map();
    this.presence = new Map(); // user id → {online, lastSeen}
    this.users = new Map(); // user id → {username, displayName}
    this.pins = new Map(); // chat id → pinned messages, most recently pinned first (once loaded)
    this.openId = null;
    this.isReading = () => false; // set by the view: is this chat open, visible, scrolled to the end?
    this.subs = new Set();
    this.outboxKey = `chatapp.outbox.${me.id}`;
    // Reactions over REST carry counts, not up to which event: a copy asked for when
    // the socket had seen up to event L0 counts every event ≤ L0, and maybe some later
    // ones whose frames are still to come. So each REST copy keeps its L0 (`m.l0`),
    // and the frames heard while a read is on its way are gone over again once it lands.
    this.eventId = () => null; // set by main.js: the socket's highest event_id seen
    this.fetchMessage = null; // set by main.js: GET one message, as I see it
    this.reads = []; // the L0 of each REST read of messages on its way
    this.heard = []; // reaction frames heard since the oldest of them was asked for: {p, added}
    this.fetching = new Set(); // message ids being read again (one request at a time each)
  }

  /** Before a REST read of messages: its L0, to hand to what stores its answer, then to readDone. */
  reading() {
    const l0 = this.eventId() ?? 0;
    this.reads.push(l0);
    return l0;
  }

  /** After its answer is stored (or it failed): frames no read on its way can miss are let go. */
  readDone(l0) {
    const i = this.reads.indexOf(l0);
    if (i >= 0) this.reads.splice(i, 1);
    const oldest = Math.min(...this.reads);
    this.heard = this.heard.filter((f) => f.p.event_id > oldest);
  }

  on(fn) {
    this.subs.add(fn);
  }

  changed(what) {
    for (const fn of this.subs) fn(what);
  }

  // ---- chats ----

  sortedChats() {
    return [...this.chats.values()].sort((a, b) => b.activity - a.activity || b.id - a.id);
  }

  title(chat) {
    if (!chat) return '';
    if (chat.isGroup) return chat.name || 'Unnamed group';
    const other = this.partner(chat);
    return other ? other.display_name || other.username : chat.name || 'Direct message';
  }

  partner(chat) {
    return chat.isGroup ? null : (chat.members || []).find((m) => m.user_id !== this.me.id) || null;
  }

  myMembership(chat) {
    return (chat?.members || []).find((m) => m.user_id === this.me.id);
  }

  /** A chat from REST or an event; `fresh` marks the server's own view of my unread count. */
  upsertChat(c, { activity, fresh = true } = {}) {
    const old = this.chats.get(c.id);
    const chat = {
      ...(old || { unread: 0, lastReadId: null, maxMsgId: 0, preview: null, activity: Date.now() }),
      id: c.id,
      name: c.name,
      isGroup: c.is_group,
      creatorId: c.creator_id,
      members: c.members || old?.members || null,
    };
    if (fresh) {
      chat.unread = c.unread_count ?? chat.unread;
      chat.mentions = c.mention_count ?? chat.mentions ?? 0;
      chat.lastReadId = c.last_read_message_id ?? chat.lastReadId;
    }
    if (activity != null) chat.activity = activity;
    for (const m of chat.members || []) this.users.set(m.user_id, { username: m.username, displayName: m.display_name });
    this.chats.set(c.id, chat);
    this.changed('chats');
    return chat;
  }

  /** The whole list, freshly read: chats not in it are gone. */
  replaceChats(list) {
    const now = Date.now();
    const keep = new Set(list.map((c) => c.id));
    for (const id of this.chats.keys()) if (!keep.has(id)) this.removeChat(id);
    list.forEach((c, i) => this.upsertChat(c, { activity: now - i }));
  }

  removeChat(id) {
    this.chats.delete(id);
    this.timelines.delete(id);
    this.pins.delete(id);
    this.changed('chats');
  }

  setPreview(chatId, m) {
    const chat = this.chats.get(chatId);
    if (!chat || !m) return;
    if (m.id >= (chat.maxMsgId || 0)) {
      chat.maxMsgId = m.id;
      chat.preview = m;
    }
    this.changed('chats');
  }

  membersChanged(chatId, fn) {
    const chat = this.chats.get(chatId);
    if (!chat?.members) return;
    chat.members = fn(chat.members);
    for (const m of chat.members) this.users.set(m.user_id, { username: m.username, displayName: m.display_name });
    this.changed('chats');
    this.touch(chatId);
  }

  // ---- timelines ----

  timeline(chatId) {
    let t = this.timelines.get(chatId);
    if (!t) this.timelines.set(chatId, (t = newTimeline()));
    return t;
  }

  touch(chatId) {
    const t = this.timelines.get(chatId);
    if (t) t.version++;
    this.changed(`chat:${chatId}`);
  }

  /** The newest page, freshly read: replaces what was held (pending sends stay, and
   * `keep`: messages that came in while it was read, which it may not have). */
  resetTimeline(chatId, page, limit, l0, keep = []) {
    const t = this.timeline(chatId);
    t.msgs.clear();
    for (const m of keep) if (!t.deleted.has(m.id)) t.msgs.set(m.id, m);
    t.loaded = true;
    t.hasMore = page.length >= limit;
    this.addPage(chatId, page, l0);
  }

  /** A page read over REST, asked for at event `l0` (see reading()). */
  addPage(chatId, page, l0) {
    const t = this.timeline(chatId);
    for (const raw of page) {
      const m = normalizeMessage(raw);
      this.hold(t, m, l0);
      this.noteUser(m);
    }
    if (page.length) this.setPreview(chatId, normalizeMessage(page[0]));
    this.touch(chatId);
  }

  sortedMessages(chatId) {
    const t = this.timelines.get(chatId);
    return t ? [...t.msgs.values()].sort((a, b) => a.id - b.id) : [];
  }

  noteUser(m) {
    if (m.senderId != null && m.username) this.users.set(m.senderId, { username: m.username, displayName: m.displayName });
  }

  displayName(userId) {
    if (userId === this.me.id) return this.me.display_name || this.me.username;
    const u = this.users.get(userId);
    return u ? u.displayName || u.username : 'someone';
  }

  // ---- frames ----

  onMessage(p) {
    const m = normalizeMessage(p);
    const chat = this.chats.get(m.chatId);
    const t = this.timelines.get(m.chatId);
    this.noteUser(m);
    if (t?.deleted.has(m.id)) return;
    const isNew = chat ? m.id > (chat.maxMsgId || 0) : true;
    if (t) {
      t.msgs.set(m.id, merged(m, t.msgs.get(m.id)));
      if (m.clientId) t.pending.delete(m.clientId);
      t.typing.delete(m.senderId);
    }
    if (m.clientId && m.senderId === this.me.id) this.forgetOutbox(m.clientId);
    if (chat && isNew) {
      chat.activity = Date.now();
      if (m.senderId !== this.me.id && !this.isReading(m.chatId)) {
        chat.unread++;
        if (m.mentions.includes(this.me.id)) chat.mentions++;
      }
    }
    this.setPreview(m.chatId, m);
    this.touch(m.chatId);
  }

  onMessageUpdated(p) {
    const m = normalizeMessage(p);
    const t = this.timelines.get(m.chatId);
    if (t?.msgs.has(m.id)) t.msgs.set(m.id, merged(m, t.msgs.get(m.id)));
    this.quotes(m.chatId, m.id, (q) => ({ ...q, content: m.content.slice(0, 200) }));
    this.pinsChanged(m.chatId, (list) => list.map((p) => (p.id === m.id ? { ...p, content: m.content, edited: m.edited } : p)));
    const chat = this.chats.get(m.chatId);
    if (chat?.preview?.id === m.id) chat.preview = m;
    this.changed('chats');
    this.touch(m.chatId);
  }

  onMessageDeleted({ chat_id, message_id }) {
    const t = this.timeline(chat_id);
    t.deleted.add(message_id);
    t.msgs.delete(message_id);
    this.quotes(chat_id, message_id, (q) => ({ id: q.id, sender_id: null, content: null, deleted: true }));
    this.pinsChanged(chat_id, (list) => list.filter((p) => p.id !== message_id));
    const chat = this.chats.get(chat_id);
    if (chat?.preview?.id === message_id) {
      const rest = this.sortedMessages(chat_id);
      chat.preview = rest[rest.length - 1] || null;
    }
    this.changed('chats');
    this.touch(chat_id);
  }

  /** Rewrites the quotes of replies to message `id` (edited or deleted). */
  quotes(chatId, id, fn) {
    const t = this.timelines.get(chatId);
    if (!t) return;
    for (const [k, m] of t.msgs) if (m.replyTo?.id === id) t.msgs.set(k, { ...m, replyTo: fn(m.replyTo) });
  }

  /** A REST copy of a message, asked for at event `l0`, in place of what is held. */
  hold(t, m, l0) {
    if (t.deleted.has(m.id)) return;
    m.l0 = l0;
    t.msgs.set(m.id, m);
    // Frames heard since it was asked for may or may not be counted in it: judge them against it.
    for (const f of this.heard) if (f.p.message_id === m.id && f.p.event_id > l0) this.reacted(f.p, f.added);
  }

  /** A reaction frame (or my own removal, without event_id, before its frame). */
  onReaction(p, added) {
    if (p.event_id != null && this.reads.length) this.heard.push({ p, added });
    this.reacted(p, added);
  }

  /** Applies a reaction once per (user, emoji) state change, whatever replays or REST copies came first. */
  reacted({ chat_id, message_id, user_id, emoji, event_id }, added) {
    const m = this.timelines.get(chat_id)?.msgs.get(message_id);
    if (!m) return; // not held: REST brings its counts when it is loaded
    if (this.fetching.has(message_id)) return; // being read again: its answer is judged with this frame
    if (event_id <= m.l0) return; // counted in the REST copy held (false when either is unknown)
    const list = m.reactions || (m.reactions = []);
    let r = list.find((x) => x.emoji === emoji);
    m.known ||= new Map(); // emoji → (someone else's id → reacted), as the frames since the REST copy told
    const users = m.known.get(emoji) || new Map();
    m.known.set(emoji, users);
    const mine = user_id === this.me.id;
    let had = mine ? !!r?.me : users.get(user_id);
    if (had === undefined) {
      // Someone else's first frame since the copy, which may count this event or not;
      // it does not if it counts no one else for that emoji but those that frames since
      // added (and one built from frames counts frames only). Otherwise, no guess: read it again.
      const since = [...users.values()].filter(Boolean).length;
      if (m.l0 !== undefined && r && r.count > (r.me ? 1 : 0) + since) return this.refetch(m);
      had = false;
    }
    if (!mine) users.set(user_id, added);
    if (had === added) return;
    if (added) {
      if (!r) list.push((r = { emoji, count: 0, me: false }));
      r.count++;
    } else if (r) r.count--;
    if (r && user_id === this.me.id) r.me = added;
    m.reactions = list.filter((x) => x.count > 0);
    this.touch(chat_id);
  }

  /** A REST copy of one message, asked for at event `l0`: the server's counts replace what is held. */
  replaceMessage(raw, l0) {
    const m = normalizeMessage(raw);
    const t = this.timelines.get(m.chatId);
    if (t?.msgs.has(m.id)) this.hold(t, m, l0);
    this.touch(m.chatId);
  }

  /** Reads a message again whose counts a frame left uncertain. One request at a time:
   * frames heard meanwhile are judged against its answer (and may ask once more). */
  refetch(m) {
    if (this.fetching.has(m.id) || !this.fetchMessage) return;
    this.fetching.add(m.id);
    const l0 = this.reading();
    this.fetchMessage(m.id)
      .then(
        (raw) => {
          this.fetching.delete(m.id);
          this.replaceMessage(raw, l0);
        },
        () => this.fetching.delete(m.id), // deleted (its frame follows) or offline: the next frame tries again
      )
      .finally(() => this.readDone(l0));
  }

  // ---- pins ----

  setPins(chatId, list) {
    this.pins.set(chatId, list.map((p) => ({ ...normalizeMessage(p), pinnedAt: new Date(p.pinned_at), pinnedBy: p.pinned_by })));
    this.changed('details');
    this.touch(chatId);
  }

  pinsChanged(chatId, fn) {
    const list = this.pins.get(chatId);
    if (!list) return;
    this.pins.set(chatId, fn(list));
    this.changed('details');
    this.touch(chatId);
  }

  pinnedIds(chatId) {
    return new Set((this.pins.get(chatId) || []).map((p) => p.id));
  }

  onSystem({ chat_id, message, event_id }) {
    const t = this.timelines.get(chat_id);
    if (!t) return;
    const msgs = this.sortedMessages(chat_id);
    t.notes.push({ key: `e${event_id}`, text: message, afterId: msgs.length ? msgs[msgs.length - 1].id : 0, createdAt: new Date() });
    this.touch(chat_id);
  }

  onTyping({ chat_id, user_id, username }) {
    if (user_id === this.me.id) return;
    const t = this.timeline(chat_id);
    const u = this.users.get(user_id);
    t.typing.set(user_id, { name: u?.displayName || u?.username || username, until: Date.now() + TYPING_MS });
    this.changed(`typing:${chat_id}`);
    setTimeout(() => this.changed(`typing:${chat_id}`), TYPING_MS + 50);
  }

  typingNames(chatId) {
    const t = this.timelines.get(chatId);
    if (!t) return [];
    const now = Date.now();
    for (const [id, v] of t.typing) if (v.until < now) t.typing.delete(id);
    return [...t.typing.values()].map((v) => v.name);
  }

  onRead({ chat_id, user_id, message_id }) {
    const chat = this.chats.get(chat_id);
    if (user_id === this.me.id) {
      // My marker moved in another tab.
      if (chat && message_id > (chat.lastReadId || 0)) {
        chat.lastReadId = message_id;
        if (message_id >= (chat.maxMsgId || 0)) chat.unread = chat.mentions = 0;
        this.changed('chats');
      }
      return;
    }
    const t = this.timeline(chat_id);
    if (message_id > (t.readBy.get(user_id) || 0)) t.readBy.set(user_id, message_id);
    this.touch(chat_id);
  }

  /** The server's answer to my read marker. */
  onReadAck({ chat_id, last_read_message_id, unread_count, mention_count }) {
    const chat = this.chats.get(chat_id);
    if (!chat) return;
    chat.lastReadId = last_read_message_id;
    chat.unread = unread_count;
    chat.mentions = mention_count ?? 0;
    this.changed('chats');
  }

  onPresence({ user_id, online, last_seen }) {
    this.presence.set(user_id, { online: !!online, lastSeen: last_seen ? new Date(last_seen) : null });
    this.changed('presence');
  }

  // ---- the outbox ----

  addPending(chatId, content, clientId = crypto.randomUUID(), createdAt = new Date(), replyTo = null) {
    const p = { clientId, chatId, content, createdAt, replyTo, failed: false, error: null };
    this.timeline(chatId).pending.set(clientId, p);
    this.saveOutbox();
    this.touch(chatId);
    return p;
  }

  pendingList() {
    const out = [];
    for (const t of this.timelines.values()) for (const p of t.pending.values()) if (!p.failed) out.push(p);
    return out.sort((a, b) => a.createdAt - b.createdAt);
  }

  /** The send was committed: show it as sent even before its `message` frame arrives. */
  ackPending(p, ack) {
    const t = this.timeline(p.chatId);
    t.pending.delete(p.clientId);
    if (!t.msgs.has(ack.message_id) && !t.deleted.has(ack.message_id)) {
      const m = {
        id: ack.message_id,
        chatId: p.chatId,
        senderId: this.me.id,
        username: this.me.username,
        displayName: this.me.display_name,
        content: p.content.trim(),
        edited: false,
        clientId: p.clientId,
        createdAt: p.createdAt,
        replyTo: p.replyTo,
        mentions: [],
        reactions: [],
      };
      t.msgs.set(m.id, m);
      const chat = this.chats.get(p.chatId);
      if (chat && m.id > (chat.maxMsgId || 0)) chat.activity = Date.now();
      this.setPreview(p.chatId, m);
    }
    this.forgetOutbox(p.clientId);
    this.touch(p.chatId);
  }

  failPending(p, error) {
    p.failed = true;
    p.error = error?.message || 'Not sent';
    this.saveOutbox();
    this.touch(p.chatId);
  }

  discardPending(p) {
    this.timeline(p.chatId).pending.delete(p.clientId);
    this.forgetOutbox(p.clientId);
    this.touch(p.chatId);
  }

  forgetOutbox(clientId) {
    this.saveOutbox(clientId);
  }

  /** Unsent messages survive a reload of the tab (sessionStorage, like the token). */
  saveOutbox(without) {
    const list = [];
    for (const t of this.timelines.values()) {
      for (const p of t.pending.values()) {
        if (p.clientId !== without) list.push({ clientId: p.clientId, chatId: p.chatId, content: p.content, createdAt: p.createdAt, replyTo: p.replyTo });
      }
    }
    try {
      if (list.length) sessionStorage.setItem(this.outboxKey, JSON.stringify(list));
      else sessionStorage.removeItem(this.outboxKey);
    } catch {
      /* storage full or disabled: the outbox lives in memory only */
    }
  }

  loadOutbox() {
    try {
      const list = JSON.parse(sessionStorage.getItem(this.outboxKey) || '[]');
      return list.map((p) => this.addPending(p.chatId, p.content, p.clientId, new Date(p.createdAt), p.replyTo));
    } catch {
      return [];
    }
  }
}
