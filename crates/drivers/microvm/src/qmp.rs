//! A minimal QMP client: one short connection per command to the VMM's
//! control socket (`run/qmp.sock`).

use std::path::Path;
use std::time::Duration;

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
    let err = |what: &str, e: &dyn std::fmt::Display| Error::Internal(format!("QMP {command}: {what}: {e}"));
    let run = async {
        let s = tokio::net::UnixStream::connect(socket).await.map_err(|e| err("connect", &e))?;
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        // Greeting, then capabilities negotiation, then the command; events
        // may come in between and are skipped.
        answer(&mut lines, command).await?;
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await.map_err(|e| err("write", &e))?;
        answer(&mut lines, command).await?;
        let mut req = serde_json::json!({"execute": command});
        if !args.is_null() {
            req["arguments"] = args;
        }
        w.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| err("write", &e))?;
        Ok(answer(&mut lines, command).await?["return"].clone())
    };
    tokio::time::timeout(Duration::from_secs(10), run).await.map_err(|_| err("timeout", &"no answer in 10 s"))?
}
