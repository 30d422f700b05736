// The views: chat list, open chat (header, log, composer), connection status;
// the log's items are built in messages.js, the details panel in details.js,
// the new-chat dialog in newchat.js. They read the store and call `actions`;
// nothing here talks to the server directly.

import { h, $, fill, icon, initials, hue, fmtTime, fmtAgo } from './dom.js';
import { logEntries } from './messages.js';
import { detailsPanel } from './details.js';

const NEAR_TOP_PX = 300;
const NEAR_BOTTOM_PX = 60;

export class View {
  constructor(store, actions) {
    this.s = store;
    this.a = actions;
    this.openId = null;
    this.dirty = new Set();
    this.scheduled = false;
    this.editing = null; // message id being edited
    this.confirming = null; // message id asking "delete?"
    this.picking = null; // message id whose reaction picker is open
    this.replying = null; // the message the composer answers
    this.highlight = null; // a message to show once its chat is loaded (a search result)
    this.detailsOpen = false;
    this.readSent = new Map(); // chat id → highest id a read marker was sent for
    this.divider = null; // id after which the "New messages" line goes
    this.stick = true; // keep the log scrolled to the end
    this.lastTyping = 0;
    this.els = {
      list: $('#chat-list'),
      listEmpty: $('#chat-list-empty'),
      app: $('#app'),
      paneEmpty: $('#pane-empty'),
      chat: $('#chat'),
      name: $('#chat-name'),
      sub: $('#chat-sub'),
      avatar: $('#chat-avatar'),
      log: $('#log'),
      items: $('#items'),
      older: $('#older'),
      typing: $('#typing'),
      input: $('#message-input'),
      replyBar: $('#reply-bar'),
      details: $('#details'),
      detailsBtn: $('#details-btn'),
      conn: $('#conn'),
      connRow: $('#conn-row'),
      reconnect: $('#reconnect-btn'),
    };
    store.isReading = (id) => id === this.openId && document.visibilityState === 'visible' && this.atBottom();
    store.on((what) => this.invalidate(what));
    this.wire();
    this.invalidate('all');
    setInterval(() => this.invalidate('tick'), 1000);
  }

  wire() {
    const e = this.els;
    $('#me-name').textContent = this.s.me.display_name || this.s.me.username;
    $('#me-user').textContent = `@${this.s.me.username}`;
    const av = $('#me-avatar');
    av.textContent = initials(this.s.me.display_name || this.s.me.username);
    av.classList.add(hue(this.s.me.id));
    $('#composer').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.send();
    });
    e.input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.send();
      } else if (ev.key === 'Escape' && this.replying) this.replyTo(null);
    });
    e.input.addEventListener('input', () => {
      // The server forwards one typing signal per person and chat every 2 s: wait that long between them.
      if (this.openId != null && e.input.value.trim() && Date.now() - this.lastTyping > 2100) {
        this.lastTyping = Date.now();
        this.a.typing(this.openId);
      }
    });
    e.log.addEventListener('scroll', () => this.onScroll(), { passive: true });
    $('#back-btn').addEventListener('click', () => this.a.navigate(null));
    e.detailsBtn.addEventListener('click', () => {
      this.detailsOpen = !this.detailsOpen;
      this.invalidate('details');
    });
    e.reconnect.addEventListener('click', () => this.a.reconnect());
    document.addEventListener('visibilitychange', () => this.markRead());
    window.addEventListener('focus', () => this.markRead());
    e.details.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        this.detailsOpen = false;
        this.invalidate('details');
        e.detailsBtn.focus();
      }
    });
  }

  // ---- scheduling ----

  invalidate(what) {
    if (what === 'all' || what === 'presence') ['list', 'chat', 'head', 'details'].forEach((d) => this.dirty.add(d));
    else if (what === 'chats') ['list', 'head', 'chat', 'details'].forEach((d) => this.dirty.add(d));
    else if (what === 'tick') this.dirty.add('typing');
    else if (what === 'details') this.dirty.add('details');
    else if (what === `chat:${this.openId}`) this.dirty.add('chat');
    else if (what === `typing:${this.openId}`) this.dirty.add('typing');
    else return;
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      this.render();
    };
    if (document.visibilityState === 'visible') requestAnimationFrame(run);
    else setTimeout(run, 100);
  }

  render() {
    const d = this.dirty;
    this.dirty = new Set();
    if (d.has('list')) this.renderList();
    if (d.has('head')) this.renderHead();
    if (d.has('chat')) this.renderChat();
    if (d.has('chat') || d.has('typing')) this.renderTyping();
    if (d.has('chat')) this.renderReply();
    if (d.has('details')) this.renderDetails();
  }

  // ---- connection status ----

  status(st) {
    const e = this.els;
    let text;
    if (st.state === 'ready') text = 'Connected';
    else if (st.state === 'offline') text = 'Offline';
    else if (st.state === 'waiting') text = `Reconnecting in ${Math.ceil(st.retryIn / 1000)} s`;
    else text = 'Connecting…';
    if (st.state !== 'ready' && st.unacked) text += ` · ${st.unacked} unsent`;
    if (e.conn.textContent !== text) e.conn.textContent = text;
    e.connRow.classList.toggle('ok', st.state === 'ready');
    e.connRow.classList.toggle('bad', st.state === 'offline' || st.state === 'waiting');
    e.reconnect.hidden = st.state !== 'waiting';
  }

  // ---- chat list ----

  chatLabel(chat) {
    const name = this.s.title(chat);
    const n = chat.mentions;
    return (chat.unread > 0 ? `${name}, ${chat.unread} unread` : name) + (n > 0 ? `, ${n} ${n === 1 ? 'mention' : 'mentions'}` : '');
  }

  renderList() {
    const chats = this.s.sortedChats();
    const list = this.els.list;
    this.els.listEmpty.hidden = chats.length > 0;
    const old = new Map([...list.children].map((li) => [li.dataset.id, li]));
    chats.forEach((chat, i) => {
      const sig = this.listSig(chat);
      let li = old.get(String(chat.id));
      old.delete(String(chat.id));
      if (!li || li.dataset.sig !== sig) {
        const fresh = this.listItem(chat);
        fresh.dataset.sig = sig;
        if (li) li.replaceWith(fresh);
        li = fresh;
      }
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    for (const li of old.values()) li.remove();
  }

  listSig(chat) {
    const p = this.s.partner(chat);
    const pres = p && this.s.presence.get(p.user_id);
    const pv = chat.preview;
    return [this.chatLabel(chat), chat.id === this.openId, pres?.online, pv?.id, pv?.content, pv && fmtTime(pv.createdAt)].join('|');
  }

  listItem(chat) {
    const name = this.s.title(chat);
    const partner = this.s.partner(chat);
    const online = partner && this.s.presence.get(partner.user_id)?.online;
    const pv = chat.preview;
    let preview = chat.isGroup ? 'Group chat' : 'Direct message';
    if (pv) {
      const who = pv.senderId === this.s.me.id ? 'You' : chat.isGroup ? pv.displayName || pv.username || 'Deleted user' : null;
      preview = who ? `${who}: ${pv.content}` : pv.content;
    }
    const avatar = h('span', { class: `avatar ${hue(chat.isGroup ? chat.id : partner?.user_id ?? chat.id)}` }, initials(name));
    if (partner) avatar.append(h('span', { class: online ? 'dot on' : 'dot' }));
    const a = h(
      'a',
      {
        class: chat.unread > 0 ? 'chat-item unread' : 'chat-item',
        href: `#/chat/${chat.id}`,
        'aria-label': this.chatLabel(chat),
        'aria-description': partner ? (online ? 'online' : 'offline') : null,
        'aria-current': chat.id === this.openId ? 'page' : null,
      },
      avatar,
      h(
        'span',
        { class: 'ci-text' },
        h('span', { class: 'ci-top' }, h('span', { class: 'ci-name' }, name), pv ? h('time', { class: 'ci-time' }, fmtTime(pv.createdAt)) : null),
        h('span', { class: 'ci-bottom' }, h('span', { class: 'ci-preview' }, preview), chat.mentions > 0 ? h('span', { class: 'badge at', 'aria-hidden': 'true' }, '@') : null, chat.unread > 0 ? h('span', { class: 'badge' }, chat.unread > 99 ? '99+' : chat.unread) : null),
      ),
    );
    return h('li', { 'data-id': chat.id }, a);
  }

  // ---- the open chat ----

  open(chatId) {
    const chat = chatId != null ? this.s.chats.get(chatId) : null;
    const id = chat ? chat.id : null;
    const changed = id !== this.openId;
    this.openId = id;
    this.els.app.classList.toggle('show-chat', id != null);
    this.els.paneEmpty.hidden = id != null;
    this.els.chat.hidden = id == null;
    if (changed) {
      this.editing = this.confirming = this.picking = this.replying = null;
      this.stick = true;
      this.divider = chat && chat.unread > 0 ? chat.lastReadId || 0 : null;
      this.els.items.replaceChildren();
      this.els.input.value = '';
      if (id != null && !matchMedia('(max-width: 720px)').matches) this.els.input.focus();
    }
    this.invalidate('all');
    return chat;
  }

  renderHead() {
    const chat = this.s.chats.get(this.openId);
    if (!chat) return;
    const e = this.els;
    const name = this.s.title(chat);
    e.name.textContent = name;
    const partner = this.s.partner(chat);
    fill(e.avatar, initials(name));
    e.avatar.className = `avatar ${hue(chat.isGroup ? chat.id : partner?.user_id ?? chat.id)}`;
    let sub;
    if (chat.isGroup) {
      const n = chat.members?.length;
      sub = n ? `${n} ${n === 1 ? 'member' : 'members'}` : 'Group chat';
    } else if (partner) {
      const pres = this.s.presence.get(partner.user_id);
      e.avatar.append(h('span', { class: pres?.online ? 'dot on' : 'dot' }));
      sub = pres?.online ? 'online' : pres?.lastSeen ? `last seen ${fmtAgo(pres.lastSeen)}` : `@${partner.username}`;
    } else sub = 'Direct message';
    e.sub.textContent = sub;
    document.title = `${chat.unread ? `(${chat.unread}) ` : ''}${name} · chatapp`;
  }

  atBottom() {
    const l = this.els.log;
    return l.scrollHeight - l.scrollTop - l.clientHeight < NEAR_BOTTOM_PX;
  }

  onScroll() {
    this.stick = this.atBottom();
    const t = this.s.timelines.get(this.openId);
    if (this.els.log.scrollTop < NEAR_TOP_PX && t?.loaded && t.hasMore && !t.loading) this.a.loadOlder(this.openId);
    this.markRead();
  }

  renderChat() {
    const id = this.openId;
    if (id == null) return;
    const e = this.els;
    const t = this.s.timeline(id);
    const log = e.log;
    // Keep what the reader looks at in place when older pages come in above.
    const stick = this.stick;
    let anchor = null;
    if (!stick) {
      for (const el of e.items.children) {
        if (el.offsetTop + el.offsetHeight > log.scrollTop) {
          anchor = { el, top: el.offsetTop - log.scrollTop };
          break;
        }
      }
    }
    // A redrawn item takes the focus with it: back to its control of the same data-focus.
    const act = document.activeElement;
    const item = act?.dataset.focus && e.items.contains(act) ? act.closest('[data-key]') : null;
    const keep = item && `[data-key="${item.dataset.key}"] [data-focus="${CSS.escape(act.dataset.focus)}"]`;
    const want = logEntries(this, id);
    const old = new Map([...e.items.children].map((el) => [el.dataset.key, el]));
    want.forEach((w, i) => {
      let el = old.get(w.key);
      old.delete(w.key);
      if (!el || el.dataset.sig !== w.sig) {
        const fresh = w.el();
        fresh.dataset.key = w.key;
        fresh.dataset.sig = w.sig;
        if (el) {
          if (anchor?.el === el) anchor.el = fresh;
          el.replaceWith(fresh);
        }
        el = fresh;
      }
      if (e.items.children[i] !== el) e.items.insertBefore(el, e.items.children[i] || null);
    });
    for (const el of old.values()) el.remove();
    e.older.hidden = !(t.loading || (!t.hasMore && t.loaded && t.msgs.size));
    e.older.textContent = t.loading ? 'Loading older messages…' : 'This is the beginning of the chat.';
    if (stick) log.scrollTop = log.scrollHeight;
    else if (anchor?.el.isConnected) log.scrollTop = anchor.el.offsetTop - anchor.top;
    if (this.highlight != null && t.loaded && !t.loading) {
      const el = e.items.querySelector(`article[data-id="${this.highlight}"]`);
      this.highlight = null;
      if (el) {
        el.scrollIntoView({ block: 'center' });
        this.stick = this.atBottom();
        el.classList.add('flash');
        setTimeout(() => el.classList.remove('flash'), 2000);
      }
    }
    if (keep && !e.items.contains(document.activeElement)) e.items.querySelector(keep)?.focus();
    if (this.focusPicker) {
      this.focusPicker = false;
      e.items.querySelector('.picker button')?.focus();
    }
    if (this.editing != null) {
      const box = e.items.querySelector('.edit-box textarea');
      if (box && document.activeElement !== box) {
        box.focus();
        box.setSelectionRange(box.value.length, box.value.length);
      }
    }
    // A first page that does not fill the view: fetch the next one now.
    if (t.loaded && t.hasMore && !t.loading && log.scrollHeight <= log.clientHeight + NEAR_TOP_PX) this.a.loadOlder(id);
    this.markRead();
  }

  renderTyping() {
    const names = this.openId == null ? [] : this.s.typingNames(this.openId);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    if (this.els.typing.textContent !== text) this.els.typing.textContent = text;
  }

  send() {
    const text = this.els.input.value.trim();
    if (!text || this.openId == null) return;
    this.els.input.value = '';
    this.stick = true;
    this.a.send(this.openId, text, this.replying);
    this.replyTo(null);
  }

  /** Starts (or, with null, cancels) a reply to message m. */
  replyTo(m) {
    this.replying = m;
    this.renderReply();
    this.els.input.focus();
  }

  renderReply() {
    const m = this.replying;
    const bar = this.els.replyBar;
    // The original was deleted meanwhile: nothing to answer any more.
    if (m && !this.s.timeline(m.chatId).msgs.has(m.id)) this.replying = null;
    bar.hidden = !this.replying;
    if (!this.replying) return delete bar.dataset.id;
    if (bar.dataset.id === String(m.id)) return;
    bar.dataset.id = m.id;
    const name = this.s.displayName(m.senderId);
    fill(
      bar,
      h('span', { class: 'r-text' }, h('strong', {}, `Replying to ${name}`), h('span', { class: 'muted' }, m.content.slice(0, 200))),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Cancel reply', onclick: () => this.replyTo(null) }, icon('x')),
    );
  }

  /** Moves my read marker to the newest message on screen, while the page is visible. */
  markRead() {
    const id = this.openId;
    if (id == null || document.visibilityState !== 'visible') return;
    const chat = this.s.chats.get(id);
    if (!chat) return;
    const log = this.els.log;
    const bottom = log.scrollTop + log.clientHeight;
    const arts = e_items(this.els.items);
    let newest = null;
    for (let i = arts.length - 1; i >= 0; i--) {
      const el = arts[i];
      if (el.offsetTop < bottom && el.offsetTop + el.offsetHeight > log.scrollTop) {
        newest = Number(el.dataset.id);
        break;
      }
    }
    if (!newest) return;
    const sent = this.readSent.get(id) || 0;
    if (newest > (chat.lastReadId || 0) && newest > sent) {
      this.readSent.set(id, newest);
      this.a.markRead(id, newest);
    } else if (chat.unread > 0 && newest >= (chat.maxMsgId || 0) && newest > sent) {
      this.readSent.set(id, newest);
      this.a.markRead(id, newest);
    }
  }

  renderDetails() {
    detailsPanel(this);
  }

  toast(text) {
    document.querySelector('.toast')?.remove();
    const t = h('div', { class: 'toast', role: 'alert' }, text);
    document.body.append(t);
    setTimeout(() => t.remove(), 4000);
  }
}

function e_items(items) {
  return items.querySelectorAll('article[data-id]');
}
