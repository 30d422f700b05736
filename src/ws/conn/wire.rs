//! Server frames written straight to the socket. A server's frames are not
//! masked (RFC 6455 5.1), so a frame's payload is the same bytes for every
//! subscriber. tungstenite would copy every frame into a buffer of the
//! connection's own, which must be as large as the burst to make it one
//! write, and never shrinks. Here a burst is laid out in a buffer of the
//! worker thread's and sent with one `send`; only a burst too large for it
//! goes out as one `writev` of each frame's header and its shared payload.
//! Copying is cheaper than it looks: `writev` goes through the file layer on
//! its way to the socket, and the kernel copies each slice on its own, so a
//! 4-byte header beside every few hundred bytes of payload costs it more
//! than the copy costs us.

use crate::ws::event::Frame;
use std::cell::RefCell;
use std::io::{self, IoSlice};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

const TEXT: u8 = 0x81;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;
const PONG: u8 = 0x8a;
/// What the registry's empty ping frame is written as.
const EMPTY_PING: [u8; 2] = [PING, 0];
/// Starts a queued [`Frame`] that is an encoded control frame in hex (see
/// [`pong`]): no JSON text starts with it.
const CONTROL: char = '\u{1}';

/// A queued frame answering a client's ping with `payload` (at most 125
/// bytes, as tungstenite enforces). It travels the connection's queue, which
/// holds text, so its bytes are spelled in hex.
pub(super) fn pong(payload: &[u8]) -> Frame {
    let mut text = String::with_capacity(1 + 2 * (payload.len() + 2));
    text.push(CONTROL);
    for byte in [PONG, payload.len() as u8].iter().chain(payload) {
        text.push(hex_digit(byte >> 4));
        text.push(hex_digit(byte & 0xf));
    }
    Frame::from(text)
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

/// Appends the header of a frame with opcode byte `op` and a payload of
/// `len` bytes.
fn push_head(out: &mut Vec<u8>, op: u8, len: usize) {
    out.push(op);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Where a frame's bytes come from: `head` is a range of the scratch
/// buffer; when `text`, the frame's own bytes (its payload) follow.
struct Parts {
    head: std::ops::Range<usize>,
    text: bool,
}

/// Appends what goes before `frame`'s payload (or, for a control frame,
/// all of it) to `heads`.
fn encode(heads: &mut Vec<u8>, frame: &Frame) -> Parts {
    let start = heads.len();
    let text = match frame.as_str() {
        "" => {
            heads.extend_from_slice(&EMPTY_PING);
            false
        }
        s if s.starts_with(CONTROL) => {
            let hex = &s.as_bytes()[CONTROL.len_utf8()..];
            heads.extend(hex.chunks_exact(2).map(|pair| {
                let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                digit(pair[0]) << 4 | digit(pair[1])
            }));
            false
        }
        s => {
            push_head(heads, TEXT, s.len());
            true
        }
    };
    Parts {
        head: start..heads.len(),
        text,
    }
}

/// All of `frame`'s bytes on the wire, header and payload, in a buffer of
/// their own.
fn wire_bytes(frame: &Frame) -> Vec<u8> {
    let mut bytes = Vec::new();
    if encode(&mut bytes, frame).text {
        bytes.extend_from_slice(frame.as_bytes());
    }
    bytes
}

/// Bursts of up to this many bytes are sent from one flat buffer (see the
/// module doc): a full write batch of message frames (64 of a few hundred
/// bytes) fits. Larger ones, frames of many kilobytes where the slices are
/// few for their bytes, go out as they are.
const FLAT_MAX: usize = 32 * 1024;

thread_local! {
    /// Where a burst is laid out flat. Per thread, not per connection:
    /// it is only used by a write that does not wait (see [`TryWrite`]).
    static FLAT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A write that never waits: all, part or none of `buf` (`WouldBlock`).
pub(super) trait TryWrite {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl TryWrite for OwnedWriteHalf {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        OwnedWriteHalf::try_write(self, buf)
    }
}

/// The sending half of a socket.
pub(super) struct Out<W> {
    io: W,
    /// The rest of a frame a killed write left half-written: it goes out
    /// before anything else, or the client would read garbage.
    torn: Vec<u8>,
    /// Scratch space for the headers of a burst, and where each frame's
    /// parts are, kept across writes: a write allocates nothing.
    heads: Vec<u8>,
    parts: Vec<Parts>,
}

/// Writes of up to this many slices (half as many frames, the usual burst
/// of a busy chat) lay them out on the stack; longer ones in a vector.
const STACK_SLICES: usize = 8;

impl<W: AsyncWrite + TryWrite + Unpin> Out<W> {
    pub(super) fn new(io: W) -> Self {
        Out {
            io,
            torn: Vec::new(),
            heads: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// Writes `frames` with as few `writev` calls as the socket takes,
    /// adding the bytes written to `done` as they go: if the write is
    /// dropped part way, [`Out::cut`] tells from `done` what went out.
    pub(super) async fn write(&mut self, frames: &[Frame], done: &mut usize) -> io::Result<()> {
        self.heads.clear();
        self.parts.clear();
        for frame in frames {
            let part = encode(&mut self.heads, frame);
            self.parts.push(part);
        }
        let mut stack = [IoSlice::new(&[]); STACK_SLICES];
        let mut heap = Vec::new();
        let slices = if 2 * frames.len() <= STACK_SLICES {
            &mut stack[..]
        } else {
            heap.resize(2 * frames.len(), IoSlice::new(&[]));
            &mut heap[..]
        };
        let mut used = 0;
        for (part, frame) in self.parts.iter().zip(frames) {
            slices[used] = IoSlice::new(&self.heads[part.head.clone()]);
            used += 1;
            if part.text {
                slices[used] = IoSlice::new(frame.as_bytes());
                used += 1;
            }
        }
        let mut rest = &mut slices[..used];
        let total: usize = rest.iter().map(|s| s.len()).sum();
        if total <= FLAT_MAX {
            let sent = FLAT.with_borrow_mut(|flat| {
                flat.clear();
                for slice in rest.iter() {
                    flat.extend_from_slice(slice);
                }
                self.io.try_write(flat)
            });
            match sent {
                Ok(n) => {
                    *done += n;
                    IoSlice::advance_slices(&mut rest, n);
                }
                // The socket is full: wait for it below.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // The standard library passes at most the system's limit of slices
        // to one `writev`; the rest go in the next round.
        while !rest.is_empty() {
            let n = self.io.write_vectored(rest).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            *done += n;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// After a [`Out::write`] of `frames` was dropped with `done` bytes
    /// written: keeps the rest of the frame it cut short for the next write,
    /// and returns how many of `frames` were begun.
    pub(super) fn cut(&mut self, frames: &[Frame], done: usize) -> usize {
        let mut start = 0;
        for (i, frame) in frames.iter().enumerate() {
            if start >= done {
                return i;
            }
            let mut bytes = wire_bytes(frame);
            let end = start + bytes.len();
            if end > done {
                self.torn = bytes.split_off(done - start);
                return i + 1;
            }
            start = end;
        }
        frames.len()
    }

    /// Finishes a frame cut short, then writes `frames` whole.
    pub(super) async fn write_after_cut(&mut self, frames: &[Frame]) -> io::Result<()> {
        if !self.torn.is_empty() {
            self.io.write_all(&self.torn).await?;
            self.torn.clear();
        }
        self.write(frames, &mut 0).await
    }

    /// Sends a close frame with `code` and `reason` (after a frame cut
    /// short, if any) and shuts the sending side down.
    pub(super) async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        // A close frame's payload is at most 125 bytes; reasons are short.
        let reason = &reason[..reason.floor_char_boundary(123)];
        let mut frame = self.torn.split_off(0);
        push_head(&mut frame, CLOSE, 2 + reason.len());
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(reason.as_bytes());
        self.io.write_all(&frame).await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TryWrite for Vec<u8> {
        fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.extend_from_slice(buf);
            Ok(buf.len())
        }
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(wire_bytes).collect()
    }

    #[test]
    fn text_frames_carry_their_length_in_the_shortest_form() {
        for (len, head) in [
            (1, vec![TEXT, 1]),
            (125, vec![TEXT, 125]),
            (126, vec![TEXT, 126, 0, 126]),
            (65_535, vec![TEXT, 126, 0xff, 0xff]),
            (65_536, vec![TEXT, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let frame = Frame::from("x".repeat(len));
            let bytes = wire(std::slice::from_ref(&frame));
            assert_eq!(bytes[..head.len()], head[..], "length {len}");
            assert_eq!(bytes.len(), head.len() + len, "length {len}");
        }
    }

    #[test]
    fn a_pong_echoes_the_ping_payload_byte_for_byte() {
        let payload = [0u8, 0xff, b'a', 0x80];
        assert_eq!(
            wire(&[pong(&payload)]),
            [PONG, 4, 0, 0xff, b'a', 0x80],
            "non-UTF-8 payloads survive the text queue"
        );
        assert_eq!(wire(&[Frame::from_static("")]), EMPTY_PING);
    }

    #[tokio::test]
    async fn a_burst_is_the_frames_back_to_back() {
        let kinds = [
            Frame::from("{\"a\":1}"),
            Frame::from_static(""),
            Frame::from("y".repeat(300)),
            pong(b"p"),
        ];
        // Bursts laid out on the stack and longer ones, one writer after
        // another (its scratch space kept across writes).
        let mut out = Out::new(Vec::new());
        let mut expected = Vec::new();
        for n in [1, 3, 4, 5, 12, 2] {
            let frames: Vec<Frame> = kinds.iter().cycle().take(n).cloned().collect();
            let mut done = 0;
            out.write(&frames, &mut done).await.unwrap();
            expected.extend(wire(&frames));
            assert_eq!(out.io, expected, "a burst of {n}");
            assert_eq!(done, wire(&frames).len(), "a burst of {n}");
        }
    }

    /// A socket that takes at most `max` bytes a call, and whose first
    /// `try_write` finds it full when `full_first`.
    struct Trickle {
        taken: Vec<u8>,
        max: usize,
        full_first: bool,
    }

    impl Trickle {
        fn take(&mut self, slices: &[IoSlice<'_>]) -> usize {
            let before = self.taken.len();
            for slice in slices {
                let room = self.max - (self.taken.len() - before);
                self.taken
                    .extend_from_slice(&slice[..slice.len().min(room)]);
            }
            self.taken.len() - before
        }
    }

    impl TryWrite for Trickle {
        fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if std::mem::take(&mut self.full_first) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(self.take(&[IoSlice::new(buf)]))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Ok(self.get_mut().take(&[IoSlice::new(buf)])))
        }

        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Ok(self.get_mut().take(bufs)))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_burst_the_socket_takes_in_pieces_arrives_whole() {
        // Small bursts (sent flat) and one over FLAT_MAX (sent as slices),
        // into a socket that is full at first or takes a few bytes a call.
        let frame = Frame::from("z".repeat(200));
        for n in [1, 2, FLAT_MAX / 200 + 1] {
            let frames = vec![frame.clone(); n];
            for (max, full_first) in [(7, false), (7, true), (1000, false), (1000, true)] {
                let socket = Trickle {
                    taken: Vec::new(),
                    max,
                    full_first,
                };
                let mut out = Out::new(socket);
                let mut done = 0;
                out.write(&frames, &mut done).await.unwrap();
                assert_eq!(out.io.taken, wire(&frames), "{n} frames, {max} a call");
                assert_eq!(done, out.io.taken.len(), "{n} frames, {max} a call");
            }
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_finished_before_the_next() {
        let frames = [
            Frame::from("{\"a\":1}"),
            Frame::from("{\"b\":2}"),
            Frame::from("{\"c\":3}"),
        ];
        let whole = wire(&frames);
        // Every cut point: what went out, then the rest, is the burst once.
        for done in 0..=whole.len() {
            let mut out = Out::new(whole[..done].to_vec());
            let begun = out.cut(&frames, done);
            out.write_after_cut(&frames[begun..]).await.unwrap();
            assert_eq!(out.io, whole, "cut after {done} bytes");
        }
    }

    #[tokio::test]
    async fn close_finishes_a_cut_frame_then_closes() {
        let frames = [Frame::from("{\"a\":1}")];
        let mut out = Out::new(b"\x81".to_vec());
        out.cut(&frames, 1);
        out.close(1001, "bye").await.unwrap();
        let mut expect = wire(&frames);
        expect.extend_from_slice(&[CLOSE, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        assert_eq!(out.io, expect);
    }
}
