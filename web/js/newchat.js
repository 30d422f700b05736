// The new-chat dialog: a group with a name, or a direct message with one
// person, by username. `onCreate` does the work and throws to show an error.

import { $ } from './dom.js';

export function wireNewChat(onCreate) {
  const dlg = $('#new-chat');
  const form = $('#new-chat-form');
  const dm = $('#nc-dm');
  const nameRow = $('#nc-name-row');
  const name = $('#nc-name');
  const members = $('#nc-members');
  const err = $('#nc-error');
  const create = $('#nc-create');
  const sync = () => {
    nameRow.hidden = dm.checked;
    $('#nc-members-hint').textContent = dm.checked ? 'The username of the person to write to.' : 'Usernames, separated by commas.';
  };
  $('#new-chat-btn').addEventListener('click', () => {
    form.reset();
    err.hidden = true;
    sync();
    dlg.showModal();
    name.focus();
  });
  dm.addEventListener('change', sync);
  $('#nc-cancel').addEventListener('click', () => dlg.close());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    create.disabled = true;
    try {
      const usernames = members.value.split(/[,\s]+/).map((u) => u.trim().replace(/^@/, '')).filter(Boolean);
      await onCreate({ dm: dm.checked, name: name.value.trim(), usernames });
      dlg.close();
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    } finally {
      create.disabled = false;
    }
  });
}
