// The open chat's log items: day lines, system notes, messages with their
// tools (reply, react, pin, edit, delete), the quote of what a reply answers,
// highlighted @mentions, reactions, a pin mark, the "New messages" line, and
// pending sends. The View (ui.js) places them and keeps the scroll position
// (and the focus, on the control with the same `data-focus` once an item is
// redrawn); these only build them.
//
// Something new shown with a message (reactions, a reply's quote, mentions,
// a pin mark) goes into messageEl, and what it depends on into the message's
// `sig` in logEntries, so the item is redrawn when it changes.

import { h, icon, initials, hue, fmtTime, fmtDay, fmtFull } from './dom.js';

const GROUP_GAP_MS = 5 * 60000;
const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢'];

/** Items of the log in order: days, notes, messages, pending sends; each with a
 * key, a signature of what it shows (redrawn when that changes) and a builder. */
export function logEntries(view, chatId) {
  const s = view.s;
  const t = s.timeline(chatId);
  const chat = s.chats.get(chatId);
  const me = s.me.id;
  const msgs = s.sortedMessages(chatId);
  const myAdmin = !!s.myMembership(chat)?.is_admin;
  const canPin = chat && (!chat.isGroup || myAdmin);
  const pinned = s.pinnedIds(chatId);
  const seen = new Map(); // message id → names
  for (const [uid, mid] of t.readBy) {
    // Under the newest message they have read that is not their own.
    const at = uid === me ? null : msgs.findLast((m) => m.id <= mid && m.senderId !== uid);
    if (!at) continue;
    if (!seen.has(at.id)) seen.set(at.id, []);
    seen.get(at.id).push(s.displayName(uid));
  }
  const out = [];
  let prev = null;
  let day = null;
  let dividerDone = false;
  const notes = [...t.notes];
  const push = (m, kind) => {
    const d = fmtDay(m.createdAt);
    if (d !== day) {
      day = d;
      out.push({ key: `d${d}`, sig: d, el: () => h('p', { class: 'day' }, d) });
      prev = null;
    }
    if (kind === 'msg' && !dividerDone && view.divider != null && m.id > view.divider && m.senderId !== me) {
      dividerDone = true;
      out.push({ key: 'divider', sig: 'divider', el: () => h('p', { class: 'divider', role: 'separator' }, 'New messages') });
    }
    const first = !prev || prev.senderId !== m.senderId || m.createdAt - prev.createdAt > GROUP_GAP_MS;
    prev = m;
    return first;
  };
  for (const m of msgs) {
    while (notes.length && notes[0].afterId < m.id) {
      const n = notes.shift();
      out.push({ key: n.key, sig: n.text, el: () => h('p', { class: 'note' }, n.text) });
      prev = null;
    }
    const first = push(m, 'msg');
    const mine = m.senderId === me && me != null;
    const names = seen.get(m.id);
    const isPinned = pinned.has(m.id);
    const sig = [m.content, m.edited, first, view.editing === m.id, view.confirming === m.id, view.picking === m.id, names?.join(','), myAdmin, canPin, isPinned, JSON.stringify([m.replyTo, m.mentions, m.reactions])].join('|');
    out.push({ key: `m${m.id}`, sig, el: () => messageEl(view, m, { first, mine, names, canDelete: mine || myAdmin, canPin, isPinned, chat }) });
  }
  for (const n of notes) out.push({ key: n.key, sig: n.text, el: () => h('p', { class: 'note' }, n.text) });
  const pending = [...t.pending.values()].sort((a, b) => a.createdAt - b.createdAt);
  for (const p of pending) {
    const m = { senderId: me, createdAt: p.createdAt, content: p.content };
    const first = push(m, 'pending');
    out.push({ key: `p${p.clientId}`, sig: [p.failed, p.error, first].join('|'), el: () => pendingEl(view, p, first) });
  }
  return out;
}

/** The quote of the message a reply answers (as the server last told it). */
function quoteEl(view, q) {
  if (!q) return null;
  if (q.deleted) return h('blockquote', { class: 'quote gone' }, 'Original message deleted');
  return h('blockquote', { class: 'quote' }, h('span', { class: 'q-who' }, q.sender_id == null ? 'Deleted user' : view.s.displayName(q.sender_id)), h('span', { class: 'q-text' }, q.content));
}

/** The text, with each @username of a member it mentions highlighted (mine more so). */
function richText(view, m) {
  if (!m.mentions.length) return m.content;
  const names = new Map(m.mentions.map((id) => [(view.s.users.get(id)?.username || (id === view.s.me.id ? view.s.me.username : '')).toLowerCase(), id]));
  const out = [];
  let at = 0;
  for (const x of m.content.matchAll(/(?<![\p{L}\p{N}_.@-])@([A-Za-z0-9_.-]*[A-Za-z0-9_-])/gu)) {
    const id = names.get(x[1].toLowerCase());
    if (id == null) continue;
    out.push(m.content.slice(at, x.index), h('span', { class: id === view.s.me.id ? 'mention you' : 'mention' }, x[0]));
    at = x.index + x[0].length;
  }
  out.push(m.content.slice(at));
  return out;
}

function reactionsEl(view, m) {
  const chips = (m.reactions || []).map((r) =>
    h(
      'button',
      { type: 'button', class: r.me ? 'chip you' : 'chip', 'data-focus': r.emoji, 'aria-pressed': String(r.me), 'aria-label': `${r.emoji} ${r.count}${r.me ? ', you reacted' : ''}`, onclick: () => view.a.react(m, r.emoji, !r.me) },
      r.emoji,
      h('span', { class: 'n' }, r.count),
    ),
  );
  const picker =
    view.picking === m.id
      ? h(
          'div',
          { class: 'picker', role: 'group', 'aria-label': 'Choose a reaction', onkeydown: (ev) => ev.key === 'Escape' && pick(view, m, null) },
          EMOJI.map((e) => h('button', { type: 'button', 'aria-label': e, 'data-focus': 'react', onclick: () => (pick(view, m, null), view.a.react(m, e, true)) }, e)),
        )
      : null;
  return chips.length || picker ? h('div', { class: 'reactions' }, chips, picker) : null;
}

function pick(view, m, id) {
  view.picking = id;
  view.focusPicker = id != null;
  view.invalidate(`chat:${m.chatId}`);
}

function messageEl(view, m, { first, mine, names, canDelete, canPin, isPinned }) {
  const name = mine ? view.s.me.display_name || view.s.me.username : m.displayName || m.username || 'Deleted user';
  const time = h('time', { datetime: m.createdAt.toISOString(), title: fmtFull(m.createdAt) }, fmtTime(m.createdAt));
  let body;
  if (view.editing === m.id) {
    const ta = h('textarea', { 'aria-label': 'Edit text', maxlength: '4000' });
    ta.value = m.content;
    const save = () => {
      const v = ta.value.trim();
      view.editing = null;
      view.invalidate(`chat:${m.chatId}`);
      if (v && v !== m.content) view.a.edit(m, v);
    };
    const cancel = () => {
      view.editing = null;
      view.invalidate(`chat:${m.chatId}`);
      view.els.input.focus();
    };
    ta.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        save();
      } else if (ev.key === 'Escape') cancel();
    });
    body = h(
      'div',
      { class: 'edit-box' },
      ta,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'small', onclick: cancel }, 'Cancel'), h('button', { type: 'button', class: 'primary small', onclick: save }, 'Save')),
    );
  } else {
    body = h('div', { class: 'bubble' }, quoteEl(view, m.replyTo), h('span', { class: 'text' }, richText(view, m)));
  }
  const tools = h('div', { class: 'tools' });
  if (view.confirming === m.id) {
    tools.append(
      h('button', { type: 'button', class: 'confirm danger', onclick: () => ((view.confirming = null), view.a.del(m)) }, h('span', { 'aria-hidden': 'true' }, 'Delete'), h('span', { class: 'sr-only' }, 'Confirm delete')),
      h('button', { type: 'button', class: 'confirm', onclick: () => ((view.confirming = null), view.invalidate(`chat:${m.chatId}`)) }, 'Cancel'),
    );
  } else if (view.editing !== m.id) {
    tools.append(
      h('button', { type: 'button', 'aria-label': `Reply to ${name}`, title: 'Reply', onclick: () => view.replyTo(m) }, icon('reply')),
      h('button', { type: 'button', 'aria-label': 'Add reaction', title: 'Add reaction', 'data-focus': 'react', 'aria-expanded': String(view.picking === m.id), onclick: () => pick(view, m, view.picking === m.id ? null : m.id) }, icon('smile')),
    );
    if (canPin) tools.append(h('button', { type: 'button', 'aria-label': isPinned ? 'Unpin' : 'Pin', 'data-focus': 'pin', title: isPinned ? 'Unpin' : 'Pin', onclick: () => view.a.pin(m, !isPinned) }, icon('pin')));
    if (mine) tools.append(h('button', { type: 'button', 'aria-label': 'Edit', title: 'Edit', onclick: () => ((view.editing = m.id), (view.confirming = null), view.invalidate(`chat:${m.chatId}`)) }, icon('edit')));
    if (canDelete) tools.append(h('button', { type: 'button', 'aria-label': 'Delete', title: 'Delete', onclick: () => ((view.confirming = m.id), view.invalidate(`chat:${m.chatId}`)) }, icon('trash')));
  }
  const toMe = m.mentions.includes(view.s.me.id) && !mine;
  return h(
    'article',
    { class: `msg${first ? ' first' : ''}${mine ? ' mine' : ''}${toMe ? ' to-me' : ''}`, 'data-id': m.id, 'aria-description': toMe ? 'mentions you' : null },
    h('span', { class: `avatar sm ${hue(m.senderId)}`, 'aria-hidden': 'true' }, initials(name)),
    h('div', { class: 'msg-body' },
      h('div', { class: 'msg-head' }, h('span', { class: 'who' }, name), time),
      h(
        'div',
        { class: 'bubble-row' },
        body,
        isPinned ? h('span', { class: 'meta pin', title: 'Pinned' }, icon('pin'), h('span', { class: 'sr-only' }, 'Pinned')) : null,
        m.edited && view.editing !== m.id ? h('span', { class: 'meta' }, '(edited)') : null,
        tools,
      ),
      reactionsEl(view, m),
      names?.length ? h('p', { class: 'seen' }, `Seen by ${names.join(', ')}`) : null,
    ),
  );
}

function pendingEl(view, p, first) {
  const name = view.s.me.display_name || view.s.me.username;
  const meta = p.failed
    ? h('span', { class: 'meta err', title: p.error || '' }, icon('alert'), `Not sent${p.error ? `: ${p.error}` : ''}`)
    : h('span', { class: 'meta' }, icon('clock'), 'Sending…');
  const tools = h('div', { class: 'tools' });
  if (p.failed) {
    tools.append(
      h('button', { type: 'button', class: 'confirm', onclick: () => view.a.retry(p) }, 'Retry'),
      h('button', { type: 'button', class: 'confirm', onclick: () => view.a.discard(p) }, 'Discard'),
    );
  }
  return h(
    'article',
    { class: `msg mine ${p.failed ? 'failed' : 'pending'}${first ? ' first' : ''}`, 'aria-busy': p.failed ? null : 'true' },
    h('div', { class: 'msg-body' },
      h('div', { class: 'msg-head' }, h('span', { class: 'who' }, name), h('time', { datetime: p.createdAt.toISOString() }, fmtTime(p.createdAt))),
      h('div', { class: 'bubble-row' }, h('div', { class: 'bubble' }, quoteEl(view, p.replyTo), h('span', { class: 'text' }, p.content)), meta, tools),
    ),
  );
}
