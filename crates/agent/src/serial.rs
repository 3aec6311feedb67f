//! A virtio-serial port as an async byte stream. The port has no
//! connections, only a "host connected" flag: a read returns 0 while no
//! host is attached. Sessions are delimited by a handshake (see
//! [`spinup_protocol::SERIAL_RESET`]).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use spinup_protocol::{H2_PREFACE, SERIAL_HELLO, SERIAL_READY};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Port {
    fd: AsyncFd<OwnedFd>,
    /// How long (ms) to wait before looking for a host again.
    idle_ms: AtomicU64,
}

impl Port {
    pub fn open(dev: &str) -> io::Result<Port> {
        let fd = nix::fcntl::open(
            dev,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: open just returned this fd and nothing else owns it.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: an OwnedFd: the fd is open, and it stays this fd until the
        // AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(owned) }?;
        Ok(Port { fd, idle_ms: AtomicU64::new(5) })
    }

    /// Read what is there; `Ok(None)` while no host is attached.
    async fn read_some(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match nix::unistd::read(self.fd.as_raw_fd(), buf) {
                Ok(0) => {
                    // No host: poll, cheaply, for one to appear (backing
                    // off to 100 ms while none does).
                    let idle = self.idle_ms.load(Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(idle)).await;
                    self.idle_ms.store((idle * 2).min(100), Ordering::Relaxed);
                    return Ok(None);
                }
                Ok(n) if n > 0 => {
                    self.idle_ms.store(5, Ordering::Relaxed);
                    return Ok(Some(n));
                }
                Ok(_) => unreachable!("0 is handled above"),
                Err(nix::errno::Errno::EAGAIN) => {
                    // Readiness is edge-triggered and a host appearing is no
                    // edge on every kernel: look again at least every 50 ms.
                    if let Ok(Ok(mut g)) = tokio::time::timeout(Duration::from_millis(50), self.fd.readable()).await {
                        g.clear_ready();
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match nix::unistd::write(&self.fd, data) {
                Ok(n) => data = &data[n..],
                Err(nix::errno::Errno::EAGAIN) => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), self.fd.writable()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Wait for a host's hello, answer it, and return the bytes from the
    /// start of its HTTP/2 preface on. Anything else is stale and dropped;
    /// a newer hello (the host retried) is answered again.
    pub async fn handshake(&self) -> io::Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let mut answered = false;
        // A host repeats its hello until answered: answer each nonce once.
        let mut last_nonce = String::new();
        loop {
            let Some(n) = self.read_some(&mut chunk).await? else {
                // The host went away mid-handshake: start over.
                buf.clear();
                answered = false;
                last_nonce.clear();
                continue;
            };
            buf.extend_from_slice(&chunk[..n]);
            if answered {
                if let Some(at) = find(&buf, H2_PREFACE) {
                    return Ok(buf.split_off(at));
                }
            }
            // Answer the last complete hello line, if any.
            while let Some(at) = find(&buf, SERIAL_HELLO.as_bytes()) {
                let rest = &buf[at + SERIAL_HELLO.len()..];
                let Some(end) = rest.iter().position(|&b| b == b'\n') else { break };
                let nonce = String::from_utf8_lossy(&rest[..end]).to_string();
                buf.drain(..at + SERIAL_HELLO.len() + end + 1);
                if nonce.len() <= 64 && nonce != last_nonce {
                    self.write_all(format!("{SERIAL_READY}{nonce}\n").as_bytes()).await?;
                    answered = true;
                    last_nonce = nonce;
                }
            }
            if answered {
                if let Some(at) = find(&buf, H2_PREFACE) {
                    return Ok(buf.split_off(at));
                }
            }
            // Keep only a tail that could still begin a hello or preface.
            if buf.len() > 256 {
                buf.drain(..buf.len() - 64);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The port, with bytes already read put back in front.
pub struct Prefixed {
    head: Vec<u8>,
    pos: usize,
    port: std::sync::Arc<Port>,
    /// Writes that would block are retried on this timer as well as on
    /// readiness: a port the host throttled may wake nobody when it opens.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Prefixed {
    pub fn new(head: Vec<u8>, port: std::sync::Arc<Port>) -> Self {
        Prefixed { head, pos: 0, port, retry: None }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.pos);
            buf.put_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut g = ready!(self.port.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match g.try_io(|fd| Ok(nix::unistd::read(fd.as_raw_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match nix::unistd::write(&self.port.fd, data) {
                Ok(n) => {
                    self.retry = None;
                    return Poll::Ready(Ok(n));
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            // Wait for readiness or the retry timer, whichever comes first.
            if let Poll::Ready(g) = self.port.fd.poll_write_ready(cx) {
                g?.clear_ready();
                continue;
            }
            let retry = self.retry.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            ready!(retry.as_mut().poll(cx));
            self.retry = None;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
