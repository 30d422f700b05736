// Start-up, and the glue between the REST client (api.js), the socket
// (socket.js), the state (store.js) and the views (ui.js and the modules it
// uses); the sign-in form is in signin.js.
//
// A new feature of the API finds its place the same way each time: a REST call
// in api.js and an action below that calls it; a new server frame, a case in
// onFrame and a store method that keeps its state (the store tells the views
// what changed); what it shows, in the view that shows it: messages.js for
// anything on a message, details.js for the chat's panel, ui.js for the list
// and the header.

import { createApi } from './api.js';
import { Connection } from './socket.js';
import { Store, normalizeMessage } from './store.js';
import { View } from './ui.js';
import { wireNewChat } from './newchat.js';
import { wireSearch } from './search.js';
import { $ } from './dom.js';
import { session, showSignin, flashOnSignin } from './signin.js';

const PAGE = 50;
// Codes a send may succeed with later: it stays queued and is tried again.
// (`rate_limited` never gets here: the socket waits and re-sends by itself.)
const TRANSIENT = new Set(['database_unavailable', 'query_timeout', 'internal_error']);

let app = null; // {store, view, conn} while signed in

const api = createApi(
  () => session.token,
  () => signOut('Your session has ended. Please sign in again.', { keepOutbox: true }),
);

/** Leaves the app for the sign-in page; a reload gives a clean slate. */
function signOut(message, { keepOutbox = false } = {}) {
  if (!session.token) return;
  app?.conn.stop();
  if (!keepOutbox && app) sessionStorage.removeItem(app.store.outboxKey);
  session.clear();
  if (message) flashOnSignin(message);
  location.replace(location.pathname);
}

// ---- the app ----

function start() {
  const me = session.user;
  const store = new Store(me);
  const view = new View(store, actions);
  const conn = new Connection({
    token: session.token,
    onFrame: (f) => onFrame(f),
    onReady: (ready, resumed) => onReady(ready, resumed),
    onStatus: (st) => view.status(st),
    onAuthLost: (code) =>
      signOut(code === 4003 ? 'This account was deleted.' : 'Your session has ended. Please sign in again.', { keepOutbox: code !== 4003 }),
    checkAuth: () => api.me().then(() => true, (e) => (e.status === 401 ? false : null)),
  });
  app = { store, view, conn, resyncing: null, again: false };
  store.eventId = () => conn.lastEventId;
  store.fetchMessage = (id) => api.message(id);
  $('#app').hidden = false;
  $('#signout-btn').addEventListener('click', () => signOut(null));
  wireNewChat(createChat);
  wireSearch(view, (text, chatId) => api.search(text, chatId));
  window.addEventListener('hashchange', route);
  for (const p of store.loadOutbox()) submit(p);
  conn.start();
  // Show something even if the socket is slow to come up; `ready` reloads anyway.
  setTimeout(() => {
    if (!conn.ready && !store.chats.size) resync();
  }, 2500);
}

function route() {
  const m = /^#\/chat\/(\d+)$/.exec(location.hash);
  const id = m ? Number(m[1]) : null;
  const { store, view } = app;
  if (id != null && !store.chats.has(id)) {
    if (!store.loadedOnce) return; // the list is on its way; routed again when it lands
    history.replaceState(null, '', '#/');
    view.open(null);
    return;
  }
  const chat = view.open(id);
  if (chat) {
    const t = store.timeline(chat.id);
    if (!t.loaded && !t.loading) loadNewest(chat.id);
    if (!chat.members) refreshChat(chat.id);
    if (!store.pins.has(chat.id)) loadPins(chat.id);
  }
}

const actions = {
  navigate(id) {
    location.hash = id == null ? '#/' : `#/chat/${id}`;
  },
  reconnect: () => app.conn.retryNow(),
  typing: (chatId) => app.conn.notify('typing', { chat_id: chatId }),
  send(chatId, text, reply) {
    const replyTo = reply ? { id: reply.id, sender_id: reply.senderId, content: reply.content.slice(0, 200), deleted: false } : null;
    submit(app.store.addPending(chatId, text, undefined, undefined, replyTo));
  },
  async react(m, emoji, on) {
    const { store } = app;
    const l0 = store.reading();
    try {
      // Adding answers with the message as I see it; taking back, with 204.
      const fresh = await api.react(m.id, emoji, on);
      if (fresh) store.replaceMessage(fresh, l0);
      else store.onReaction({ chat_id: m.chatId, message_id: m.id, user_id: store.me.id, emoji }, false);
    } catch (e) {
      app.view.toast(`Could not react: ${e.message}`);
    } finally {
      store.readDone(l0);
    }
  },
  async pin(m, on) {
    try {
      await api.pin(m.chatId, m.id, on);
      await loadPins(m.chatId);
    } catch (e) {
      app.view.toast(e.code === 'not_chat_admin' ? 'Only admins can pin messages here.' : `Could not ${on ? 'pin' : 'unpin'}: ${e.message}`);
    }
  },
  retry(p) {
    p.failed = false;
    p.error = null;
    app.store.touch(p.chatId);
    submit(p);
  },
  discard: (p) => app.store.discardPending(p),
  async edit(m, content) {
    try {
      app.store.onMessageUpdated(await api.editMessage(m.id, content));
    } catch (e) {
      app.view.toast(`Could not edit: ${e.message}`);
    }
  },
  async del(m) {
    try {
      await api.deleteMessage(m.id);
      app.store.onMessageDeleted({ chat_id: m.chatId, message_id: m.id });
    } catch (e) {
      if (e.status === 404) app.store.onMessageDeleted({ chat_id: m.chatId, message_id: m.id });
      else app.view.toast(`Could not delete: ${e.message}`);
    }
  },
  async loadOlder(chatId) {
    const { store } = app;
    const t = store.timeline(chatId);
    const oldest = store.sortedMessages(chatId)[0];
    if (t.loading || !t.hasMore) return;
    if (!oldest) return loadNewest(chatId);
    t.loading = true;
    store.touch(chatId);
    const l0 = store.reading();
    try {
      const page = await api.history(chatId, { limit: PAGE, before_id: oldest.id });
      t.hasMore = page.length >= PAGE;
      store.addPage(chatId, page, l0);
    } catch (e) {
      app.view.toast(`Could not load older messages: ${e.message}`);
    } finally {
      store.readDone(l0);
      t.loading = false;
      store.touch(chatId);
    }
  },
  markRead(chatId, messageId) {
    const { conn, store } = app;
    const done = (marker) => store.onReadAck(marker);
    const viaRest = () => api.markRead(chatId, messageId).then(done, () => {});
    if (conn.ready) conn.request('read', { chat_id: chatId, message_id: messageId }).then((f) => done(f.payload), viaRest);
    else viaRest();
  },
  async rename(chatId, name) {
    try {
      app.store.upsertChat(await api.renameChat(chatId, name.trim()));
    } catch (e) {
      app.view.toast(`Could not rename: ${e.message}`);
    }
  },
  async addMembers(chatId, text) {
    try {
      const ids = await resolveUsernames(text.split(/[,\s]+/).map((u) => u.trim().replace(/^@/, '')).filter(Boolean));
      if (!ids.length) throw new Error('Enter one or more usernames.');
      app.store.upsertChat(await api.addMembers(chatId, ids));
      return true;
    } catch (e) {
      app.view.toast(e.message);
      return false;
    }
  },
  async removeMember(chatId, userId) {
    try {
      await api.removeMember(chatId, userId);
      await refreshChat(chatId);
    } catch (e) {
      app.view.toast(`Could not remove: ${e.message}`);
    }
  },
  async setAdmin(chatId, userId, isAdmin) {
    try {
      app.store.upsertChat(await api.setAdmin(chatId, userId, isAdmin));
    } catch (e) {
      app.view.toast(e.code === 'last_admin' ? 'A chat needs at least one admin.' : `Could not change the role: ${e.message}`);
    }
  },
  async leave(chatId) {
    try {
      await api.removeMember(chatId, app.store.me.id);
      gone(chatId, null);
    } catch (e) {
      app.view.toast(`Could not leave: ${e.message}`);
    }
  },
  async deleteChat(chatId) {
    try {
      await api.deleteChat(chatId);
      gone(chatId, null);
    } catch (e) {
      app.view.toast(`Could not delete the chat: ${e.message}`);
    }
  },
};

/** Queues a send on the socket; it is re-sent with its client_id until acknowledged. */
function submit(p) {
  app.conn.sendMessage(p.chatId, p.content, p.clientId, p.replyTo?.id).then(
    (ack) => app.store.ackPending(p, ack),
    (err) => {
      if (err.message === 'stopped') return;
      if (TRANSIENT.has(err.code)) setTimeout(() => submit(p), 2000);
      else app.store.failPending(p, err);
    },
  );
}

function gone(chatId, message) {
  const { store, view } = app;
  const was = store.chats.get(chatId);
  store.removeChat(chatId);
  if (view.openId === chatId) actions.navigate(null);
  if (message && was) view.toast(message.replace('%s', store.title(was)));
}

async function resolveUsernames(names) {
  const ids = [];
  const missing = [];
  for (const name of names) {
    const found = (await api.searchUsers(name)).find((u) => u.username.toLowerCase() === name.toLowerCase());
    if (found) ids.push(found.id);
    else missing.push(name);
  }
  if (missing.length) throw new Error(`No user named ${missing.join(', ')}.`);
  return ids;
}

async function createChat({ dm, name, usernames }) {
  const me = app.store.me;
  if (!usernames.length) throw new Error(dm ? 'Enter the username of the person to write to.' : 'Add at least one member.');
  if (dm && usernames.length !== 1) throw new Error('A direct message is with exactly one person.');
  if (!dm && !name) throw new Error('Give the group a name.');
  if (dm && usernames[0].toLowerCase() === me.username.toLowerCase()) throw new Error('Pick someone other than yourself.');
  const ids = await resolveUsernames(usernames);
  const chat = await api.createChat(dm ? { is_group: false, member_ids: ids } : { name, is_group: true, member_ids: ids });
  app.store.upsertChat(chat, { activity: Date.now() });
  app.store.loadedOnce = true;
  actions.navigate(chat.id);
}

// ---- server frames ----

function onFrame(f) {
  const { store } = app;
  const p = f.payload || {};
  switch (f.type) {
    case 'message':
      return store.onMessage(p);
    case 'message_updated':
      return store.onMessageUpdated(p);
    case 'message_deleted':
      return store.onMessageDeleted(p);
    case 'reaction_added':
    case 'reaction_removed':
      return store.onReaction(p, f.type === 'reaction_added');
    case 'message_pinned':
      // The frame names the message only: the list (with who pinned it, when) comes over REST.
      if (store.pins.has(p.chat_id)) loadPins(p.chat_id);
      return;
    case 'message_unpinned':
      store.pinsChanged(p.chat_id, (list) => list.filter((m) => m.id !== p.message_id));
      if (store.pins.has(p.chat_id)) loadPins(p.chat_id); // and drop an older load still on its way
      return;
    case 'typing':
      return store.onTyping(p);
    case 'read':
      return store.onRead(p);
    case 'presence':
      return store.onPresence(p);
    case 'presence_snapshot':
      return (p.users || []).forEach((u) => store.onPresence(u));
    case 'chat_created':
      store.upsertChat(p, { activity: Date.now(), fresh: !store.chats.has(p.id) && p.creator_id === store.me.id });
      return route();
    case 'chat_updated':
      // The payload is the chat as the actor sees it: their unread count is not mine.
      return store.upsertChat(p, { fresh: false });
    case 'chat_deleted':
      return gone(p.chat_id, '%s was deleted.');
    case 'member_added':
      return store.membersChanged(p.chat_id, (ms) => [...ms.filter((m) => !p.members.some((n) => n.user_id === m.user_id)), ...p.members]);
    case 'member_removed':
      if (p.user_id === store.me.id) return gone(p.chat_id, p.removed_by === store.me.id ? null : 'You were removed from %s.');
      return store.membersChanged(p.chat_id, (ms) => ms.filter((m) => m.user_id !== p.user_id));
    case 'system':
      store.onSystem(p);
      // Some changes (an admin promoted when the last one left) come only as a note.
      if (store.chats.get(p.chat_id)?.members) refreshChatSoon(p.chat_id);
      return;
    case 'error':
      console.warn('server error frame', p);
  }
}

function onReady(ready, resumed) {
  const { store } = app;
  if (!resumed) return resync();
  // Resumed: the replay brings every change; still make sure the chat list
  // matches the server's (a chat joined or left while away).
  const ids = new Set(ready.chat_ids);
  for (const id of store.chats.keys()) if (!ids.has(id)) store.removeChat(id);
  for (const id of ids) if (!store.chats.has(id)) refreshChat(id);
}

/** Reloads the chat list, previews and the open chat over REST (after a `ready` that replayed nothing). */
async function resync() {
  if (app.resyncing) {
    app.again = true;
    return app.resyncing;
  }
  app.resyncing = (async () => {
    const { store, view } = app;
    try {
      const list = [];
      for (let offset = 0; ; offset += 100) {
        const page = await api.chats(offset);
        list.push(...page);
        if (page.length < 100 || offset >= 900) break;
      }
      store.replaceChats(list);
      store.loadedOnce = true;
      store.pins.clear(); // read again when a chat opens
      for (const [id, t] of store.timelines) {
        if (id !== view.openId) {
          t.loaded = false;
          t.msgs.clear();
          t.hasMore = true;
        }
      }
      route();
      if (view.openId != null) await loadNewest(view.openId);
      await previews(list.slice(0, 40).map((c) => c.id));
    } catch (e) {
      if (e.status) view.toast(`Could not load your chats: ${e.message}`);
    } finally {
      app.resyncing = null;
      if (app.again) {
        app.again = false;
        resync();
      }
    }
  })();
  return app.resyncing;
}

/** The newest message of each chat, for the list (six requests at a time). */
async function previews(ids) {
  const queue = [...ids];
  const worker = async () => {
    while (queue.length) {
      const id = queue.shift();
      try {
        const [m] = await api.history(id, { limit: 1 });
        if (m) app.store.setPreview(id, normalizeMessage(m));
      } catch {
        /* a chat left meanwhile */
      }
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
}

async function loadNewest(chatId) {
  const { store } = app;
  const t = store.timeline(chatId);
  t.loading = true;
  store.touch(chatId);
  const l0 = store.reading();
  try {
    const held = new Set(t.msgs.keys());
    const page = await api.history(chatId, { limit: PAGE });
    // Sent or heard while the page was on its way (it may be older than they are).
    const arrived = [...t.msgs.values()].filter((m) => !held.has(m.id));
    store.resetTimeline(chatId, page, PAGE, l0, arrived);
  } catch (e) {
    if (e.status === 404) gone(chatId, null);
    else if (e.status) app.view.toast(`Could not load messages: ${e.message}`);
  } finally {
    store.readDone(l0);
    t.loading = false;
    store.touch(chatId);
  }
}

const pinLoads = new Map(); // chat id → the latest load's number: an older answer is dropped
async function loadPins(chatId) {
  const n = (pinLoads.get(chatId) || 0) + 1;
  pinLoads.set(chatId, n);
  try {
    const list = await api.pins(chatId);
    if (pinLoads.get(chatId) === n) app.store.setPins(chatId, list);
  } catch (e) {
    if (e.status === 404) gone(chatId, null);
  }
}

async function refreshChat(chatId) {
  try {
    app.store.upsertChat(await api.chat(chatId), { fresh: true });
    route();
  } catch (e) {
    if (e.status === 404) gone(chatId, null);
  }
}

const soon = new Map();
function refreshChatSoon(chatId) {
  clearTimeout(soon.get(chatId));
  soon.set(chatId, setTimeout(() => refreshChat(chatId), 300));
}

// ---- boot ----

if (session.valid()) start();
else {
  session.clear();
  showSignin(api, start);
}
