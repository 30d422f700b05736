//! The HTTP server: accepts connections and serves the routes over HTTP/1.1
//! with the bounds warp's own server does not set. A request head must
//! arrive within `http.header_read_timeout_secs` of its first byte, however
//! slowly it trickles in; an idle keep-alive connection is closed after
//! `http.keep_alive_secs`; at most `http.max_connections` connections are
//! open at once (WebSockets included: an upgraded connection keeps its
//! slot until it closes).
//!
//! Every request gets an id (its `X-Request-Id`, or a new one), returned in
//! the response's header and error body and carried by the log lines
//! written while it is served; each is logged and counted once here.

use crate::config::HttpConfig;
use crate::metrics::{self, Metrics};
use crate::{contract, logging};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::time::Sleep;

/// The client's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// A connection's place under `http.max_connections`, in every request's
/// extensions: a WebSocket keeps it for as long as it is open.
#[derive(Clone, Debug)]
pub struct ConnSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The answer to a connection past the cap, written before closing it.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: application/json\r\nretry-after: 1\r\ncontent-length: 86\r\n\r\n\
{\"error\":\"too many open connections, try again shortly\",\"code\":\"too_many_connections\"}";

/// How [`serve`] serves.
pub struct Serving<'a> {
    pub config: &'a HttpConfig,
    /// How long to wait for connections to close once shutdown starts.
    pub drain: Duration,
    pub metrics: Arc<Metrics>,
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets
/// requests in flight finish and waits (up to `drain`) for every connection
/// to close — WebSockets are closed by their own shutdown.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    serving: Serving<'_>,
    shutdown: impl Future<Output = ()>,
) where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Serving {
        config,
        drain,
        metrics,
    } = serving;
    let ids = Arc::new(RequestIds::new());
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut http = http1::Builder::new();
    // hyper's header timer runs from the moment it waits for a request, so
    // it is the keep-alive idle bound; `HeadDeadline` bounds the head itself.
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.keep_alive_secs))
        .keep_alive(true);
    let http = Arc::new(http);
    let head_timeout = Duration::from_secs(config.header_read_timeout_secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: let some close.
                    log::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                let _ = stream.try_write(BUSY);
                continue;
            }
            Err(TryAcquireError::Closed) => break,
        };
        let connection = Connection {
            slot: ConnSlot(Arc::new(permit)),
            peer: PeerAddr(peer),
            http: http.clone(),
            head_timeout,
            observer: Observer {
                ids: ids.clone(),
                metrics: metrics.clone(),
            },
        };
        tokio::spawn(connection.serve(stream, service.clone(), stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every permit back: every connection, and every WebSocket, is gone.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        log::warn!("shutdown: some connections were still open after {drain:?}");
    }
}

/// One accepted connection and what its requests carry.
struct Connection {
    slot: ConnSlot,
    peer: PeerAddr,
    http: Arc<http1::Builder>,
    head_timeout: Duration,
    observer: Observer,
}

/// Names, logs and counts each request.
#[derive(Clone)]
struct Observer {
    ids: Arc<RequestIds>,
    metrics: Arc<Metrics>,
}

impl Observer {
    /// Serves `request` with `service` as request `id`, then stamps, logs
    /// and counts its response.
    async fn serve<S>(&self, mut service: S, mut request: Request) -> Result<Response, Infallible>
    where
        S: tower_service::Service<Request, Response = Response, Error = Infallible>,
    {
        let id = self.ids.for_request(&request);
        let method = metrics::method_label(request.method());
        let matched = contract::route_of(request.uri().path());
        request.extensions_mut().insert(contract::Matched(matched));
        // The path alone (a query string may carry a token), kept only when
        // it will be logged.
        let path = logging::logs_requests().then(|| request.uri().path().to_string());
        // HEAD is GET without the body: hyper leaves the body out of the
        // answer to a HEAD, so the routes need only know GET.
        if request.method() == warp::http::Method::HEAD {
            *request.method_mut() = warp::http::Method::GET;
        }
        let started = std::time::Instant::now();
        let response = crate::support::serving_request(id.clone(), async {
            let mut response = match service.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let took = started.elapsed();
            let status = response.status().as_u16();
            if let Some(path) = &path {
                logging::log_request(method, path, status, took.as_secs_f64() * 1e3);
            }
            let route = matched.map_or("other", |r| r.template.as_str());
            self.metrics.http_request(method, route, status, took);
            if let Ok(value) = warp::http::HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", value);
            }
            response
        })
        .await;
        Ok(response)
    }
}

type Request = hyper::Request<hyper::body::Incoming>;
type Response = warp::reply::Response;

/// Request ids: the client's `X-Request-Id` when it is a sensible one
/// (1-128 of `A-Z a-z 0-9 . _ : -`), else this process's prefix and a count.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let random = crate::support::random_bytes();
        RequestIds {
            prefix: random[..4].iter().map(|b| format!("{b:02x}")).collect(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn for_request(&self, request: &Request) -> Arc<str> {
        let given = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                (1..=128).contains(&id.len())
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
            });
        match given {
            Some(id) => Arc::from(id),
            None => {
                let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut id = String::with_capacity(self.prefix.len() + 17);
                id.push_str(&self.prefix);
                id.push('-');
                push_hex(&mut id, n);
                Arc::from(id)
            }
        }
    }
}

/// `n` in lowercase hex without leading zeros (what `{:x}` writes, without
/// the formatting machinery: this runs once per request).
fn push_hex(out: &mut String, n: u64) {
    let digits = (64 - (n | 1).leading_zeros()).div_ceil(4);
    for i in (0..digits).rev() {
        let nibble = (n >> (i * 4)) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
    }
}

impl Connection {
    async fn serve<S>(self, stream: TcpStream, service: S, mut stop: watch::Receiver<bool>)
    where
        S: tower_service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = warp::reply::Response,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let Connection {
            slot,
            peer,
            http,
            head_timeout,
            observer,
        } = self;
        let service = hyper::service::service_fn(move |mut request: Request| {
            request.extensions_mut().insert(peer);
            request.extensions_mut().insert(slot.clone());
            let (service, observer) = (service.clone(), observer.clone());
            async move { observer.serve(service, request).await }
        });
        let io: ServerIo = TokioIo::new(HeadDeadline::new(stream, head_timeout));
        let connection = http.serve_connection(io, service).with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                connection.as_mut().graceful_shutdown();
                connection.as_mut().await
            }
        };
        if let Err(e) = result
            && !(e.is_timeout() || e.is_incomplete_message() || e.is_closed())
        {
            log::debug!("connection from {}: {e}", peer.0);
        }
    }
}

/// Where a connection is in reading a request head.
enum HeadState {
    /// Between requests: the next byte starts a head.
    Idle,
    /// Reading a head that must end (a blank line) before `deadline`;
    /// `line_start`: nothing but `\r` since the last line feed.
    Head {
        deadline: Pin<Box<Sleep>>,
        line_start: bool,
    },
    /// The head is in; its body and response follow. The next write answers it.
    Request,
    /// Switched protocols: no longer HTTP.
    Upgraded,
}

/// The I/O an accepted connection is served over: what a WebSocket upgrade
/// finds under hyper's `Upgraded`.
pub type ServerIo = TokioIo<HeadDeadline<TcpStream>>;

/// A connection's I/O with a deadline on each request head, counted from
/// its first byte: a client trickling a header a byte at a time is cut off
/// instead of holding its connection forever.
pub struct HeadDeadline<T> {
    io: T,
    timeout: Duration,
    state: HeadState,
}

impl<T> HeadDeadline<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        HeadDeadline {
            io,
            timeout,
            state: HeadState::Idle,
        }
    }

    /// The I/O without the deadline, for a connection no longer speaking HTTP.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Follows the head's bytes: starts the deadline at the first one,
    /// stops it at the blank line that ends the head. Every byte of every
    /// request passes here, so it looks at line feeds only.
    fn saw(&mut self, mut bytes: &[u8]) {
        loop {
            match &mut self.state {
                HeadState::Idle => {
                    let Some((_, rest)) = bytes.split_first() else {
                        return;
                    };
                    self.state = HeadState::Head {
                        deadline: Box::pin(tokio::time::sleep(self.timeout)),
                        line_start: false,
                    };
                    bytes = rest;
                }
                // A line feed that ends an empty line (bare or after `\r`)
                // ends the head, as parsers accept both.
                HeadState::Head { line_start, .. } => {
                    let Some(lf) = memchr::memchr(b'\n', bytes) else {
                        if bytes.iter().any(|&b| b != b'\r') {
                            *line_start = false;
                        }
                        return;
                    };
                    if *line_start && bytes[..lf].iter().all(|&b| b == b'\r') {
                        self.state = HeadState::Request;
                        return;
                    }
                    *line_start = true;
                    bytes = &bytes[lf + 1..];
                }
                HeadState::Request | HeadState::Upgraded => return,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let HeadState::Head { deadline, .. } = &mut this.state
            && (deadline.is_elapsed() || deadline.as_mut().poll(cx).is_ready())
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.saw(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, HeadState::Request) {
            this.state = if buf.starts_with(b"HTTP/1.1 101") {
                HeadState::Upgraded
            } else {
                HeadState::Idle
            };
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, HeadState::Request) {
            let first = bufs.iter().find(|b| !b.is_empty());
            this.state = if first.is_some_and(|b| b.starts_with(b"HTTP/1.1 101")) {
                HeadState::Upgraded
            } else {
                HeadState::Idle
            };
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_count_in_hex_as_format_would() {
        for n in [0_u64, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX] {
            let mut written = String::new();
            push_hex(&mut written, n);
            assert_eq!(written, format!("{n:x}"));
        }
    }

    fn state_after(chunks: &[&[u8]]) -> &'static str {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let mut io = HeadDeadline::new((), Duration::from_secs(10));
        for chunk in chunks {
            io.saw(chunk);
        }
        match io.state {
            HeadState::Idle => "idle",
            HeadState::Head { .. } => "head",
            HeadState::Request => "request",
            HeadState::Upgraded => "upgraded",
        }
    }

    #[test]
    fn the_busy_answer_declares_its_body_length() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_it_is_split() {
        assert_eq!(state_after(&[]), "idle");
        assert_eq!(state_after(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]), "head");
        assert_eq!(
            state_after(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
            "request"
        );
        assert_eq!(
            state_after(&[b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r", b"\n"]),
            "request"
        );
        assert_eq!(state_after(&[b"GET / HTTP/1.1\r\n\r\r\n\r\n"]), "request");
        assert_eq!(state_after(&[b"GET / HTTP/1.1\nA: b\n\n"]), "request");
        assert_eq!(state_after(&[b"GET / HTTP/1.1\r\nA: b\r\n"]), "head");
    }

    /// Whether a byte-at-a-time reading finds the blank line that ends a
    /// head starting with `bytes`.
    fn head_ends_byte_by_byte(bytes: &[u8]) -> bool {
        let mut line_start = false;
        for &b in bytes.iter().skip(1) {
            match b {
                b'\n' if line_start => return true,
                b'\n' => line_start = true,
                b'\r' => {}
                _ => line_start = false,
            }
        }
        false
    }

    #[test]
    fn the_line_feed_scan_ends_a_head_where_a_byte_at_a_time_reading_does() {
        // Every string of up to 7 bytes of `\r`, `\n` and `a`, cut in two
        // everywhere: the scan may skip bytes, never the blank line.
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=7_u32 {
            for mut n in 0..3_usize.pow(len) {
                let mut bytes = Vec::new();
                for _ in 0..len {
                    bytes.push(alphabet[n % 3]);
                    n /= 3;
                }
                let want = if head_ends_byte_by_byte(&bytes) {
                    "request"
                } else if bytes.is_empty() {
                    "idle"
                } else {
                    "head"
                };
                for cut in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(cut);
                    assert_eq!(state_after(&[a, b]), want, "{bytes:?} cut at {cut}");
                }
            }
        }
    }
}
