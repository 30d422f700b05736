// Message search in the sidebar: a search box over all my chats (or the open
// one), its results in place of the chat list; choosing one opens its chat
// at that message (when it is among the newest loaded).

import { h, $, fill, fmtFull, fmtTime, fmtDay } from './dom.js';

const WAIT_MS = 300;

/** `search(text, chatId)` → the API's Messages, newest first. */
export function wireSearch(view, search) {
  const input = $('#search-input');
  const only = $('#search-here');
  const box = $('#search-results');
  const list = $('#search-list');
  const info = $('#search-info');
  let timer = null;
  let seq = 0;
  // Shown with the results (and only with a chat open): what they cover.
  const show = (text) => {
    box.hidden = !text;
    $('#chat-nav').hidden = !!text;
    only.parentElement.hidden = !text || view.openId == null;
  };
  const close = () => {
    input.value = '';
    show('');
  };
  const run = async () => {
    clearTimeout(timer);
    const text = input.value.trim();
    const n = ++seq;
    show(text);
    if (!text) return;
    const chatId = only.checked ? view.openId : null;
    info.textContent = 'Searching…';
    let found;
    try {
      found = await search(text, chatId ?? undefined);
    } catch (e) {
      if (n === seq) info.textContent = `Could not search: ${e.message}`;
      return;
    }
    if (n !== seq) return; // a newer search is on its way
    info.textContent = found.length ? `${found.length}${found.length >= 30 ? '+' : ''} found` : 'Nothing found.';
    fill(
      list,
      found.map((m) => {
        const chat = view.s.chats.get(m.chat_id);
        const who = m.sender_id === view.s.me.id ? 'You' : m.sender ? m.sender.display_name || m.sender.username : 'Deleted user';
        const where = !chat ? 'a chat you left' : chat.isGroup ? `in ${view.s.title(chat)}` : `direct message with ${view.s.title(chat)}`;
        const at = new Date(m.created_at);
        return h(
          'li',
          {},
          h(
            'a',
            { class: 'result', href: `#/chat/${m.chat_id}`, onclick: () => ((view.highlight = m.id), close()) },
            h('span', { class: 'ci-top' }, h('span', { class: 'ci-name' }, who), h('time', { class: 'ci-time', title: fmtFull(at) }, fmtDay(at) === 'Today' ? fmtTime(at) : fmtDay(at))),
            h('span', { class: 'r-where' }, ` ${where} `),
            h('span', { class: 'r-text' }, m.content),
          ),
        );
      }),
    );
  };
  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(run, WAIT_MS);
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') {
      ev.preventDefault();
      run();
    } else if (ev.key === 'Escape') close();
  });
  input.addEventListener('search', run); // the field's own clear button
  only.addEventListener('change', run);
}
