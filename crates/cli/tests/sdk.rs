//! The Python SDK (`sdk/python`, package `spinup`) against a real daemon:
//! installed from the repository into the venv of
//! scripts/install-python-tools.sh, its pytest suite run twice, over the
//! unix socket and over the TCP listener with its API key.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests report to the runner, which captures their output"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const KEY: &str = "sdk-test-key-0123456789";
const ENV: &str = "busybox";
/// For the code interpreter's tests.
const CODE_ENV: &str = "code-interpreter";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python")
}

#[tokio::test]
async fn python_sdk_suite_over_socket_and_tcp() {
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let d = Daemon::start_with("sdk", &["--tcp", &tcp], &[("SPINUP_API_KEY", KEY)]);
    build_env(&d, ENV).await;
    build_env(&d, CODE_ENV).await;

    // The package as pip builds it from the tree (no index needed: its
    // dependencies and build backend are in the venv already).
    let mut pip = Command::new(tools_python());
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(["--no-deps", "--no-build-isolation", "--force-reinstall"])
        .arg(sdk_dir());
    run_client(&d, "pip install sdk/python", pip, Duration::from_secs(300)).await;

    let tcp_host = format!("http://{tcp}");
    let sock = d.sock.to_string_lossy().into_owned();
    for (name, host) in [("unix socket", sock.as_str()), ("TCP", tcp_host.as_str())] {
        let mut cmd = Command::new(tools_python());
        cmd.args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"])
            .current_dir(sdk_dir())
            .env("SPINUP_HOST", host)
            .env("SPINUP_API_KEY", KEY)
            .env("SPINUP_TEST_SOCKET", &sock)
            .env("SPINUP_TEST_TCP_HOST", &tcp_host)
            .env("SPINUP_TEST_ENV", ENV)
            .env("SPINUP_TEST_CODE_ENV", CODE_ENV)
            .env("SPINUP_TEST_DRIVER", "container")
            .env("SPINUP_TEST_INSTALLED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("PYTHONPATH");
        let out = run_client(&d, &format!("pytest over the {name} ({host})"), cmd, Duration::from_secs(600)).await;
        assert!(out.contains(" passed") && !out.contains(" failed") && !out.contains(" skipped"), "{out}");
    }

    // The suite removed what it made.
    let (_, list) = d.req("GET", "/v1/sandboxes", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}
