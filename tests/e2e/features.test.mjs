// The conversation features in the browser: replies, reactions, mentions,
// pins and search. Two people in two contexts, driven by role and accessible
// name; one server for the file, as in chat.test.mjs.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { Server, chatEntry, connected, eventually, sleep, launchBrowser, log, messages, openApp, openChat, rest, screenshotPath, send, signIn, signUp, uniqueName } from './helpers.mjs';

const T = { timeout: 60000 };
const server = new Server();
let browser;
let alice; // { context, page, username, name, id, token }
let bob;
const room = uniqueName('e2e-features');

async function person(prefix, name) {
  const { context, page } = await openApp(browser, server.base);
  const username = uniqueName(prefix);
  await signUp(page, username, name);
  const { token, id } = await page.evaluate(() => ({ token: sessionStorage.getItem('chatapp.token'), id: JSON.parse(sessionStorage.getItem('chatapp.user')).id }));
  await watchToasts(page);
  return { context, page, username, name, token, id };
}

/** Records every toast the page shows (a failed action says so in one, and it goes away after 4 s). */
function watchToasts(page) {
  return page.evaluate(() => {
    window.toasts = [];
    new MutationObserver(() => document.querySelectorAll('.toast').forEach((t) => window.toasts.includes(t.textContent) || window.toasts.push(t.textContent))).observe(document.body, { childList: true });
  });
}

/** A message's tool button (the tools show on hover); the first message with the text, not a reply quoting it. */
async function tool(page, text, name) {
  const m = messages(page, text).first();
  await m.hover();
  return m.getByRole('button', { name, exact: true });
}

describe('conversation features', { concurrency: false }, () => {
  before(async () => {
    await server.start();
    browser = await launchBrowser();
    alice = await person('alice', 'Alice Liddell');
    bob = await person('bob', 'Bob Builder');
    await alice.page.getByRole('button', { name: 'New chat' }).click();
    const dialog = alice.page.getByRole('dialog');
    await dialog.getByLabel('Chat name').fill(room);
    await dialog.getByLabel('Members').fill(bob.username);
    await dialog.getByRole('button', { name: 'Create' }).click();
    await log(alice.page).waitFor();
    await openChat(bob.page, room);
  });

  afterEach(async () => {
    for (const p of [alice, bob]) assert.deepEqual(await p.page.evaluate(() => window.toasts), [], `${p.name} was shown no error`);
  });

  after(async () => {
    const errors = [alice, bob].flatMap((p) => (p ? p.page.errors.map((e) => `${p.name}: ${e.message}`) : []));
    await browser?.close();
    await server.stop();
    assert.deepEqual(errors, [], 'no errors in the pages');
  });

  test('a reply quotes its original live on both sides, and says when it is deleted', T, async () => {
    const [a, b] = [alice.page, bob.page];
    await send(b, 'what time is lunch?');
    await messages(a, 'what time is lunch?').waitFor();
    // Start a reply and cancel it: the bar comes and goes.
    await (await tool(a, 'what time is lunch?', 'Reply to Bob Builder')).click();
    const bar = a.getByText('Replying to Bob Builder');
    await bar.waitFor();
    await a.getByRole('button', { name: 'Cancel reply' }).click();
    await bar.waitFor({ state: 'hidden' });
    await (await tool(a, 'what time is lunch?', 'Reply to Bob Builder')).click();
    await bar.waitFor();
    await send(a, 'at noon');
    await bar.waitFor({ state: 'hidden' });
    for (const page of [a, b]) {
      const quote = messages(page, 'at noon').locator('blockquote');
      await eventually(async () => /Bob Builder/.test(await quote.textContent()) && /what time is lunch\?/.test(await quote.textContent()));
    }
    await a.screenshot({ path: screenshotPath('reply') });
    // Bob deletes the original: Alice's quote says so, live.
    await (await tool(b, 'what time is lunch?', 'Delete')).click();
    await messages(b, 'what time is lunch?').first().getByRole('button', { name: 'Confirm delete' }).click();
    await eventually(async () => (await messages(a, 'at noon').locator('blockquote').textContent()) === 'Original message deleted');
  });

  test('reactions toggle and count live on both sides, and come back over REST', T, async () => {
    const [a, b] = [alice.page, bob.page];
    await send(a, 'cake in the kitchen');
    await messages(b, 'cake in the kitchen').waitFor();
    const focused = (page) => page.evaluate(() => document.activeElement?.getAttribute('aria-label'));
    await (await tool(b, 'cake in the kitchen', 'Add reaction')).click();
    const picker = messages(b, 'cake in the kitchen').getByRole('group', { name: 'Choose a reaction' });
    await picker.waitFor();
    assert.equal(await focused(b), '👍', 'the picker takes the focus');
    await picker.getByRole('button', { name: '👍' }).click();
    const chip = (page, name) => messages(page, 'cake in the kitchen').getByRole('button', { name, exact: true });
    await chip(b, '👍 1, you reacted').waitFor();
    await chip(a, '👍 1').waitFor();
    // Alice joins in: 2 on both sides.
    await chip(a, '👍 1').click();
    await chip(a, '👍 2, you reacted').waitFor();
    assert.equal(await focused(a), '👍 2, you reacted', 'the focus stays on the redrawn chip');
    await chip(b, '👍 2, you reacted').waitFor();
    await a.screenshot({ path: screenshotPath('reactions') });
    // A reload reads the counts over REST.
    await b.reload();
    await watchToasts(b);
    await chip(b, '👍 2, you reacted').waitFor();
    // Bob takes his back, then Alice hers: gone on both sides.
    await chip(b, '👍 2, you reacted').click();
    await chip(a, '👍 1, you reacted').waitFor();
    await chip(b, '👍 1').waitFor();
    await chip(a, '👍 1, you reacted').click();
    for (const page of [a, b]) {
      await eventually(async () => (await messages(page, 'cake in the kitchen').getByRole('button', { name: /^👍/ }).count()) === 0);
    }
    // Reactions while Bob is offline reach him once, from the replay.
    await bob.context.setOffline(true);
    await eventually(async () => (await b.getByRole('status').textContent()) !== 'Connected');
    await (await tool(a, 'cake in the kitchen', 'Add reaction')).click();
    await messages(a, 'cake in the kitchen').getByRole('button', { name: '🎉' }).click();
    await chip(a, '🎉 1, you reacted').waitFor();
    await bob.context.setOffline(false);
    await connected(b);
    await chip(b, '🎉 1').waitFor();
    await sleep(300);
    assert.equal(await chip(b, '🎉 1').count(), 1, 'counted once');
  });

  test('a reaction a REST copy already counts is not counted again when its frame comes after it', T, async () => {
    const a = alice.page;
    await send(a, 'count me once');
    const chatId = Number(/#\/chat\/(\d+)/.exec(a.url())[1]);
    // Bob in a second tab, whose socket's frames the test can hold back.
    let toPage = null;
    let held = null; // frames from the server kept back while set
    const context = await browser.newContext();
    context.setDefaultTimeout(15000);
    await context.routeWebSocket(/\/ws\?/, (ws) => {
      const upstream = ws.connectToServer();
      toPage = ws;
      upstream.onMessage((m) => (held ? held.push(m) : ws.send(m)));
    });
    const b = await context.newPage();
    const errors = [];
    b.on('pageerror', (e) => errors.push(e));
    const refetches = [];
    b.on('request', (r) => /\/api\/v1\/messages\/\d+$/.test(r.url()) && r.method() === 'GET' && refetches.push(r.url()));
    await b.goto(server.base);
    await signIn(b, bob.username);
    await connected(b);
    await openChat(b, room);
    await messages(b, 'count me once').waitFor();
    const [m] = await rest(server.base, 'GET', `/messages/chat/${chatId}?limit=1`, alice.token);
    assert.equal(m.content, 'count me once');
    // Alice reacts; her frame reaches Bob's socket and is held there.
    held = [];
    await rest(server.base, 'PUT', `/messages/${m.id}/reactions/${encodeURIComponent('👍')}`, alice.token);
    await eventually(() => held.some((f) => JSON.parse(f).type === 'reaction_added'));
    // Bob reacts too: the answer is a REST copy of the message that counts Alice's 👍 already.
    await (await tool(b, 'count me once', 'Add reaction')).click();
    await messages(b, 'count me once').getByRole('group', { name: 'Choose a reaction' }).getByRole('button', { name: '🎉' }).click();
    const chip = (name) => messages(b, 'count me once').getByRole('button', { name, exact: true });
    await chip('👍 1').waitFor();
    await chip('🎉 1, you reacted').waitFor();
    // Now the frames (Alice's 👍, then Bob's 🎉) arrive, after the copy.
    const frames = held;
    held = null;
    for (const f of frames) toPage.send(f);
    await send(a, 'after the reactions');
    await messages(b, 'after the reactions').waitFor(); // every frame before it is in
    const chips = () => messages(b, 'count me once').locator('.reactions .chip').evaluateAll((els) => els.map((e) => e.getAttribute('aria-label')));
    const want = ['👍 1', '🎉 1, you reacted'];
    await eventually(async () => assert.deepEqual(await chips(), want));
    await sleep(500);
    assert.deepEqual(await chips(), want, 'Alice\'s 👍 counted once');
    assert.equal(refetches.length, 1, 'the message was read again once');
    await context.close();
    assert.deepEqual(errors, [], 'no errors in the page');
  });

  test('an @mention is highlighted and counted in the chat list of the one mentioned', T, async () => {
    const [a, b] = [alice.page, bob.page];
    // Bob looks elsewhere, so the message stays unread.
    await b.evaluate(() => (location.hash = '#/'));
    await log(b).waitFor({ state: 'hidden' });
    await send(a, `@${bob.username} can you review this?`);
    await chatEntry(b, `${room}, 1 unread, 1 mention`, true).waitFor();
    const mine = messages(a, 'can you review this?').locator('.mention');
    assert.equal(await mine.textContent(), `@${bob.username}`);
    await openChat(b, room);
    const his = messages(b, 'can you review this?');
    await his.locator('.mention.you').waitFor();
    assert.match(await his.getAttribute('class'), /\bto-me\b/, 'the message is marked as mentioning Bob');
    await b.screenshot({ path: screenshotPath('mention') });
    // Reading it clears both counts.
    await chatEntry(b, room, true).waitFor();
  });

  test('an admin pins a message; the other sees it in the Pinned list live, then unpinned', T, async () => {
    const [a, b] = [alice.page, bob.page];
    await send(b, 'the wifi password is hunter2');
    await messages(a, 'the wifi password is hunter2').waitFor();
    // Bob is no admin of the group: no Pin for him.
    await messages(b, 'the wifi password is hunter2').hover();
    assert.equal(await messages(b, 'the wifi password is hunter2').getByRole('button', { name: 'Pin' }).count(), 0);
    await b.getByRole('button', { name: 'Chat details' }).click();
    const pinned = b.getByRole('complementary', { name: 'Chat details' }).getByRole('list', { name: 'Pinned messages' });
    await (await tool(a, 'the wifi password is hunter2', 'Pin')).click();
    await pinned.getByText('the wifi password is hunter2').waitFor();
    await messages(b, 'the wifi password is hunter2').getByText('Pinned', { exact: true }).waitFor();
    await b.screenshot({ path: screenshotPath('pinned') });
    await (await tool(a, 'the wifi password is hunter2', 'Unpin')).click();
    await pinned.waitFor({ state: 'detached' });
    await b.getByText('No pinned messages.').waitFor();
    assert.equal(await messages(b, 'the wifi password is hunter2').getByText('Pinned', { exact: true }).count(), 0);
    await b.getByRole('button', { name: 'Chat details' }).click();
  });

  test('search finds a message in another chat and opens that chat', T, async () => {
    const a = alice.page;
    // A direct message Alice does not have open, written over REST by Bob.
    const dm = await rest(server.base, 'POST', '/chats', bob.token, { is_group: false, member_ids: [alice.id] });
    await rest(server.base, 'POST', '/messages', bob.token, { chat_id: dm.id, content: 'the boat leaves for zanzibar at dawn' });
    const box = a.getByRole('searchbox', { name: 'Search messages' });
    await box.fill('zanzib*');
    const results = a.getByRole('region', { name: 'Search results' });
    const hit = results.getByRole('link', { name: /zanzibar at dawn/ });
    await hit.waitFor();
    assert.match(await hit.textContent(), /^Bob Builder.* direct message with Bob Builder .*the boat leaves/);
    await a.screenshot({ path: screenshotPath('search') });
    // Narrowed to the open chat (the group), it finds nothing.
    const here = a.getByRole('checkbox', { name: 'Only the open chat' });
    await here.check();
    await results.getByText('Nothing found.').waitFor();
    await here.uncheck();
    await hit.waitFor();
    await hit.click();
    await a.getByRole('heading', { name: 'Bob Builder' }).waitFor();
    const found = messages(a, 'the boat leaves for zanzibar at dawn');
    await found.waitFor();
    await eventually(async () => /\bflash\b/.test(await found.getAttribute('class'))); // shown where it is
    assert.equal(await box.inputValue(), '');
    await results.waitFor({ state: 'hidden' });
  });
});
