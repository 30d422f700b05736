// The open chat's details panel: its name, its people with their presence,
// and what an admin (or the creator) may do: rename, add, promote, demote,
// remove, delete; anyone may leave; the pinned messages (unpinned by those who
// may pin). A new section is another part pushed here, with what it shows
// added to the signature.

import { h, fill, initials, hue, fmtAgo, fmtFull } from './dom.js';

/** Shows or hides the panel for the open chat, rebuilding it only when what it shows changed. */
export function detailsPanel(view) {
  const e = view.els;
  const chat = view.s.chats.get(view.openId);
  const show = !!chat && view.detailsOpen;
  e.details.hidden = !show;
  e.detailsBtn.setAttribute('aria-expanded', String(show));
  if (!show) return (view.detailsSig = null);
  const s = view.s;
  // Rebuilt only when what it shows changed, so focus stays where it is.
  const pins = s.pins.get(chat.id);
  const sig = JSON.stringify([chat.id, chat.name, chat.creatorId, (chat.members || []).map((m) => [m.user_id, m.is_admin, m.display_name, s.presence.get(m.user_id)?.online]), pins]);
  if (sig === view.detailsSig) return;
  view.detailsSig = sig;
  const mine = s.myMembership(chat);
  const admin = !!mine?.is_admin;
  const members = chat.members || [];
  const parts = [];
  const focused = document.activeElement?.dataset?.keep;
  const keepValue = focused ? document.activeElement.value : null;
  if (chat.isGroup) {
    parts.push(h('h3', {}, 'Group'));
    if (admin) {
      const input = h('input', { 'aria-label': 'Group name', value: chat.name || '', maxlength: '100', 'data-keep': 'rename' });
      parts.push(
        h('form', { class: 'row', onsubmit: (ev) => (ev.preventDefault(), view.a.rename(chat.id, input.value)) }, input, h('button', { type: 'submit', class: 'small' }, 'Rename')),
      );
    } else parts.push(h('p', {}, chat.name || 'Unnamed group'));
  }
  parts.push(h('h3', {}, `People (${members.length})`));
  const ul = h('ul', { class: 'people', 'aria-label': 'People' });
  for (const m of members) {
    const name = m.display_name || m.username;
    const pres = s.presence.get(m.user_id);
    const you = m.user_id === s.me.id;
    const actions = h('div', { class: 'p-actions' });
    if (admin && chat.isGroup && !you) {
      actions.append(
        m.is_admin
          ? h('button', { type: 'button', 'aria-label': `Demote ${name}`, onclick: () => view.a.setAdmin(chat.id, m.user_id, false) }, 'Demote')
          : h('button', { type: 'button', 'aria-label': `Promote ${name} to admin`, onclick: () => view.a.setAdmin(chat.id, m.user_id, true) }, 'Promote'),
        h('button', { type: 'button', class: 'danger', 'aria-label': `Remove ${name} from the chat`, onclick: () => view.a.removeMember(chat.id, m.user_id) }, 'Remove'),
      );
    }
    const status = you || pres?.online ? 'online' : pres?.lastSeen ? `last seen ${fmtAgo(pres.lastSeen)}` : '';
    ul.append(
      h(
        'li',
        { class: 'person' },
        h('span', { class: `avatar sm ${hue(m.user_id)}`, 'aria-hidden': 'true' }, initials(name), h('span', { class: you || pres?.online ? 'dot on' : 'dot' })),
        h(
          'span',
          { class: 'p-text' },
          h('span', { class: 'p-name' }, name, you ? ' (you)' : '', m.is_admin ? h('span', { class: 'tag' }, 'admin') : null),
          h('span', { class: 'p-sub' }, `@${m.username}${status ? ` · ${status}` : ''}`),
        ),
        actions,
      ),
    );
  }
  parts.push(ul);
  if (admin && chat.isGroup) {
    const input = h('input', { 'aria-label': 'Add people', placeholder: 'usernames, comma-separated', autocapitalize: 'none', spellcheck: 'false', 'data-keep': 'add' });
    parts.push(
      h('h3', {}, 'Add people'),
      h(
        'form',
        {
          class: 'row',
          onsubmit: async (ev) => {
            ev.preventDefault();
            if (await view.a.addMembers(chat.id, input.value)) input.value = '';
          },
        },
        input,
        h('button', { type: 'submit', class: 'small' }, 'Add'),
      ),
    );
  }
  parts.push(h('h3', {}, `Pinned${pins?.length ? ` (${pins.length})` : ''}`));
  if (!pins?.length) parts.push(h('p', { class: 'muted' }, pins ? 'No pinned messages.' : 'Loading…'));
  else {
    const canPin = !chat.isGroup || admin;
    const list = h('ul', { class: 'pins', 'aria-label': 'Pinned messages' });
    for (const p of pins) {
      list.append(
        h(
          'li',
          { class: 'pinned' },
          h('span', { class: 'p-name' }, p.displayName || p.username || 'Deleted user'),
          h('span', { class: 'p-pin-text' }, p.content),
          h('time', { class: 'p-sub', datetime: p.createdAt.toISOString() }, fmtFull(p.createdAt)),
          canPin ? h('button', { type: 'button', class: 'small', 'aria-label': `Unpin “${p.content.slice(0, 40)}”`, onclick: () => view.a.pin(p, false) }, 'Unpin') : null,
        ),
      );
    }
    parts.push(list);
  }
  const zone = h('div', { class: 'danger-zone' });
  zone.append(h('button', { type: 'button', class: 'danger', onclick: () => view.a.leave(chat.id) }, chat.isGroup ? 'Leave chat' : 'Leave conversation'));
  if (chat.creatorId === s.me.id || (admin && chat.creatorId == null)) {
    zone.append(h('button', { type: 'button', class: 'danger', onclick: () => view.a.deleteChat(chat.id) }, 'Delete chat'));
  }
  parts.push(zone);
  fill(e.details, ...parts);
  if (focused) {
    const el = e.details.querySelector(`[data-keep="${focused}"]`);
    if (el) {
      el.value = keepValue;
      el.focus();
    }
  }
}
