//! A minimal QMP client: one short connection per command to the VMM's
//! control socket (`run/qmp.sock`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use spinup_model::{Error, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Lines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

/// The next greeting or reply, skipping events.
async fn answer(lines: &mut Lines, command: &str) -> Result<serde_json::Value> {
    let err = |what: &str, e: &dyn std::fmt::Display| Error::Internal(format!("QMP {command}: {what}: {e}"));
    loop {
        let line = lines.next_line().await.map_err(|e| err("read", &e))?.ok_or_else(|| err("read", &"closed"))?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| err("reply", &e))?;
        if let Some(e) = v.get("error") {
            return Err(err("error", &e));
        }
        if v.get("return").is_some() || v.get("QMP").is_some() {
            return Ok(v);
        }
    }
}

/// Run one QMP command (`stop`, `cont`, ...) and return its `return` value.
pub async fn execute(socket: &Path, command: &str) -> Result<serde_json::Value> {
    execute_with(socket, command, serde_json::Value::Null).await
}

/// A QMP command with arguments.
pub async fn execute_with(socket: &Path, command: &str, args: serde_json::Value) -> Result<serde_json::Value> {
    let run = async {
        let mut s = Session::open(socket, command).await?;
        s.call(command, args, None).await
    };
    tokio::time::timeout(TIMEOUT, run).await.map_err(|_| timeout(command))?
}

/// `migrate` into `file`: the fd goes to QEMU over the socket (`getfd`
/// with SCM_RIGHTS, the way libvirt hands it one), and QEMU writes its
/// stream there. Under `-sandbox spawn=deny` it can start no `exec:`
/// helper, and it never opens a path of ours. Returns once the migration
/// has started; `query-migrate` says when it ends.
pub async fn migrate_to_file(socket: &Path, file: &std::fs::File) -> Result<()> {
    const NAME: &str = "spinup-state";
    let run = async {
        let mut s = Session::open(socket, "migrate").await?;
        s.call("getfd", serde_json::json!({ "fdname": NAME }), Some(file.as_fd())).await?;
        s.call("migrate", serde_json::json!({ "uri": format!("fd:{NAME}") }), None).await.map(|_| ())
    };
    tokio::time::timeout(TIMEOUT, run).await.map_err(|_| timeout("migrate"))?
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn timeout(command: &str) -> Error {
    Error::Internal(format!("QMP {command}: timeout: no answer in {} s", TIMEOUT.as_secs()))
}

/// One connection, past the greeting and capabilities negotiation.
struct Session {
    lines: Lines,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Session {
    async fn open(socket: &Path, command: &str) -> Result<Session> {
        let s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| Error::Internal(format!("QMP {command}: connect: {e}")))?;
        let (r, w) = s.into_split();
        let mut s = Session { lines: BufReader::new(r).lines(), w };
        // The greeting, then capabilities negotiation; events may come in
        // between and are skipped.
        answer(&mut s.lines, command).await?;
        s.call("qmp_capabilities", serde_json::Value::Null, None).await?;
        Ok(s)
    }

    /// Send `command` (with `fd` attached, if any) and return its `return`.
    async fn call(
        &mut self,
        command: &str,
        args: serde_json::Value,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<serde_json::Value> {
        let err = |e: std::io::Error| Error::Internal(format!("QMP {command}: write: {e}"));
        let mut req = serde_json::json!({"execute": command});
        if !args.is_null() {
            req["arguments"] = args;
        }
        let line = format!("{req}\n");
        match fd {
            None => self.w.write_all(line.as_bytes()).await.map_err(err)?,
            Some(fd) => {
                // One sendmsg with the fd in its control message: QEMU
                // takes the fd that came with the command's bytes. The line
                // is far below the socket buffer, so it goes whole.
                let fds = [fd.as_raw_fd()];
                let sock: &tokio::net::UnixStream = self.w.as_ref();
                let sent = sock
                    .async_io(tokio::io::Interest::WRITABLE, || {
                        let iov = [std::io::IoSlice::new(line.as_bytes())];
                        let cmsg = [ControlMessage::ScmRights(&fds)];
                        sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                            .map_err(std::io::Error::from)
                    })
                    .await
                    .map_err(err)?;
                if sent != line.len() {
                    return Err(err(std::io::Error::other("short write")));
                }
            }
        }
        Ok(answer(&mut self.lines, command).await?["return"].clone())
    }
}
