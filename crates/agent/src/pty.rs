//! Pseudo-terminals for interactive processes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use spinup_protocol::PtySize;
use tokio::io::unix::AsyncFd;

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

fn winsize(s: PtySize) -> libc::winsize {
    libc::winsize { ws_row: s.rows.max(1), ws_col: s.cols.max(1), ws_xpixel: 0, ws_ypixel: 0 }
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// The host side of a PTY pair.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

impl Master {
    /// Open a PTY of `size`; returns the master and the slave for the child.
    pub fn open(size: PtySize) -> io::Result<(Master, OwnedFd)> {
        let pair = nix::pty::openpty(Some(&winsize(size)), None)?;
        set_cloexec(&pair.master)?;
        set_cloexec(&pair.slave)?;
        let flags = nix::fcntl::fcntl(pair.master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(pair.master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the master fd is owned by the AsyncFd for its whole life
        // and is never closed or replaced while registered.
        let fd = unsafe { AsyncFd::register(pair.master) }.map_err(io::Error::from)?;
        Ok((Master { fd }, pair.slave))
    }

    /// Read output; `Ok(0)` once the terminal is gone (EIO after the last
    /// slave closes).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives
        // for the duration of the call; the fd is our open PTY master.
        unsafe { set_winsize(self.fd.get_ref().as_raw_fd(), &ws) }?;
        Ok(())
    }
}
