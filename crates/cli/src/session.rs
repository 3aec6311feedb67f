//! The session behind `spinup exec` and `spinup attach`: a WebSocket
//! carrying protocol frames, with raw-mode terminals and window-size
//! changes for `-t`.

use std::os::fd::AsRawFd;

use anyhow::{bail, Result};
use futures::{SinkExt, StreamExt};
use spinup_protocol::{Frame, PtySize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{enc, Client};

nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);

fn term_size() -> PtySize {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which is valid.
    let ok = unsafe { get_winsize(std::io::stdout().as_raw_fd(), &mut ws) }.is_ok();
    if ok && ws.ws_col > 0 {
        PtySize { cols: ws.ws_col, rows: ws.ws_row }
    } else {
        PtySize { cols: 80, rows: 24 }
    }
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        match termios::tcgetattr(&stdin) {
            Ok(orig) => {
                let mut raw = orig.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
                RawMode(Some(orig))
            }
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, orig);
        }
    }
}

/// Start `req` in sandbox `id`: its exit code, or 0 once a detached one
/// has started (its pid printed).
pub async fn run(
    c: &Client,
    id: &str,
    req: spinup_api::ExecRequest,
    tty: bool,
    detach: bool,
    json: bool,
) -> Result<i32> {
    let mut req = spinup_protocol::ExecRequest::from(req);
    if tty {
        req.pty = Some(term_size());
    }
    let interactive = req.stdin || tty;
    let ws = c.websocket(&format!("/v1/sandboxes/{}/exec/ws", enc(id))).await?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Binary(Frame::Start(req).encode())).await?;
    if detach {
        while let Some(msg) = stream.next().await {
            if let Message::Binary(b) = msg? {
                match Frame::decode(b)? {
                    Frame::Started(s) => {
                        if json {
                            println!("{}", serde_json::json!({"pid": s.pid}));
                        } else {
                            println!("{}", s.pid);
                        }
                        let _ = sink.close().await;
                        return Ok(0);
                    }
                    Frame::Exit(e) => bail!("{}", e.message.unwrap_or_else(|| format!("exited with {}", e.exit_code))),
                    Frame::Error(e) => bail!("{}", e.message),
                    _ => {}
                }
            }
        }
        bail!("the daemon closed the stream before the process started");
    }
    session(sink, stream, interactive, tty).await
}

pub async fn attach(c: &Client, id: &str, pid: u32) -> Result<i32> {
    let ws = c.websocket(&format!("/v1/sandboxes/{}/processes/{pid}/ws", enc(id))).await?;
    let (sink, stream) = ws.split();
    session(sink, stream, false, false).await
}

async fn session<S, R>(mut sink: S, mut stream: R, interactive: bool, tty: bool) -> Result<i32>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin + Send + 'static,
    R: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let _raw = (tty && nix::unistd::isatty(std::io::stdin().as_raw_fd()).unwrap_or(false)).then(RawMode::enter);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(32);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.send(Message::Binary(f.encode())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    if interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if !tty {
                            let _ = tx.send(Frame::StdinClose).await;
                        }
                        break;
                    }
                    Ok(n) => {
                        if tx.send(Frame::Stdin(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if tx.send(Frame::Resize(term_size())).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let mut code = None;
    while let Some(msg) = stream.next().await {
        let Message::Binary(b) = msg? else { continue };
        match Frame::decode(b)? {
            Frame::Stdout(d) => {
                out.write_all(&d).await?;
                out.flush().await?;
            }
            Frame::Stderr(d) => {
                err.write_all(&d).await?;
                err.flush().await?;
            }
            Frame::Exit(e) => {
                if e.timed_out {
                    err.write_all(format!("spinup: {}\n", e.message.unwrap_or_default()).as_bytes()).await?;
                }
                code = Some(e.exit_code);
                break;
            }
            Frame::Error(e) => {
                drop(_raw);
                bail!("{}", e.message);
            }
            _ => {}
        }
    }
    drop(tx);
    writer.abort();
    match code {
        Some(c) => Ok(c),
        None => bail!("the connection closed before the process exited"),
    }
}
