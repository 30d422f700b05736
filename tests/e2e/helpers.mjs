// Shared pieces of the browser tests: the server process, the browser, REST
// shortcuts and a polling `eventually` (playwright-core has no `expect`).

import { spawn } from 'node:child_process';
import { mkdirSync, openSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SHOTS = join(repo, 'target', 'e2e-screenshots');
export const PASSWORD = 'correct horse battery';

// ---- the server ----

/**
 * The server under test. With CHATAPP_BIN (set by scripts/e2e.sh, with PORT,
 * DATABASE_URL and the rest in the environment) the tests start and stop it
 * themselves, so they can restart it; with only E2E_BASE_URL they use a
 * server someone else runs (and skip the restart test).
 */
export class Server {
  constructor() {
    this.bin = process.env.CHATAPP_BIN;
    const port = process.env.PORT || '8080';
    this.base = process.env.E2E_BASE_URL || `http://127.0.0.1:${port}`;
    this.log = process.env.E2E_SERVER_LOG || join(repo, 'target', 'e2e-server.log');
    this.proc = null;
  }

  get managed() {
    return !!this.bin;
  }

  async start() {
    if (!this.managed) return this.waitHealthy();
    mkdirSync(dirname(this.log), { recursive: true });
    const out = openSync(this.log, 'a');
    this.proc = spawn(this.bin, ['serve'], { env: process.env, stdio: ['ignore', out, out] });
    if (process.env.E2E_SERVER_PIDFILE) writeFileSync(process.env.E2E_SERVER_PIDFILE, String(this.proc.pid));
    const exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
    this.exited = exited;
    await Promise.race([
      this.waitHealthy(),
      exited.then((code) => {
        throw new Error(`chatapp exited with ${code} at start-up (see ${this.log})`);
      }),
    ]);
  }

  /** SIGTERM, as in production: sockets get 1001 after their queues are flushed. */
  stop() {
    return this.end('SIGTERM');
  }

  /** SIGKILL: the node dies with its sockets open, sending no close frame. */
  kill() {
    return this.end('SIGKILL');
  }

  async end(signal) {
    if (!this.proc) return;
    const proc = this.proc;
    this.proc = null;
    if (proc.exitCode == null) {
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15000);
      await this.exited;
      clearTimeout(timer);
    }
  }

  async waitHealthy(timeout = 30000) {
    const until = Date.now() + timeout;
    for (;;) {
      try {
        const res = await fetch(`${this.base}/health`);
        if (res.ok) return;
      } catch {
        /* not up yet */
      }
      if (Date.now() > until) throw new Error(`${this.base} did not become healthy`);
      await sleep(100);
    }
  }
}

// ---- the browser ----

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A fresh context (its own sessionStorage: another person) with one page at the app. */
export async function openApp(browser, base, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...options });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  page.on('console', (m) => {
    // Chromium logs refused connections itself (the server restart test makes some).
    if (m.type() === 'error' && !/^WebSocket connection to|^Failed to load resource/.test(m.text())) page.errors.push(new Error(m.text()));
  });
  await page.goto(base);
  return { context, page };
}

let seq = 0;
const run = Date.now().toString(36);
/** A username no other run of the tests used. */
export const uniqueName = (prefix) => `${prefix}_${run}${++seq}`;

// ---- polling ----

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Retries `fn` until it stops throwing (or returns a non-false value), or rethrows its last error. */
export async function eventually(fn, { timeout = 10000, interval = 50 } = {}) {
  const until = Date.now() + timeout;
  for (;;) {
    try {
      const v = await fn();
      if (v !== false) return v;
      throw new Error('condition still false');
    } catch (e) {
      if (Date.now() > until) throw e;
    }
    await sleep(interval);
  }
}

// ---- REST shortcuts (setting the scene fast) ----

export async function rest(base, method, path, token, body) {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: {
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
      ...(body ? { 'Content-Type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export async function registerUser(base, prefix, displayName) {
  const username = uniqueName(prefix);
  const auth = await rest(base, 'POST', '/auth/register', null, { username, password: PASSWORD, display_name: displayName ?? null });
  return { ...auth.user, token: auth.token };
}

// ---- the page, by role and accessible name ----

export const nav = (page) => page.getByRole('navigation', { name: 'Chats' });
export const chatEntry = (page, name, exact = false) => nav(page).getByRole('link', { name, exact });
export const log = (page) => page.getByRole('log', { name: 'Messages' });
export const messages = (page, text) => log(page).getByRole('article').filter({ hasText: text });
export const statusText = (page) => page.getByRole('status').textContent();

export async function connected(page, timeout = 20000) {
  await eventually(async () => (await statusText(page)) === 'Connected', { timeout });
}

export async function signUp(page, username, displayName) {
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByLabel('Display name').fill(displayName);
  await page.getByRole('button', { name: 'Create account' }).click();
  await connected(page);
}

export async function signIn(page, username, password = PASSWORD) {
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

export async function openChat(page, name) {
  await chatEntry(page, name).click();
  await log(page).waitFor();
}

export async function send(page, text) {
  const box = page.getByRole('textbox', { name: 'Message', exact: true });
  await box.fill(text);
  await box.press('Enter');
}

/** Each text appears exactly once among the log's articles. */
export async function seenOnce(page, texts, timeout = 15000) {
  await eventually(
    async () => {
      const all = await log(page).getByRole('article').allTextContents();
      for (const t of texts) {
        const n = all.filter((a) => a.includes(t)).length;
        if (n !== 1) throw new Error(`"${t}" is shown ${n} times`);
      }
    },
    { timeout },
  );
}

export function screenshotPath(name) {
  mkdirSync(SHOTS, { recursive: true });
  return join(SHOTS, `${name}.png`);
}
