// The web client end to end, in Debian's Chromium: two people in two browser
// contexts, driven by role and accessible name. One server for the whole file
// (the tests start and stop it themselves, so one of them can restart it).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  PASSWORD,
  Server,
  chatEntry,
  connected,
  eventually,
  launchBrowser,
  log,
  messages,
  nav,
  openApp,
  openChat,
  registerUser,
  rest,
  screenshotPath,
  seenOnce,
  send,
  signIn,
  signUp,
  statusText,
  uniqueName,
} from './helpers.mjs';

const T = { timeout: 90000 };
const server = new Server();
let browser;
let alice; // { context, page, username, name }
let bob;
const room = uniqueName('e2e-room');

/** Every WebSocket URL a page opened, and every REST request it made, in order. */
function watch(page) {
  const seen = { sockets: [], requests: [] };
  page.on('websocket', (ws) => seen.sockets.push(ws.url()));
  page.on('request', (r) => r.url().includes('/api/') && seen.requests.push(`${r.method()} ${new URL(r.url()).pathname}`));
  return seen;
}

async function person(prefix, name) {
  const { context, page } = await openApp(browser, server.base);
  const username = uniqueName(prefix);
  await signUp(page, username, name);
  return { context, page, username, name, seen: watch(page) };
}

describe('web client', { concurrency: false }, () => {
  before(async () => {
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    const errors = [alice, bob].flatMap((p) => (p ? p.page.errors.map((e) => `${p.name}: ${e.message}`) : []));
    await browser?.close();
    await server.stop();
    assert.deepEqual(errors, [], 'no errors in the pages');
  });

  test('the page is served with its CSP and renders the sign-in form', T, async () => {
    const res = await fetch(`${server.base}/`);
    assert.match(res.headers.get('content-security-policy'), /script-src 'self'/);
    const { context, page } = await openApp(browser, server.base);
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    await page.getByLabel('Username').waitFor();
    await page.screenshot({ path: screenshotPath('sign-in-light') });
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.screenshot({ path: screenshotPath('sign-in-dark') });
    assert.deepEqual(page.errors, []);
    await context.close();
  });

  test('the API reference at /api/docs renders every operation under its CSP', T, async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(15000);
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    page.on('requestfailed', (r) => problems.push(`failed: ${r.url()}`));
    page.on('response', (r) => r.status() >= 400 && problems.push(`${r.status()}: ${r.url()}`));
    // Runs before the page's own scripts (and is not subject to its CSP).
    await page.addInitScript(() => {
      window.cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) =>
        window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`),
      );
    });
    const res = await page.goto(`${server.base}/api/docs`);
    assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
    await page.locator('.opblock').first().waitFor();
    await eventually(async () => (await page.locator('.opblock').count()) > 30);
    const ops = await page.locator('.opblock-summary-path').allTextContents();
    for (const path of ['/api/v1/messages', '/api/v1/chats/{id}/members/{memberId}', '/web/js/{module}']) {
      assert.ok(
        ops.some((o) => o.replace(/\u200b/g, '') === path),
        `${path} among ${ops.length} operations`,
      );
    }
    await page.screenshot({ path: screenshotPath('api-docs') });
    assert.deepEqual(await page.evaluate(() => window.cspViolations), []);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('a bad password shows an error message', T, async () => {
    const user = await registerUser(server.base, 'pw');
    const { context, page } = await openApp(browser, server.base);
    await signIn(page, user.username, 'not the password');
    const alert = page.getByRole('alert');
    await alert.waitFor();
    assert.match(await alert.textContent(), /wrong username or password/i);
    assert.equal(await page.getByRole('button', { name: 'Sign in' }).isVisible(), true);
    await context.close();
  });

  test('two people register, make a group and chat live', T, async () => {
    alice = await person('alice', 'Alice Liddell');
    bob = await person('bob', 'Bob Builder');

    const a = alice.page;
    await a.getByRole('button', { name: 'New chat' }).click();
    const dialog = a.getByRole('dialog');
    await dialog.getByLabel('Chat name').fill(room);
    await dialog.getByLabel('Members').fill(bob.username.toUpperCase()); // usernames match case-insensitively
    await dialog.getByRole('button', { name: 'Create' }).click();
    await log(a).waitFor();

    // Bob is told about the new chat without a reload.
    await chatEntry(bob.page, room).waitFor();

    await send(a, 'hello bob');
    // Unread counts in the entry's accessible name.
    await send(a, 'are you there?');
    await chatEntry(bob.page, `${room}, 2 unread`, true).waitFor();
    await openChat(bob.page, room);
    const first = messages(bob.page, 'hello bob');
    await first.waitFor();
    assert.match(await first.textContent(), /Alice Liddell/);
    // Reading moves the marker: the count goes away.
    await chatEntry(bob.page, room, true).waitFor();

    // Bob answers with the button, Alice sees it live.
    await bob.page.getByRole('textbox', { name: 'Message', exact: true }).fill('hi alice');
    await bob.page.getByRole('button', { name: 'Send' }).click();
    const reply = messages(a, 'hi alice');
    await reply.waitFor();
    assert.match(await reply.textContent(), /Bob Builder/);
    await seenOnce(a, ['hello bob', 'are you there?', 'hi alice']);
    await seenOnce(bob.page, ['hello bob', 'are you there?', 'hi alice']);

    await a.screenshot({ path: screenshotPath('chat-light') });
    await a.emulateMedia({ colorScheme: 'dark' });
    await a.screenshot({ path: screenshotPath('chat-dark') });
    await a.emulateMedia({ colorScheme: 'light' });
  });

  test('typing shows on the other side', T, async () => {
    const box = alice.page.getByRole('textbox', { name: 'Message', exact: true });
    const shown = bob.page.getByText('Alice Liddell is typing…');
    // Keep typing, as a person would, until Bob is told (signals are at most one per 2 s).
    await eventually(async () => {
      await box.press('a');
      return shown.isVisible();
    }, { timeout: 10000, interval: 100 });
    await box.fill('');
    // And it goes away once she stops.
    await shown.waitFor({ state: 'hidden' });
  });

  test('edit and delete show up live', T, async () => {
    const a = alice.page;
    await send(a, 'a message to fix');
    const mine = messages(a, 'a message to fix');
    await messages(bob.page, 'a message to fix').waitFor();
    await mine.hover();
    await mine.getByRole('button', { name: 'Edit' }).click();
    const box = a.getByRole('textbox', { name: 'Edit text' });
    await box.fill('a message, fixed');
    await box.press('Enter');
    const edited = messages(bob.page, 'a message, fixed');
    await edited.waitFor();
    assert.match(await edited.textContent(), /edited/);
    assert.equal(await messages(bob.page, 'a message to fix').count(), 0);

    const fixed = messages(a, 'a message, fixed');
    await fixed.hover();
    await fixed.getByRole('button', { name: 'Delete' }).click();
    await fixed.getByRole('button', { name: 'Confirm delete' }).click();
    await eventually(async () => (await messages(bob.page, 'a message, fixed').count()) === 0);
    await eventually(async () => (await messages(a, 'a message, fixed').count()) === 0);
  });

  test('a page taken offline shows what it missed exactly once, without a reload', T, async () => {
    const b = bob.page;
    await b.evaluate(() => (window.__sameDocument = true));
    await bob.context.setOffline(true);
    await eventually(async () => (await statusText(b)) !== 'Connected');
    bob.seen.requests.length = 0;
    const texts = [1, 2, 3, 4, 5].map((n) => `while offline #${n}#`);
    for (const t of texts) await send(alice.page, t);
    await seenOnce(alice.page, texts);
    await bob.context.setOffline(false);
    await connected(b);
    await seenOnce(b, texts);
    assert.equal(await b.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
    assert.match(bob.seen.sockets.at(-1), /[?&]since=\d+/);
    // Resumed from the replay: nothing was reloaded over REST.
    assert.deepEqual(bob.seen.requests.filter((r) => r.startsWith('GET')), []);
  });

  test('a server restart: both pages reconnect by themselves, nothing lost or doubled', { ...T, skip: !server.managed && 'needs CHATAPP_BIN' }, async () => {
    const a = alice.page;
    const b = bob.page;
    bob.seen.requests.length = 0;
    const socketsBefore = bob.seen.sockets.length;
    await server.stop();
    await eventually(async () => (await statusText(a)) !== 'Connected' && (await statusText(b)) !== 'Connected');
    // Written while the server is down: shown as pending, sent once it is back.
    const texts = [1, 2, 3, 4, 5].map((n) => `across the restart #${n}#`);
    for (const t of texts) await send(a, t);
    await eventually(async () => (await messages(a, 'across the restart').count()) === 5);
    assert.match(await messages(a, 'across the restart #5#').textContent(), /Sending/);
    await server.start();
    await connected(a, 30000);
    await connected(b, 30000);
    await seenOnce(b, texts, 20000);
    await seenOnce(a, texts, 20000);
    await eventually(async () => !/Sending/.test(await log(a).textContent()));
    const resumed = bob.seen.sockets.slice(socketsBefore);
    assert.ok(resumed.length > 0 && resumed.every((u) => /[?&]since=\d+/.test(u)), `bob reconnected with since: ${resumed}`);
    assert.deepEqual(bob.seen.requests.filter((r) => r.startsWith('GET') && !r.endsWith('/auth/me')), []);
  });

  test('a server that dies: the page reconnects by itself and has what was sent meanwhile once', { ...T, skip: !server.managed && 'needs CHATAPP_BIN' }, async () => {
    // Arrange
    const hana = await registerUser(server.base, 'hana', 'Hana');
    const name = uniqueName('killed');
    const chat = await rest(server.base, 'POST', '/chats', hana.token, { name, is_group: true, member_ids: [] });
    const { context, page } = await openApp(browser, server.base);
    const seen = watch(page);
    await signIn(page, hana.username);
    await connected(page);
    await openChat(page, name);
    const socketsBefore = seen.sockets.length;

    // Act: the node dies without a close frame; a message is sent once it is back.
    await server.kill();
    await eventually(async () => (await statusText(page)) !== 'Connected');
    await server.start();
    const text = `sent while hana was away ${name}`;
    await rest(server.base, 'POST', '/messages', hana.token, { chat_id: chat.id, content: text });

    // Assert: resumed with `since`, the message shown once.
    await connected(page, 30000);
    await seenOnce(page, [text]);
    const resumed = seen.sockets.slice(socketsBefore);
    assert.ok(resumed.length > 0 && resumed.every((u) => /[?&]since=\d+/.test(u)), `hana reconnected with since: ${resumed}`);
    await context.close();
    await connected(alice.page, 30000);
    await connected(bob.page, 30000);
  });

  test('a send whose ack was lost is re-sent with its client_id after a reconnect, and shown once', T, async () => {
    const dave = await registerUser(server.base, 'dave', 'Dave');
    const name = uniqueName('retry');
    const chat = await rest(server.base, 'POST', '/chats', dave.token, { name, is_group: true, member_ids: [] });
    const sent = [];
    const acks = [];
    let cut = true;
    const context = await browser.newContext();
    context.setDefaultTimeout(15000);
    // A proxy between the page and the server that loses the first ack of a
    // send, and the connection with it (as a network failure would).
    await context.routeWebSocket(/\/ws\?/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((m) => {
        sent.push(JSON.parse(m));
        upstream.send(m);
      });
      upstream.onMessage((m) => {
        const f = JSON.parse(m);
        if (f.type === 'ack' && f.payload?.client_id) {
          acks.push(f.payload);
          if (cut) {
            cut = false;
            ws.close({ code: 1012, reason: 'test: the ack was lost' });
            upstream.close();
            return;
          }
        }
        ws.send(m);
      });
    });
    const page = await context.newPage();
    await page.goto(server.base);
    await signIn(page, dave.username);
    await connected(page);
    await openChat(page, name);
    await send(page, 'only once, please');
    // The reconnect, the second send and its ack.
    await eventually(() => acks.length === 2);
    await connected(page);
    await seenOnce(page, ['only once, please']);
    await eventually(async () => !/Sending/.test(await log(page).textContent()));
    const sends = sent.filter((f) => f.type === 'message');
    assert.equal(sends.length, 2, 'sent again after the reconnect');
    assert.equal(sends[1].payload.client_id, sends[0].payload.client_id);
    assert.equal(acks.length, 2);
    assert.equal(acks[1].duplicate, true);
    assert.equal(acks[1].message_id, acks[0].message_id);
    const stored = await rest(server.base, 'GET', `/messages/chat/${chat.id}`, dave.token);
    assert.equal(stored.filter((m) => m.content === 'only once, please').length, 1);
    await context.close();
  });

  test('close codes: a retry_after_ms hint is honoured, 4001 ends the session', T, async () => {
    const erin = await registerUser(server.base, 'erin', 'Erin');
    const opened = [];
    let current = null;
    const context = await browser.newContext();
    context.setDefaultTimeout(15000);
    await context.routeWebSocket(/\/ws\?/, (ws) => {
      opened.push(Date.now());
      current = ws;
      ws.connectToServer();
    });
    const page = await context.newPage();
    await page.goto(server.base);
    await signIn(page, erin.username);
    await connected(page);
    const first = opened.length;
    const closedAt = Date.now();
    current.close({ code: 4008, reason: '{"retry_after_ms":1500}' });
    await eventually(async () => (await statusText(page)) !== 'Connected');
    await connected(page);
    assert.equal(opened.length, first + 1);
    assert.ok(opened.at(-1) - closedAt >= 1400, `reconnected after ${opened.at(-1) - closedAt} ms, asked to wait 1500`);
    current.close({ code: 4001, reason: 'token expired or revoked' });
    const alert = page.getByRole('alert');
    await alert.waitFor();
    assert.match(await alert.textContent(), /session has ended/i);
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    await context.close();
  });

  test('a socket that stops answering is pinged, given up and replaced', T, async () => {
    const frank = await registerUser(server.base, 'frank', 'Frank');
    const opened = [];
    const pings = [];
    let silenced = null;
    const context = await browser.newContext();
    context.setDefaultTimeout(15000);
    await context.routeWebSocket(/\/ws\?/, (ws) => {
      opened.push(ws);
      const upstream = ws.connectToServer();
      ws.onMessage((m) => {
        if (JSON.parse(m).type === 'ping') pings.push(ws);
        upstream.send(m);
      });
      // A silenced socket is half-open: what the server says never arrives.
      upstream.onMessage((m) => silenced !== ws && ws.send(m));
    });
    const page = await context.newPage();
    await page.clock.install();
    await page.goto(server.base);
    await signIn(page, frank.username);
    await connected(page);
    silenced = opened.at(-1);
    await page.clock.fastForward(16000);
    await eventually(() => pings.some((ws) => ws === silenced), { timeout: 5000 });
    assert.equal(opened.length, 1, 'still trusting the socket while its ping may be answered');
    await page.clock.fastForward(10000);
    await eventually(async () => {
      await page.clock.fastForward(500);
      return opened.length === 2;
    });
    await connected(page);
    await context.close();
  });

  test('a send over the rate limit waits the time the server names, then goes through once', T, async () => {
    const gina = await registerUser(server.base, 'gina', 'Gina');
    const name = uniqueName('limited');
    const chat = await rest(server.base, 'POST', '/chats', gina.token, { name, is_group: true, member_ids: [] });
    const sent = [];
    const refused = [];
    const context = await browser.newContext();
    context.setDefaultTimeout(15000);
    // Before the page's first send reaches the server, Gina's burst of
    // messages is spent over REST, so the server refuses that send.
    let spent = false;
    await context.routeWebSocket(/\/ws\?/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage(async (m) => {
        const f = JSON.parse(m);
        if (f.type === 'message' && !spent) {
          spent = true;
          for (let i = 0; ; i++) {
            const res = await fetch(`${server.base}/api/v1/messages`, {
              method: 'POST',
              headers: { Authorization: `Bearer ${gina.token}`, 'Content-Type': 'application/json' },
              body: JSON.stringify({ chat_id: chat.id, content: `filler ${i}` }),
            });
            const body = await res.json();
            if (res.status === 429) {
              // The next token may be due any moment: stop only when the
              // limiter's wait leaves the page's send no fresh one.
              const wait = Number(/try again in (\d+) ms/.exec(body.error)?.[1] ?? 0);
              if (wait >= 500) break;
              await new Promise((resolve) => setTimeout(resolve, wait + 5));
              continue;
            }
            assert.equal(res.status, 201);
          }
        }
        if (f.type === 'message') sent.push(f);
        upstream.send(m);
      });
      upstream.onMessage((m) => {
        const f = JSON.parse(m);
        if (f.type === 'error' && f.payload?.code === 'rate_limited') refused.push(f);
        ws.send(m);
      });
    });
    const page = await context.newPage();
    page.errors = [];
    page.on('pageerror', (e) => page.errors.push(e));
    await page.goto(server.base);
    await signIn(page, gina.username);
    await connected(page);
    await openChat(page, name);
    await send(page, 'worth the wait');
    await seenOnce(page, ['worth the wait']);
    await eventually(async () => !/Sending/.test(await log(page).textContent()));
    assert.ok(refused.length >= 1, 'the server refused the first send');
    assert.ok(refused[0].payload.retry_after_ms >= 1, JSON.stringify(refused[0]));
    assert.equal(refused[0].payload.ref, sent[0].ref);
    assert.ok(sent.length >= 2, 'sent again');
    assert.ok(sent.every((f) => f.payload.client_id === sent[0].payload.client_id), 'with the same client_id');
    const stored = await rest(server.base, 'GET', `/messages/chat/${chat.id}?limit=5`, gina.token);
    assert.equal(stored.filter((m) => m.content === 'worth the wait').length, 1);
    assert.equal(await page.getByText('Not sent').count(), 0);
    assert.deepEqual(page.errors, []);
    await context.close();
  });

  test('a direct message', T, async () => {
    const a = alice.page;
    await a.getByRole('button', { name: 'New chat' }).click();
    const dialog = a.getByRole('dialog');
    await dialog.getByRole('checkbox', { name: 'Direct message' }).check();
    await dialog.getByLabel('Members').fill(bob.username);
    await dialog.getByRole('button', { name: 'Create' }).click();
    await log(a).waitFor();
    await a.getByRole('heading', { name: 'Bob Builder' }).waitFor();
    await send(a, 'just between us');
    // Bob's entry is named after Alice, with the unread count.
    await chatEntry(bob.page, 'Alice Liddell, 1 unread', true).waitFor();
    await openChat(bob.page, 'Alice Liddell');
    await messages(bob.page, 'just between us').waitFor();
    await send(bob.page, 'sure thing');
    await messages(a, 'sure thing').waitFor();
  });

  test('200 messages of history page in as you scroll up', T, async () => {
    // Four senders, 50 messages each: within the server's burst of messages
    // per user, so the scene is set without waiting out its rate limit.
    const senders = [];
    for (const n of ['carol', 'dan', 'eve', 'fay']) senders.push(await registerUser(server.base, n, `History ${n}`));
    const name = uniqueName('history');
    const memberIds = [alice.id ?? (await aliceId()), ...senders.slice(1).map((u) => u.id)];
    const chat = await rest(server.base, 'POST', '/chats', senders[0].token, { name, is_group: true, member_ids: memberIds });
    for (let i = 1; i <= 200; i++) {
      const sender = senders[i % senders.length];
      await rest(server.base, 'POST', '/messages', sender.token, { chat_id: chat.id, content: `history ${String(i).padStart(3, '0')}` });
    }
    const a = alice.page;
    await chatEntry(a, `${name}, 200 unread`, true).waitFor();
    await openChat(a, name);
    await messages(a, 'history 200').waitFor();
    assert.ok((await log(a).getByRole('article').count()) <= 100, 'only the newest pages at first');
    await eventually(
      async () => {
        await log(a).evaluate((el) => (el.scrollTop = 0));
        return (await messages(a, 'history 001').count()) === 1;
      },
      { timeout: 20000, interval: 150 },
    );
    const all = await log(a).getByRole('article').allTextContents();
    const texts = all.map((t) => /history \d{3}/.exec(t)?.[0]).filter(Boolean);
    assert.equal(texts.length, 200);
    assert.deepEqual(texts, [...texts].sort());
    assert.equal(new Set(texts).size, 200);
  });

  test('members: add, promote, remove, leave', T, async () => {
    const a = alice.page;
    const b = bob.page;
    const carol = await registerUser(server.base, 'carol', 'Carol Members');
    await openChat(a, room);
    await a.getByRole('button', { name: 'Chat details' }).click();
    const details = a.getByRole('complementary', { name: 'Chat details' });
    await details.getByRole('textbox', { name: 'Add people' }).fill(carol.username);
    await details.getByRole('button', { name: 'Add', exact: true }).click();
    await details.getByText('Carol Members').waitFor();
    await a.screenshot({ path: screenshotPath('chat-details') });
    await details.getByRole('button', { name: 'Promote Bob Builder to admin' }).click();
    // Bob is an admin now: he gets the admin controls.
    await openChat(b, room);
    await b.getByRole('button', { name: 'Chat details' }).click();
    const bobDetails = b.getByRole('complementary', { name: 'Chat details' });
    await bobDetails.getByRole('button', { name: 'Remove Carol Members from the chat' }).click();
    await eventually(async () => (await details.getByText('Carol Members').count()) === 0);
    await details.getByRole('button', { name: 'Leave chat' }).click();
    await eventually(async () => (await chatEntry(a, room).count()) === 0);
    await b.getByText(`${alice.username} left the chat`).waitFor();
    await eventually(async () => (await bobDetails.getByText('Alice Liddell').count()) === 0);
    await b.getByRole('button', { name: 'Chat details' }).click();
  });

  test('sign-out and sign-in keep the chat list', T, async () => {
    const a = alice.page;
    const before = await nav(a).getByRole('link').allTextContents();
    assert.ok(before.length >= 2);
    await a.getByRole('button', { name: 'Sign out' }).click();
    await a.getByRole('button', { name: 'Sign in' }).waitFor();
    await signIn(a, alice.username, PASSWORD);
    await connected(a);
    await chatEntry(a, 'Bob Builder').waitFor();
    await eventually(async () => (await nav(a).getByRole('link').count()) === before.length);
    await a.screenshot({ path: screenshotPath('chat-list') });
  });

  test('a phone-sized screen shows one column', T, async () => {
    const { context, page } = await openApp(browser, server.base, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await signIn(page, bob.username);
    await connected(page);
    await chatEntry(page, 'Alice Liddell').waitFor();
    assert.equal(await log(page).isVisible(), false, 'the list alone');
    await page.screenshot({ path: screenshotPath('phone-list') });
    await openChat(page, 'Alice Liddell');
    await messages(page, 'sure thing').waitFor();
    assert.equal(await nav(page).isVisible(), false, 'the chat alone');
    await page.screenshot({ path: screenshotPath('phone-chat') });
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.screenshot({ path: screenshotPath('phone-chat-dark') });
    await page.getByRole('button', { name: 'Back to chats' }).click();
    await nav(page).waitFor();
    await context.close();
  });
});

async function aliceId() {
  const auth = await rest(server.base, 'POST', '/auth/login', null, { username: alice.username, password: PASSWORD });
  alice.id = auth.user.id;
  return alice.id;
}
