//! schemathesis (property-based API testing from the served OpenAPI
//! document, its default checks, stateful phase included) against a real
//! daemon over its TCP listener, through scripts/schemathesis.sh: the
//! document and the daemon must agree on everything it generates, and no
//! answer may be a server error. What the document cannot say is written
//! down, with its reason, in scripts/schemathesis.toml and
//! scripts/schemathesis_hooks.py.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests report to the runner, which captures their output"
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const KEY: &str = "schemathesis-test-key-0123456789";
/// schemathesis' own time budget; its phases may run a little past it.
const SECONDS: &str = "120";

#[tokio::test]
async fn schemathesis_finds_nothing() {
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let d = Daemon::start_with("schemathesis", &["--tcp", &tcp], &[("SPINUP_API_KEY", KEY)]);
    build_env(&d, "busybox").await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(root.join("scripts/schemathesis.sh"));
    cmd.arg(SECONDS)
        .current_dir(&root)
        .env("SPINUP_ST_URL", format!("http://{tcp}"))
        .env("SPINUP_API_KEY", KEY)
        .env("NO_COLOR", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_client(&d, "schemathesis", cmd, Duration::from_secs(900)).await;
    // It exited 0; its summary line says so too.
    let summary = out.lines().rev().find(|l| l.contains("====")).unwrap_or_default();
    assert!(!summary.is_empty() && !summary.contains("fail") && !summary.contains("error"), "summary: {summary}");
    // And nothing it sent made the daemon panic.
    assert!(!d.log().contains("panicked"), "the daemon panicked:\n{}", tail(&d.log(), 40));
}
