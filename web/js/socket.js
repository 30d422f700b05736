// The real-time connection: one WebSocket per tab that resumes where it left off.
//
// - Every durable event carries an increasing event_id; the highest one applied
//   is sent back as `since` on reconnect, and anything at or below it is dropped,
//   so nothing is missed and nothing is applied twice.
// - Requests that expect a reply carry a `ref`; up to WINDOW are in flight at once
//   (the server reads on while it commits, and replies in order).
// - Durable requests (message sends, whose client_id makes a retry harmless) stay
//   queued across reconnects and are re-sent until acknowledged; one refused as
//   `rate_limited` waits the `retry_after_ms` the server gave, then goes again.
// - A socket that stops answering, the browser going offline, a server restart or
//   any close leads to a reconnect with exponential backoff and jitter.

export const WINDOW = 32;
const PING_AFTER_MS = 15000; // ping when nothing was received for this long
const DEAD_AFTER_MS = 25000; // and give up on the socket when still nothing came
const CONNECT_TIMEOUT_MS = 15000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;
const TICK_MS = 1000;
const RATE_LIMIT_WAIT_MS = 1000; // when a rate_limited error names no wait

export class Connection {
  /**
   * opts: token, onFrame(frame), onReady(readyPayload, resumed), onStatus(status),
   * onAuthLost(closeCode), checkAuth() → Promise<boolean|null> (false: the token is refused)
   */
  constructor(opts) {
    this.o = opts;
    this.ws = null;
    this.gen = 0;
    this.state = 'idle';
    this.lastEventId = null;
    this.queue = [];
    this.inflight = new Map();
    this.waiting = new Set(); // rate-limited durable requests, until their time comes
    this.attempt = 0;
    this.seq = 0;
    this.timer = null;
    this.listeners = {
      online: () => this.online(),
      offline: () => this.drop('offline'),
      visibilitychange: () => this.visible(),
    };
  }

  start() {
    for (const [ev, fn] of Object.entries(this.listeners)) {
      (ev === 'visibilitychange' ? document : window).addEventListener(ev, fn);
    }
    this.ticker = setInterval(() => this.tick(), TICK_MS);
    this.connect();
  }

  stop() {
    for (const [ev, fn] of Object.entries(this.listeners)) {
      (ev === 'visibilitychange' ? document : window).removeEventListener(ev, fn);
    }
    clearInterval(this.ticker);
    clearTimeout(this.timer);
    this.state = 'stopped';
    const ws = this.ws;
    this.ws = null;
    this.gen++;
    if (ws) ws.close(1000, 'signed out');
    const err = new Error('stopped');
    for (const e of this.waiting) clearTimeout(e.timer);
    for (const e of [...this.inflight.values(), ...this.waiting, ...this.queue]) e.reject(err);
    this.inflight.clear();
    this.waiting.clear();
    this.queue = [];
  }

  get ready() {
    return this.state === 'ready';
  }

  /** Sends a request and resolves with its reply (`ack`/`pong` frame), rejects with an `error` payload. */
  request(type, payload, { durable = false } = {}) {
    return new Promise((resolve, reject) => {
      if (!durable && !this.ready) return reject(new Error('not connected'));
      this.queue.push({ type, payload, durable, resolve, reject });
      this.pump();
    });
  }

  /** A frame without a reply (typing): sent only while connected. */
  notify(type, payload) {
    if (this.ready) this.ws.send(JSON.stringify({ type, payload }));
  }

  /** Sends a message; resolves with the ack payload. Re-sent with the same client_id until acked. */
  sendMessage(chat_id, content, client_id, reply_to_id = null) {
    return this.request('message', { chat_id, content, client_id, reply_to_id }, { durable: true }).then((f) => f.payload);
  }

  /** Reconnects now (the user asked, or the network came back). */
  retryNow() {
    this.attempt = 0;
    if (!this.ws && this.state !== 'stopped') this.connect();
  }

  // ---- internals ----

  pump() {
    while (this.ready && this.queue.length && this.inflight.size < WINDOW) {
      const e = this.queue.shift();
      e.ref = `r${++this.seq}`;
      this.inflight.set(e.ref, e);
      this.ws.send(JSON.stringify({ type: e.type, payload: e.payload, ref: e.ref }));
    }
    this.status();
  }

  connect() {
    clearTimeout(this.timer);
    if (this.ws || this.state === 'stopped') return;
    if (!navigator.onLine) return this.setState('offline');
    const gen = ++this.gen;
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const params = new URLSearchParams({ token: this.o.token });
    this.since = this.lastEventId;
    if (this.since != null) params.set('since', this.since);
    let ws;
    try {
      ws = new WebSocket(`${proto}://${location.host}/ws?${params}`);
    } catch {
      return this.reconnectLater();
    }
    this.ws = ws;
    this.opened = false;
    this.startedAt = Date.now();
    this.setState('connecting');
    ws.onopen = () => {
      if (gen === this.gen) this.opened = true;
    };
    ws.onmessage = (ev) => {
      if (gen === this.gen) this.receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (gen === this.gen) this.closed(ev.code, ev.reason);
    };
  }

  /** Gives up on the current socket at once (its close event, if any, is ignored). */
  drop(why) {
    if (!this.ws) {
      if (why === 'offline' && this.state !== 'stopped') this.setState('offline');
      return;
    }
    const ws = this.ws;
    this.gen++;
    try {
      ws.close(4000, why);
    } catch {
      /* already closing */
    }
    this.closed(4000, why);
  }

  closed(code, reason) {
    const opened = this.opened;
    this.ws = null;
    this.opened = false;
    // Unanswered durable requests go back to the front of the queue, in order;
    // the others fail (the caller falls back to REST or drops them).
    const retry = [];
    for (const e of this.inflight.values()) {
      if (e.durable) retry.push(e);
      else e.reject(new Error('disconnected'));
    }
    this.inflight.clear();
    this.queue = [...retry, ...this.queue];
    if (this.state === 'stopped') return;
    if (code === 4001 || code === 4003) {
      this.stop();
      this.o.onAuthLost(code);
      return;
    }
    if (!opened && this.o.checkAuth) {
      // The browser hides the HTTP status of a refused upgrade: ask over REST
      // whether the token is still good, so a revoked one ends at sign-in.
      this.o.checkAuth().then((ok) => {
        if (ok === false && this.state !== 'stopped') {
          this.stop();
          this.o.onAuthLost(4001);
        }
      });
    }
    let hint = retryAfter(reason);
    if (hint == null && code === 4008) hint = 1000 + Math.random() * 1000;
    this.reconnectLater(hint);
  }

  reconnectLater(hintMs) {
    clearTimeout(this.timer);
    if (this.state === 'stopped') return;
    if (!navigator.onLine) return this.setState('offline');
    const exp = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt++;
    // Full jitter over the upper half: clients cut off together do not return together.
    const delay = hintMs != null ? hintMs * (1 + Math.random() * 0.2) : exp / 2 + (Math.random() * exp) / 2;
    this.nextAt = Date.now() + delay;
    this.setState('waiting');
    this.timer = setTimeout(() => this.connect(), delay);
  }

  online() {
    this.attempt = 0;
    if (!this.ws && this.state !== 'stopped') this.connect();
  }

  visible() {
    if (document.visibilityState !== 'visible') return;
    if (this.ready) this.ping();
    else if (this.state === 'waiting') this.retryNow();
  }

  ping() {
    if (!this.ready) return;
    this.pingAt = Date.now();
    this.ws.send(JSON.stringify({ type: 'ping', ref: `p${++this.seq}` }));
  }

  tick() {
    const now = Date.now();
    if (this.ready) {
      const quiet = now - this.lastRx;
      if (quiet > DEAD_AFTER_MS) return this.drop('no answer');
      if (quiet > PING_AFTER_MS && !(this.pingAt > this.lastRx)) this.ping();
    } else if (this.state === 'connecting' && now - this.startedAt > CONNECT_TIMEOUT_MS) {
      this.drop('connect timeout');
    } else if (this.state === 'waiting') {
      this.status(); // the countdown
    }
  }

  receive(data) {
    this.lastRx = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    const p = f.payload || {};
    if (f.type === 'ready') return this.readied(p);
    if (f.type === 'ack' || f.type === 'pong' || f.type === 'error') {
      const ref = f.ref ?? p.ref;
      const e = ref != null && this.inflight.get(ref);
      if (e) {
        this.inflight.delete(ref);
        if (f.type === 'error' && e.durable && p.code === 'rate_limited') this.later(e, p.retry_after_ms);
        else if (f.type === 'error') e.reject(Object.assign(new Error(p.error || 'error'), { code: p.code }));
        else e.resolve(f);
        this.pump();
        return;
      }
      if (f.type !== 'error') return;
    }
    if (p.event_id != null) {
      if (this.lastEventId != null && p.event_id <= this.lastEventId) return; // seen
      this.lastEventId = p.event_id;
    }
    this.o.onFrame(f);
  }

  /** Queues a rate-limited durable request again once the server's wait is over. */
  later(e, waitMs) {
    this.waiting.add(e);
    e.timer = setTimeout(() => {
      if (!this.waiting.delete(e)) return;
      this.queue.push(e);
      this.pump();
    }, Math.max(Number(waitMs) || RATE_LIMIT_WAIT_MS, 1));
  }

  readied(p) {
    const resumed = this.since != null && p.recovered === true;
    // Not resumed: nothing was replayed; the caller reloads over REST, which
    // covers every event up to now, so resume from here next time.
    if (!resumed) this.lastEventId = p.last_event_id;
    this.attempt = 0;
    this.setState('ready');
    this.o.onReady(p, resumed);
    this.pump();
  }

  setState(state) {
    this.state = state;
    this.status();
  }

  status() {
    this.o.onStatus({
      state: this.state,
      retryIn: this.state === 'waiting' ? Math.max(0, this.nextAt - Date.now()) : 0,
      unacked: this.queue.length + this.inflight.size + this.waiting.size,
    });
  }
}

/** A close reason may carry a hint: `{"retry_after_ms":N}`, `retry_after_ms=N` or a bare number. */
export function retryAfter(reason) {
  if (!reason) return null;
  let n = null;
  try {
    const v = JSON.parse(reason);
    n = typeof v === 'number' ? v : v?.retry_after_ms;
  } catch {
    const m = /retry_after_ms\D{0,3}(\d+)/.exec(reason);
    if (m) n = Number(m[1]);
  }
  if (n == null || n === '') return null;
  n = Number(n);
  return Number.isFinite(n) && n >= 0 ? Math.min(n, 5 * 60000) : null;
}
