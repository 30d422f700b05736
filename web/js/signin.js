// The session (token and user in sessionStorage, per tab) and the sign-in
// form: sign in, or register with the same fields.

import { $ } from './dom.js';

const TOKEN = 'chatapp.token';
const USER = 'chatapp.user';
const EXPIRES = 'chatapp.expires';
const FLASH = 'chatapp.flash';

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN);
  },
  get user() {
    try {
      return JSON.parse(sessionStorage.getItem(USER));
    } catch {
      return null;
    }
  },
  valid() {
    const exp = Date.parse(sessionStorage.getItem(EXPIRES) || '');
    return !!this.token && !!this.user && !(exp < Date.now());
  },
  save(auth) {
    sessionStorage.setItem(TOKEN, auth.token);
    sessionStorage.setItem(USER, JSON.stringify(auth.user));
    sessionStorage.setItem(EXPIRES, auth.expires_at || '');
  },
  clear() {
    for (const k of [TOKEN, USER, EXPIRES]) sessionStorage.removeItem(k);
  },
};

/** A message the sign-in form shows after the next page load (why the session ended). */
export function flashOnSignin(message) {
  sessionStorage.setItem(FLASH, message);
}

/** Shows the sign-in form; `onSignedIn()` runs once a login or registration succeeded. */
export function showSignin(api, onSignedIn) {
  $('#signin').hidden = false;
  const form = $('#signin-form');
  const user = $('#si-user');
  const pass = $('#si-pass');
  const name = $('#si-name');
  const err = $('#signin-error');
  const buttons = [$('#signin-btn'), $('#register-btn')];
  const flash = sessionStorage.getItem(FLASH);
  sessionStorage.removeItem(FLASH);
  const fieldErr = { username: $('#si-user-err'), password: $('#si-pass-err') };
  const show = (message, fields = []) => {
    err.textContent = message;
    err.hidden = !message;
    for (const [f, el] of Object.entries(fieldErr)) {
      const hit = fields.find((x) => x.field === f);
      el.hidden = !hit;
      el.textContent = hit ? `${f[0].toUpperCase()}${f.slice(1)} ${hit.message}.` : '';
      (f === 'username' ? user : pass).setAttribute('aria-invalid', String(!!hit));
    }
  };
  if (flash) show(flash);
  const go = async (register) => {
    if (!user.value.trim() || !pass.value) {
      show('Enter a username and a password.');
      (user.value.trim() ? pass : user).focus();
      return;
    }
    buttons.forEach((b) => (b.disabled = true));
    try {
      const auth = register ? await api.register(user.value.trim(), pass.value, name.value.trim()) : await api.login(user.value.trim(), pass.value);
      session.save(auth);
      $('#signin').hidden = true;
      pass.value = '';
      onSignedIn();
    } catch (e) {
      if (e.code === 'invalid_credentials') show('Wrong username or password.');
      else if (e.code === 'username_taken') show('That username is taken. Pick another one, or sign in.');
      else if (e.code === 'validation_failed') show('Please check the highlighted fields.', e.fields);
      else show(e.status ? e.message : 'The server cannot be reached. Try again in a moment.');
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go(false);
  });
  $('#register-btn').addEventListener('click', () => go(true));
  user.focus();
}
