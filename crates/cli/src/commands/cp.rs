//! `spinup cp SRC DST`: one file between the host and a sandbox; one side
//! is `ID:/path`, and `-` is stdin or stdout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use spinup_protocol::{FileKind, FileStat};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::client::{enc, Client};
use crate::ctx::Ctx;

#[derive(clap::Args)]
pub struct Args {
    src: String,
    dst: String,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let (src, dst) = (args.src.as_str(), args.dst.as_str());
    match (split_remote(src), split_remote(dst)) {
        (Some(_), Some(_)) => bail!("copying between two sandboxes is not supported; copy through the host"),
        (None, None) => bail!("one of SRC and DST must be ID:/path"),
        (Some((id, path)), None) => download(&ctx.client, id, path, dst).await,
        (None, Some((id, path))) => upload(&ctx.client, src, id, path).await,
    }
}

/// `ID:/path` (ids are 12 hex digits), else a local path.
fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && path.starts_with('/')).then_some((id, path))
}

async fn download(c: &Client, id: &str, path: &str, dst: &str) -> Result<()> {
    let resp = c
        .request(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files?path={}", enc(path)),
            spinup_protocol::client::empty_body(),
        )
        .await?;
    let mut body = resp.into_body().into_data_stream();
    let mut out: Box<dyn AsyncWrite + Unpin> = if dst == "-" {
        Box::new(tokio::io::stdout())
    } else {
        let mut local = PathBuf::from(dst);
        if local.is_dir() {
            local = local.join(Path::new(path).file_name().context("source has no file name")?);
        }
        Box::new(tokio::fs::File::create(&local).await.with_context(|| format!("creating {}", local.display()))?)
    };
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    Ok(())
}

async fn upload(c: &Client, src: &str, id: &str, path: &str) -> Result<()> {
    let mut path = path.to_string();
    if path.ends_with('/') {
        let name = Path::new(src).file_name().context("source has no file name")?;
        path.push_str(&name.to_string_lossy());
    } else if let Ok(st) = c.get_as::<FileStat>(&format!("/v1/sandboxes/{id}/files/stat?path={}", enc(&path))).await {
        if st.kind == FileKind::Dir {
            let name = Path::new(src).file_name().context("source has no file name")?;
            path = format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy());
        }
    }
    let mode = if src == "-" {
        None
    } else {
        let m = std::fs::metadata(src).with_context(|| format!("reading {src}"))?;
        if m.is_dir() {
            bail!("{src} is a directory; cp copies files (use `spinup env import` or tar through exec for trees)");
        }
        use std::os::unix::fs::PermissionsExt;
        Some(m.permissions().mode() & 0o7777)
    };
    let reader: Box<dyn AsyncRead + Unpin + Send> =
        if src == "-" { Box::new(tokio::io::stdin()) } else { Box::new(tokio::fs::File::open(src).await?) };
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
    let body = http_body_util::StreamBody::new(stream.map(|r| r.map(hyper::body::Frame::data)));
    let mut uri = format!("/v1/sandboxes/{id}/files?path={}", enc(&path));
    if let Some(m) = mode {
        uri.push_str(&format!("&mode={m}"));
    }
    c.request(Method::PUT, &uri, BodyExt::boxed_unsync(body)).await?;
    Ok(())
}
