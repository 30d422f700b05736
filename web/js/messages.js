// The open chat's log items: day lines, system notes, messages with their
// tools (edit, delete), the "New messages" line, and pending sends. The View
// (ui.js) places them and keeps the scroll position; these only build them.
//
// Something new shown with a message (reactions, a reply's quote, mentions,
// a pin mark) goes into messageEl, and what it depends on into the message's
// `sig` in logEntries, so the item is redrawn when it changes.

import { h, icon, initials, hue, fmtTime, fmtDay, fmtFull } from './dom.js';

const GROUP_GAP_MS = 5 * 60000;

/** Items of the log in order: days, notes, messages, pending sends; each with a
 * key, a signature of what it shows (redrawn when that changes) and a builder. */
export function logEntries(view, chatId) {
  const s = view.s;
  const t = s.timeline(chatId);
  const chat = s.chats.get(chatId);
  const me = s.me.id;
  const msgs = s.sortedMessages(chatId);
  const myAdmin = !!s.myMembership(chat)?.is_admin;
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
    const sig = [m.content, m.edited, first, view.editing === m.id, view.confirming === m.id, names?.join(','), myAdmin].join('|');
    out.push({ key: `m${m.id}`, sig, el: () => messageEl(view, m, { first, mine, names, canDelete: mine || myAdmin, chat }) });
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

function messageEl(view, m, { first, mine, names, canDelete }) {
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
    body = h('div', { class: 'bubble' }, m.content);
  }
  const tools = h('div', { class: 'tools' });
  if (view.confirming === m.id) {
    tools.append(
      h('button', { type: 'button', class: 'confirm danger', onclick: () => ((view.confirming = null), view.a.del(m)) }, h('span', { 'aria-hidden': 'true' }, 'Delete'), h('span', { class: 'sr-only' }, 'Confirm delete')),
      h('button', { type: 'button', class: 'confirm', onclick: () => ((view.confirming = null), view.invalidate(`chat:${m.chatId}`)) }, 'Cancel'),
    );
  } else if (view.editing !== m.id) {
    if (mine) tools.append(h('button', { type: 'button', 'aria-label': 'Edit', title: 'Edit', onclick: () => ((view.editing = m.id), (view.confirming = null), view.invalidate(`chat:${m.chatId}`)) }, icon('edit')));
    if (canDelete) tools.append(h('button', { type: 'button', 'aria-label': 'Delete', title: 'Delete', onclick: () => ((view.confirming = m.id), view.invalidate(`chat:${m.chatId}`)) }, icon('trash')));
  }
  return h(
    'article',
    { class: `msg${first ? ' first' : ''}${mine ? ' mine' : ''}`, 'data-id': m.id },
    h('span', { class: `avatar sm ${hue(m.senderId)}`, 'aria-hidden': 'true' }, initials(name)),
    h('div', { class: 'msg-body' },
      h('div', { class: 'msg-head' }, h('span', { class: 'who' }, name), time),
      h('div', { class: 'bubble-row' }, body, m.edited && view.editing !== m.id ? h('span', { class: 'meta' }, '(edited)') : null, tools),
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
      h('div', { class: 'bubble-row' }, h('div', { class: 'bubble' }, p.content), meta, tools),
    ),
  );
}
