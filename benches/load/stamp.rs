//! A client socket that keeps the kernel's receive time of what it read last.
//!
//! `fanout` times a delivery when the client's task reads it. The servers'
//! writes and the clients' reads share the machine's cores, so that figure
//! holds both the server's delay and the client's wait for a core. Linux
//! stamps each segment as it reaches the receiving socket (`SO_TIMESTAMPNS`;
//! on loopback that happens inside the server's own write call) and a
//! `recvmsg` reports the stamp of the last segment it consumed: the moment
//! the server's write landed, which splits the two.

use crate::common::{User, ws_login_over};
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// Logs `user` in over a [`Stamped`] socket from `source` and waits for
/// `ready`; also returns the handle to the stamp of the socket's last read.
pub async fn login(
    server: SocketAddr,
    source: Ipv4Addr,
    user: &User,
    since: Option<i64>,
    stamps: bool,
) -> Result<(WebSocketStream<Stamped>, serde_json::Value, Arc<AtomicU64>), String> {
    let mut landed = None;
    let stamped = |tcp| {
        Stamped::new(tcp, stamps).map(|(stream, last)| {
            landed = Some(last);
            stream
        })
    };
    let (ws, ready) = ws_login_over(server, source, user, since, stamped).await?;
    let landed = landed.ok_or("no socket")?;
    Ok((ws, ready, landed))
}

/// A TCP stream whose reads record their kernel receive stamp.
pub struct Stamped {
    tcp: TcpStream,
    /// Wall-clock nanoseconds of the last segment read (0 before any).
    last: Arc<AtomicU64>,
}

impl Stamped {
    /// The returned handle reads the last read's stamp; it stays 0 unless
    /// `stamps` turns stamping on (every packet's stamp is a clock read the
    /// kernel then makes for every socket of the machine).
    pub fn new(tcp: TcpStream, stamps: bool) -> io::Result<(Self, Arc<AtomicU64>)> {
        if stamps {
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and an int-sized option value.
            let rc = unsafe {
                libc::setsockopt(
                    tcp.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let last = Arc::new(AtomicU64::new(0));
        Ok((
            Stamped {
                tcp,
                last: last.clone(),
            },
            last,
        ))
    }
}

/// Wall-clock nanoseconds now, the clock the kernel's stamps are on.
pub fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One `recvmsg` into `dst`: the bytes read and the stamp of the last segment.
fn recv_stamped(fd: RawFd, dst: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    // Room for one control message carrying a timespec, aligned as cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `msg` describes writable buffers of the stated lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // bounded by the msg_controllen it set.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            // A read into no room would return 0, which reads as the end.
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            // SAFETY: recvmsg only writes into the unfilled part, and only
            // the `n` bytes it reports are marked initialised.
            let dst = unsafe { buf.unfilled_mut() };
            match this
                .tcp
                .try_io(Interest::READABLE, || recv_stamped(fd, dst))
            {
                Ok((n, stamp)) => {
                    // SAFETY: recvmsg wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if let Some(s) = stamp {
                        this.last.store(s, Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                // try_io has cleared the readiness: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
