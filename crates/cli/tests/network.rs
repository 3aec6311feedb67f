//! Network policy, exposed ports and secrets, against real namespaces,
//! veths, nftables, the daemon's resolver and egress proxy. Every
//! "forbidden" target is a real listener on an address that exists only on
//! this machine (a test namespace in 198.18.0.0/15, a private 10.250.N.2,
//! the metadata address on a host dummy interface, the host itself); the
//! host reaches each of them, the sandbox must not. The only outside
//! traffic is `pip install` from the package registry.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests report to the runner, which captures their output"
)]

mod common;

use std::time::{Duration, Instant};

use common::testnet::{host_listener, metadata_listener, TestNet};
use common::{eventually, shared, Daemon};
use serde_json::{json, Value};

/// `sh -c` in a sandbox; (exit code, stdout+stderr).
async fn run(d: &Daemon, id: &str, cmd: &str) -> (i64, String) {
    let v = d.sh(id, cmd).await;
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        format!("{}{}", v["stdout"].as_str().unwrap_or(""), v["stderr"].as_str().unwrap_or("")),
    )
}

/// Start a background process (it outlives this call).
async fn bg(d: &Daemon, id: &str, cmd: &str) {
    let mut ws = d
        .ws_exec(id, spinup_protocol::ExecRequest { cmd: Some(cmd.into()), background: true, ..Default::default() })
        .await;
    common::wait_started(&mut ws).await;
}

/// An HTTP/1.1 GET from inside a sandbox with busybox `nc` (busybox wget
/// cannot read a response that is not there at once under gVisor).
fn get_cmd(host: &str, path: &str, header: &str) -> String {
    format!("(printf 'GET {path} HTTP/1.1\\r\\nHost: {header}\\r\\nConnection: close\\r\\n\\r\\n'; sleep 3) | timeout 10 nc {host} 80")
}

fn host_can(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3)).is_ok()
}

/// The host's address on its uplink (where its default route leaves).
fn host_uplink_ip() -> String {
    let out = std::process::Command::new("ip").args(["-4", "route", "get", "203.0.113.80"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    s.split_whitespace().skip_while(|w| *w != "src").nth(1).unwrap().to_string()
}

async fn gateway(d: &Daemon, id: &str) -> String {
    let (_, v) = d.req("GET", &format!("/v1/sandboxes/{id}"), None).await;
    v["net"]["gateway"].as_str().unwrap().to_string()
}

async fn address(d: &Daemon, id: &str) -> String {
    let (_, v) = d.req("GET", &format!("/v1/sandboxes/{id}"), None).await;
    v["net"]["address"].as_str().unwrap().to_string()
}

/// Modes none/open, the forbidden set, explicit CIDRs, and a policy change
/// that cuts a live connection, on the driver under test.
async fn policy_modes_forbidden_set_and_live_changes() {
    let d = shared();
    let t = TestNet::new(1);
    let metadata = metadata_listener();
    let meta = metadata.port;
    let hostp = host_listener();
    // The listeners are real: the host reaches every one.
    for a in [
        format!("169.254.169.254:{meta}"),
        format!("{}:{hostp}", t.host_ip),
        format!("{}:80", t.ip),
        format!("{}:9000", t.private_ip),
    ] {
        assert!(host_can(&a), "the host cannot reach its own test listener {a}");
    }

    let a = d.create(json!({"network": {"mode": "open"}})).await;
    let b = d.create(json!({"network": {"mode": "open"}})).await;
    // B listens; A must not reach it.
    bg(d, &b, "nc -lk -p 7000 -e cat").await;
    let (code, out) = run(d, &a, &get_cmd(&t.ip.to_string(), "/hello", &t.ip.to_string())).await;
    assert_eq!(code, 0, "open mode cannot reach an ordinary address: {out}");
    assert!(out.contains("GET /hello HTTP/1.1"), "{out}");

    let gw = gateway(d, &a).await;
    let baddr = address(d, &b).await;
    let forbidden = [
        (format!("169.254.169.254 {meta}"), "the metadata address"),
        (format!("{} {hostp}", t.host_ip), "a host address"),
        (format!("{} {hostp}", host_uplink_ip()), "the host's uplink address"),
        (format!("{gw} {hostp}"), "the host side of the sandbox's own link"),
        (format!("{gw} 22"), "ssh on the gateway"),
        (format!("{baddr} 7000"), "another sandbox"),
        (format!("{} 9000", t.private_ip), "a private network not listed"),
    ];
    for (target, what) in &forbidden {
        let t0 = Instant::now();
        let (code, out) = run(d, &a, &format!("echo hi | nc -w 5 {target}")).await;
        assert_ne!(code, 0, "sandbox reached {what} ({target}): {out}");
        assert!(t0.elapsed() < Duration::from_secs(4), "refusing {what} took {:?}, not at once", t0.elapsed());
    }

    // A private network opens only when listed.
    let (st, v) = d
        .req(
            "PUT",
            &format!("/v1/sandboxes/{a}/network"),
            Some(json!({"mode": "open", "allow": [format!("{}/32", t.private_ip)]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (code, out) = run(d, &a, &format!("echo listed | nc -w 3 {} 9000", t.private_ip)).await;
    assert!(code == 0 && out.contains("listed"), "a listed private CIDR stays closed: {out}");
    // Listing never opens the metadata address or the host.
    let (st, _) = d
        .req(
            "PUT",
            &format!("/v1/sandboxes/{a}/network"),
            Some(json!({"mode": "open", "allow": ["169.254.0.0/16", format!("{}/32", t.host_ip)]})),
        )
        .await;
    assert_eq!(st, 200);
    for target in [format!("169.254.169.254 {meta}"), format!("{} {hostp}", t.host_ip)] {
        let (code, out) = run(d, &a, &format!("echo hi | nc -w 3 {target}")).await;
        assert_ne!(code, 0, "listing opened {target}: {out}");
    }

    // A live connection is cut the moment the policy forbids it.
    d.req("PUT", &format!("/v1/sandboxes/{a}/network"), Some(json!({"mode": "open"}))).await;
    bg(d, &a, &format!("nc {} 8080 > /tmp/ticks; echo done > /tmp/nc-ended", t.ip)).await;
    eventually("ticks arrive", 20, || async {
        run(d, &a, "grep -c tick /tmp/ticks").await.1.trim().parse::<u32>().unwrap_or(0) >= 3
    })
    .await;
    let (st, v) = d.req("PUT", &format!("/v1/sandboxes/{a}/network"), Some(json!({"mode": "none"}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["network"]["mode"], "none");
    let cut = Instant::now();
    eventually("the connection is cut", 15, || async { run(d, &a, "cat /tmp/nc-ended").await.0 == 0 }).await;
    eprintln!("live connection cut {:?} after the policy change", cut.elapsed());
    // none: fails fast, names included.
    let t0 = Instant::now();
    let (code, out) = run(d, &a, &format!("{} && nslookup pypi.org", get_cmd(&t.ip.to_string(), "/", "x"))).await;
    assert_ne!(code, 0, "none mode still reaches out: {out}");
    assert!(t0.elapsed() < Duration::from_secs(8), "none mode took {:?} to fail", t0.elapsed());
    // The policy is part of the sandbox and survives in the store.
    let (_, v) = d.req("GET", &format!("/v1/sandboxes/{a}"), None).await;
    assert_eq!(v["network"]["mode"], "none");
    d.rm(&a).await;
    d.rm(&b).await;
}

/// allow mode: names from the sandbox's resolver only for listed domains,
/// their addresses open for that sandbox only, HTTP Host checked.
async fn allow_mode_resolver_and_host_checks() {
    let d = shared();
    let t = TestNet::new(2);
    let ip = t.ip.to_string();
    let policy = json!({"mode": "allow", "allow": ["allowed.test"], "hosts": {"allowed.test": ip, "evil.test": ip}});
    let a = d.create(json!({"network": policy})).await;
    let other = d.create(json!({"network": {"mode": "allow", "allow": ["something.else"]}})).await;
    let (code, out) = run(d, &a, &get_cmd("allowed.test", "/x", "allowed.test")).await;
    assert!(code == 0 && out.contains("GET /x HTTP/1.1"), "allowed domain unreachable: {out}");
    assert!(out.to_lowercase().contains("host: allowed.test"), "{out}");
    // Not listed: the resolver knows no such name.
    let (code, out) = run(d, &a, "nslookup evil.test").await;
    assert_ne!(code, 0, "the resolver answered a name not allowed: {out}");
    // Domain fronting: an allowed address, another Host.
    let (_, out) = run(d, &a, &get_cmd("allowed.test", "/front", "evil.test")).await;
    assert!(
        out.contains(" 403 ") && !out.contains("GET /front"),
        "fronting through an allowed address got through: {out}"
    );
    // The address opened for `a` only.
    let (code, out) = run(d, &other, &format!("echo hi | nc -w 3 {ip} 9000")).await;
    assert_ne!(code, 0, "another sandbox reached an address learned by the first: {out}");
    d.rm(&a).await;
    d.rm(&other).await;
}

/// `port`: token or public, loopback TCP or a unix socket, via the agent.
async fn ports_are_exposed_through_the_daemon() {
    let d = shared();
    let id = d.create(json!({})).await;
    bg(d, &id, "mkdir -p /tmp/www && echo served-from-sandbox > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www")
        .await;
    eventually("httpd listens", 20, || async { run(d, &id, "echo | nc 127.0.0.1 8080").await.0 == 0 }).await;
    let (st, v) = d.req("POST", &format!("/v1/sandboxes/{id}/ports"), Some(json!({"port": 8080}))).await;
    assert_eq!(st, 201, "{v}");
    let addr = v["address"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap().to_string();
    let get = |path: String, hdr: Option<String>| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let extra = hdr.map(|h| format!("{h}\r\n")).unwrap_or_default();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{extra}\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
            out
        }
    };
    let r = get("/".into(), None).await;
    assert!(r.starts_with("HTTP/1.1 401"), "no token: {r}");
    assert!(!r.contains("served-from-sandbox"));
    let r = get("/".into(), Some("X-Spinup-Token: wrong".into())).await;
    assert!(r.starts_with("HTTP/1.1 401"), "wrong token: {r}");
    // busybox httpd under this runsc now and then closes a connection
    // without answering (its reads see EAGAIN, as busybox wget's do), so
    // the guest's side gets three tries; the daemon's answers above get one.
    for (what, path, hdr) in [
        ("token header", "/".to_string(), Some(format!("X-Spinup-Token: {token}"))),
        ("token query", format!("/?spinup_token={token}"), None),
    ] {
        let mut r = String::new();
        for _ in 0..3 {
            r = get(path.clone(), hdr.clone()).await;
            if r.contains("served-from-sandbox") {
                break;
            }
            assert!(!r.starts_with("HTTP/1.1 401"), "{what} refused: {r}");
        }
        assert!(r.contains("served-from-sandbox"), "{what}: {r}");
    }
    // The list never shows the token.
    let (_, l) = d.req("GET", &format!("/v1/sandboxes/{id}/ports"), None).await;
    assert!(!l.to_string().contains(&token));
    // Public, on a unix socket.
    let (st, v) = d
        .req("POST", &format!("/v1/sandboxes/{id}/ports"), Some(json!({"port": 8080, "public": true, "unix": true})))
        .await;
    assert_eq!(st, 409, "the same port twice: {v}");
    d.req("DELETE", &format!("/v1/sandboxes/{id}/ports/8080"), None).await;
    let (st, v) = d
        .req("POST", &format!("/v1/sandboxes/{id}/ports"), Some(json!({"port": 8080, "public": true, "unix": true})))
        .await;
    assert_eq!(st, 201, "{v}");
    let path = v["address"].as_str().unwrap().to_string();
    let mut out = None;
    for _ in 0..3 {
        let o = std::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "--unix-socket", &path, "http://x/"])
            .output()
            .unwrap();
        let ok = String::from_utf8_lossy(&o.stdout).contains("served-from-sandbox");
        out = Some(o);
        if ok {
            break;
        }
    }
    let out = out.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("served-from-sandbox"), "{out:?}");
    // Nothing listening there: a clear 502 once past the token.
    let (_, v) = d.req("POST", &format!("/v1/sandboxes/{id}/ports"), Some(json!({"port": 9999}))).await;
    let (a2, t2) = (v["address"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string());
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-H", &format!("X-Spinup-Token: {t2}"), &format!("http://{a2}/")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing accepts connections on port 9999"), "{out:?}");
    // Bad input.
    for body in [json!({"port": 0}), json!({"port": 8080, "listen": "0.0.0.0:0"}), json!({"port": "x"})] {
        let (st, v) = d.req("POST", &format!("/v1/sandboxes/{id}/ports"), Some(body.clone())).await;
        assert_eq!(st, 400, "{body}: {v}");
    }
    d.rm(&id).await;
    assert!(!std::path::Path::new(&path).exists(), "the unix socket outlived its sandbox");
}

suite!(
    policy_modes_forbidden_set_and_live_changes,
    allow_mode_resolver_and_host_checks,
    ports_are_exposed_through_the_daemon
);

/// A daemon killed with -9 comes back to working networks: the resolver,
/// the policy, the proxy and exposed ports of running sandboxes.
#[tokio::test]
async fn daemon_restart_keeps_networks_and_ports() {
    let t = TestNet::new(6);
    let d = Daemon::start("netrestart");
    let ip = t.ip.to_string();
    let a = d.create(json!({"network": {"mode": "allow", "allow": ["echo.test"], "hosts": {"echo.test": ip}}})).await;
    bg(&d, &a, "mkdir -p /tmp/www && echo still-here > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www").await;
    let (st, p) = d.req("POST", &format!("/v1/sandboxes/{a}/ports"), Some(json!({"port": 8080, "public": true}))).await;
    assert_eq!(st, 201, "{p}");
    let addr = p["address"].as_str().unwrap().to_string();
    let (code, out) = run(&d, &a, &get_cmd("echo.test", "/before", "echo.test")).await;
    assert!(code == 0 && out.contains("GET /before"), "{out}");
    d.restart();
    let (code, out) = run(&d, &a, &get_cmd("echo.test", "/after", "echo.test")).await;
    assert!(code == 0 && out.contains("GET /after"), "after a restart: {out}");
    let (_, out) = run(&d, &a, "nslookup evil.test").await;
    assert!(!out.contains(&ip), "the policy is gone after a restart: {out}");
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{addr}/")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("still-here"), "the port is gone after a restart: {out:?}");
    let (st, _) = d.req("PUT", &format!("/v1/sandboxes/{a}/network"), Some(json!({"mode": "none"}))).await;
    assert_eq!(st, 200);
    let (code, out) = run(&d, &a, &get_cmd("echo.test", "/none", "echo.test")).await;
    assert!(code != 0 || !out.contains("GET /none"), "{out}");
    d.rm(&a).await;
    let left = common::leftovers(&d);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Malformed policies, secret names and mounts get clear 400s.
#[tokio::test]
async fn malformed_policies_and_secrets_are_400() {
    let d = shared();
    for body in [
        json!({"network": {"mode": "sometimes"}}),
        json!({"network": {"mode": "allow", "allow": ["10.1.2.3/24"]}}),
        json!({"network": {"mode": "allow", "allow": ["exa mple.com"]}}),
        json!({"network": {"mode": "allow", "hosts": {"a.test": "not-an-ip"}}}),
        json!({"network": {"mode": "open", "bogus": 1}}),
        json!({"secrets": [{"name": "bad-name"}]}),
        json!({"secrets": [{"name": "OK", "mode": "proxy"}]}),
        json!({"secrets": [{"name": "OK", "mode": "env", "hosts": ["a.b"]}]}),
    ] {
        let (st, v) = d.req("POST", "/v1/sandboxes", Some(body.clone())).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (st, _) = d.raw("PUT", "/v1/secrets/bad-name", bytes::Bytes::from_static(b"v")).await;
    assert_eq!(st, 400);
    let (st, _) = d.raw("PUT", "/v1/secrets/EMPTY", bytes::Bytes::new()).await;
    assert_eq!(st, 400);
    let (st, v) = d.req("POST", "/v1/sandboxes", Some(json!({"secrets": [{"name": "NO_SUCH_SECRET"}]}))).await;
    assert_eq!(st, 404, "{v}");
    let id = d.create(json!({})).await;
    let (st, v) = d.raw("PUT", &format!("/v1/sandboxes/{id}/network"), bytes::Bytes::from_static(b"{not json")).await;
    assert_eq!(st, 400, "{v:?}");
    let (st, _) = d.req("PUT", "/v1/sandboxes/000000000000/network", Some(json!({"mode": "open"}))).await;
    assert_eq!(st, 404);
    d.rm(&id).await;
}

// ---- container driver with the Debian environment: TLS clients, pip, python ----

/// The registry on this machine is served under its own CA; sandboxes get
/// the host's bundle so that TLS to it verifies (as on any network with an
/// inspecting proxy).
async fn trust_host_cas(d: &Daemon, id: &str) {
    let bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let (st, v) =
        d.raw("PUT", &format!("/v1/sandboxes/{id}/files?path=/etc/ssl/certs/ca-certificates.crt"), bundle.into()).await;
    assert!(st == 200 || st == 204, "{v:?}");
}

async fn debian(d: &Daemon, extra: Value) -> String {
    let mut body = json!({"env": "debian", "driver": "container", "resources": {"memory_mib": 1024}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (st, v) = d.req("POST", "/v1/sandboxes", Some(body)).await;
    assert_eq!(st, 201, "{v}\n{}", d.log());
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn pip_install_is_scoped_to_its_sandbox_and_none_fails_fast() {
    let d = shared();
    let a = debian(d, json!({"network": {"mode": "open"}})).await;
    let allow = debian(d, json!({"network": {"mode": "allow", "allow": ["pypi.org", "files.pythonhosted.org"]}})).await;
    let none = debian(d, json!({"network": {"mode": "none"}})).await;
    for id in [&a, &allow, &none] {
        trust_host_cas(d, id).await;
        let (c, o) = run(d, id, "python3 -m venv /root/venv").await;
        assert_eq!(c, 0, "{o}");
    }
    let pip = "/root/venv/bin/pip install --no-cache-dir --disable-pip-version-check iniconfig 2>&1";
    let (c, o) = run(d, &a, pip).await;
    assert_eq!(c, 0, "pip install with open networking: {o}");
    let (c, o) = run(d, &a, "/root/venv/bin/python -c 'import iniconfig; print(iniconfig.__file__)'").await;
    assert_eq!(c, 0, "{o}");
    let (c, o) = run(d, &allow, pip).await;
    assert_eq!(c, 0, "pip install with an allow-list covering the index: {o}");
    // Visible to that sandbox only.
    let (c, _) = run(d, &none, "/root/venv/bin/python -c 'import iniconfig'").await;
    assert_ne!(c, 0, "another sandbox sees the package");
    assert!(
        !std::path::Path::new("/root/venv/lib").exists()
            || std::process::Command::new("sh")
                .args(["-c", "ls /root/venv/lib/python3*/site-packages/iniconfig"])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true),
        "the package landed on the host"
    );
    // none: a network error, fast.
    let t0 = Instant::now();
    let (c, o) = run(d, &none, &format!("{pip} --retries 0 --timeout 30")).await;
    let took = t0.elapsed();
    assert_ne!(c, 0, "pip install worked with networking off: {o}");
    assert!(
        o.contains("NewConnectionError")
            || o.contains("Name or service not known")
            || o.contains("resolution")
            || o.contains("No matching distribution"),
        "not a network error: {o}"
    );
    assert!(took < Duration::from_secs(30), "none mode took {took:?} to fail");
    eprintln!("pip install with networking off failed after {took:?}");
    for id in [a, allow, none] {
        d.rm(&id).await;
    }
}

#[tokio::test]
async fn tls_sni_is_checked_in_allow_mode() {
    let d = shared();
    let t = TestNet::new(3);
    let ip = t.ip.to_string();
    let id = debian(d, json!({"network": {"mode": "allow", "allow": ["allowed.test"], "hosts": {"allowed.test": ip}}}))
        .await;
    let (st, _) = d.raw("PUT", &format!("/v1/sandboxes/{id}/files?path=/tmp/ca.pem"), t.ca_pem.clone().into()).await;
    assert!(st < 300);
    let (c, o) = run(d, &id, "curl -sS --max-time 10 --cacert /tmp/ca.pem https://allowed.test/tls").await;
    assert_eq!(c, 0, "{o}");
    assert!(o.contains("GET /tls HTTP/1.1"), "{o}");
    // SNI for a name not allowed, to the allowed address: refused.
    let (c, o) = run(
        d,
        &id,
        &format!("curl -sS --max-time 10 --cacert /tmp/ca.pem --resolve evil.test:443:{ip} https://evil.test/"),
    )
    .await;
    assert_ne!(c, 0, "SNI fronting got through: {o}");
    // An allowed SNI with another Host inside is the upstream's business
    // (the proxy cannot see it without terminating TLS); a plain-HTTP Host
    // mismatch is refused (allow_mode_resolver_and_host_checks).
    d.rm(&id).await;
}

/// Secrets: file, env and proxy modes; the value never appears anywhere it
/// must not.
#[tokio::test]
async fn secrets_are_projected_and_never_leak() {
    let t = TestNet::new(4);
    // The daemon's egress proxy trusts the test upstream's CA.
    let cfg = std::env::temp_dir().join(format!("spinup-test-net-{}.toml", std::process::id()));
    std::fs::write(&cfg, format!("[network]\nupstream_ca = [\"{}\"]\n", t.ca_file.display())).unwrap();
    let d = Daemon::start_with("secrets", &["--config", cfg.to_str().unwrap()], &[]);
    let file_v = format!("filesecret-{}-7f3a9c", std::process::id());
    let env_v = format!("envsecret-{}-b81e44", std::process::id());
    let proxy_v = format!("proxysecret-{}-c0ffee", std::process::id());
    for (n, v) in [("FILE_TOKEN", &file_v), ("ENV_TOKEN", &env_v), ("API_KEY", &proxy_v)] {
        let out = std::process::Command::new(common::BIN)
            .args(["secret", "set", n])
            .env("SPINUP_HOST", &d.sock)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(v.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(v.as_str()));
    }
    let values = [file_v.clone(), env_v.clone(), proxy_v.clone()];
    let ip = t.ip.to_string();
    let id = debian(
        &d,
        json!({
            "network": {"mode": "open", "hosts": {"echo.test": ip, "other.test": ip}},
            "secrets": [
                {"name": "FILE_TOKEN"},
                {"name": "ENV_TOKEN", "mode": "env"},
                {"name": "API_KEY", "mode": "proxy", "hosts": ["echo.test"]}
            ]
        }),
    )
    .await;
    // file: /run/secrets/NAME, 0400, on a tmpfs.
    let (c, o) = run(
        &d,
        &id,
        "stat -c '%a %U' /run/secrets/FILE_TOKEN; cat /run/secrets/FILE_TOKEN; echo; findmnt -no FSTYPE /run/secrets",
    )
    .await;
    assert_eq!(c, 0, "{o}");
    assert!(o.starts_with("400 root") && o.contains(&file_v) && o.contains("tmpfs"), "{o}");
    // env: in processes started in the sandbox, not in PID 1's environment.
    let (_, o) = run(&d, &id, "echo \"$ENV_TOKEN\"").await;
    assert!(o.contains(&env_v), "{o}");
    // proxy: the sandbox sees a placeholder only.
    let (_, ph) = run(&d, &id, "printf %s \"$API_KEY\"").await;
    assert!(ph.starts_with("SPINUP_PLACEHOLDER_API_KEY_"), "{ph}");
    // ...which the proxy swaps for the value towards echo.test only.
    let (c, o) =
        run(&d, &id, "curl -sS --max-time 10 -H \"Authorization: Bearer $API_KEY\" https://echo.test/api").await;
    assert_eq!(c, 0, "intercepted request failed: {o}");
    assert!(o.contains(&format!("Bearer {proxy_v}")), "the allowed host did not get the value: {o}");
    let (st, _) =
        d.raw("PUT", &format!("/v1/sandboxes/{id}/files?path=/tmp/upstream-ca.pem"), t.ca_pem.clone().into()).await;
    assert!(st < 300);
    let (c, o) = run(&d, &id, "curl -sS --max-time 10 --cacert /tmp/upstream-ca.pem -H \"Authorization: Bearer $API_KEY\" https://other.test/api").await;
    assert_eq!(c, 0, "{o}");
    assert!(o.contains(&format!("Bearer {ph}")) && !o.contains(&proxy_v), "a host not listed got the value: {o}");

    // Never inside the sandbox apart from where it was put.
    let (_, o) = run(&d, &id, "cat /proc/self/environ | tr '\\0' '\\n'").await;
    assert!(!o.contains(&proxy_v) && !o.contains(&file_v), "{o}");
    let grep = format!(
        "grep -rlF -e '{proxy_v}' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; echo end"
    );
    let (_, o) = run(&d, &id, &grep).await;
    assert_eq!(o.trim(), "end", "the proxy secret's value is somewhere in the sandbox: {o}");

    // Fork: children get secrets from the store, not copies: change the
    // value, fork, and the child has the new one.
    let new_file_v = format!("{file_v}-rotated");
    let (st, _) = d.raw("PUT", "/v1/secrets/FILE_TOKEN", new_file_v.clone().into()).await;
    assert_eq!(st, 200);
    let (st, f) = d.req("POST", &format!("/v1/sandboxes/{id}/fork"), Some(json!({"count": 1}))).await;
    assert_eq!(st, 201, "{f}");
    let child = f["children"][0]["id"].as_str().or(f["children"][0].as_str()).unwrap().to_string();
    let (_, o) = run(&d, &child, "cat /run/secrets/FILE_TOKEN; echo; echo \"$ENV_TOKEN\"").await;
    assert!(o.contains(&new_file_v) && o.contains(&env_v), "the child's secrets: {o}");
    let (_, o) = run(&d, &id, "cat /run/secrets/FILE_TOKEN").await;
    assert!(o.contains(&file_v) && !o.contains("rotated"), "{o}");

    // Attach later: a running sandbox gets a secret in another mode.
    let (st, v) = d
        .req(
            "POST",
            &format!("/v1/sandboxes/{id}/secrets"),
            Some(json!({"attach": [{"name": "FILE_TOKEN", "mode": "env"}]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, o) = run(&d, &id, "echo \"$FILE_TOKEN\"; ls /run/secrets").await;
    assert!(o.contains(&file_v) && !o.contains("FILE_TOKEN"), "re-attached as env: {o}");
    let (st, _) =
        d.req("POST", &format!("/v1/sandboxes/{id}/secrets"), Some(json!({"attach": [{"name": "FILE_TOKEN"}]}))).await;
    assert_eq!(st, 200);

    // Snapshots, diffs and the writable layer never hold a value.
    let (st, snap) = d.req("POST", &format!("/v1/sandboxes/{id}/snapshot"), Some(json!({}))).await;
    assert_eq!(st, 201, "{snap}");
    let (_, layer) =
        d.raw("GET", &format!("/v1/snapshots/{}/layer", snap["id"].as_str().unwrap()), bytes::Bytes::new()).await;
    let (_, diff) = d.raw("GET", &format!("/v1/sandboxes/{id}/diff?content=true"), bytes::Bytes::new()).await;
    let mut api = vec![];
    for path in [
        format!("/v1/sandboxes/{id}"),
        "/v1/sandboxes".into(),
        "/v1/secrets".into(),
        "/v1/secrets/API_KEY".into(),
        format!("/v1/sandboxes/{child}"),
    ] {
        api.extend_from_slice(&d.raw("GET", &path, bytes::Bytes::new()).await.1);
    }
    let upper = d.data().join("container/sandboxes").join(&id).join("disk/upper");
    let mut upper_bytes = vec![];
    for e in walk(&upper) {
        upper_bytes.extend(std::fs::read(e).unwrap_or_default());
    }
    // Every host process's environment and command line, but this test's.
    let mut procs = vec![];
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n == me || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Only host processes: a sandbox's own (in its pid namespace) may
        // hold the values it was given.
        let ns = std::fs::read_link(e.path().join("ns/pid")).ok();
        if ns != std::fs::read_link("/proc/self/ns/pid").ok() || in_sandbox(&e.path()) {
            continue;
        }
        procs.extend(std::fs::read(e.path().join("environ")).unwrap_or_default());
        procs.extend(std::fs::read(e.path().join("cmdline")).unwrap_or_default());
    }
    // A bad request naming the secret: the error has no value either.
    let (_, err) = d
        .raw(
            "POST",
            &format!("/v1/sandboxes/{id}/secrets"),
            json!({"attach": [{"name": "API_KEY", "mode": "proxy"}]}).to_string().into(),
        )
        .await;
    let log = d.log();
    let state_db = std::fs::read(d.data().join("state.db")).unwrap_or_default();
    for v in values.iter().chain([&new_file_v]) {
        let needle = v.as_bytes();
        for (what, hay) in [
            ("the daemon log", log.as_bytes()),
            ("API responses", &api[..]),
            ("host processes' environ/cmdline", &procs[..]),
            ("the writable layer", &upper_bytes[..]),
            ("the snapshot layer", &layer[..]),
            ("the diff", &diff[..]),
            ("an error message", &err[..]),
            ("the state database", &state_db[..]),
        ] {
            assert!(!hay.windows(needle.len()).any(|w| w == needle), "a secret value is in {what}");
        }
    }

    // Losing the key file: a clear error, no value in it.
    d.rm(&child).await;
    d.rm(&id).await;
    std::fs::remove_file(d.data().join("secrets.key")).unwrap();
    let (st, v) = d.req("POST", "/v1/sandboxes", Some(json!({"secrets": [{"name": "FILE_TOKEN"}]}))).await;
    assert_eq!(st, 503, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("key file") && m.contains("secrets.key"), "{m}");
    // The CLI lists names only; rm works.
    let out = d.cli(&["secret", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("API_KEY") && !values.iter().any(|v| text.contains(v.as_str())), "{text}");
    let out = d.cli(&["secret", "rm", "API_KEY"]);
    assert!(out.status.success(), "{out:?}");
    let _ = std::fs::remove_file(&cfg);
}

fn in_sandbox(proc_dir: &std::path::Path) -> bool {
    // Processes in a container's mount namespace differ from ours.
    std::fs::read_link(proc_dir.join("ns/mnt")).ok() != std::fs::read_link("/proc/self/ns/mnt").ok()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// A sandbox flooding DNS or opening thousands of connections hits its own
/// limits; another sandbox and the daemon keep working.
#[tokio::test]
async fn floods_hit_per_sandbox_limits() {
    let d = shared();
    let t = TestNet::new(5);
    let ip = t.ip.to_string();
    let flood = debian(d, json!({"network": {"mode": "open", "hosts": {"echo.test": ip}}})).await;
    let calm = debian(d, json!({"network": {"mode": "open", "hosts": {"echo.test": ip}}})).await;
    // DNS: 3000 queries as fast as one socket can send them.
    let script = r#"
import socket, struct, time, random
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.001)
ns = open('/etc/resolv.conf').read().split('nameserver ')[1].split()[0]
q = lambda i: struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0) + b'\x04echo\x04test\x00\x00\x01\x00\x01'
sent = got = 0
t0 = time.time()
for i in range(3000):
    s.sendto(q(i), (ns, 53)); sent += 1
    try:
        while True:
            s.recv(512); got += 1
    except Exception: pass
s.settimeout(1)
try:
    while True: s.recv(512); got += 1
except Exception: pass
print(sent, got, round(time.time() - t0, 2))
"#;
    d.raw("PUT", &format!("/v1/sandboxes/{flood}/files?path=/tmp/flood.py"), script.to_string().into()).await;
    let (c, o) = run(d, &flood, "python3 /tmp/flood.py").await;
    assert_eq!(c, 0, "{o}");
    let nums: Vec<f64> = o.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let (sent, got) = (nums[0], nums[1]);
    eprintln!("DNS flood: sent {sent}, answered {got}");
    assert!(got < sent * 0.5, "the resolver answered {got} of {sent}: no per-sandbox limit");
    // Meanwhile the other sandbox resolves and the daemon answers.
    let (c, o) = run(d, &calm, "getent hosts echo.test").await;
    assert_eq!(c, 0, "a calm sandbox cannot resolve: {o}");
    // Connections: 2000 at once to the test server.
    let script = format!(
        r#"
import socket
ok = refused = 0
socks = []
for i in range(2000):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect(('{ip}', 9000)); socks.append(s); ok += 1
    except Exception:
        refused += 1
print(ok, refused)
"#
    );
    d.raw("PUT", &format!("/v1/sandboxes/{flood}/files?path=/tmp/conns.py"), script.into()).await;
    let (c, o) = run(d, &flood, "ulimit -n 4096; python3 /tmp/conns.py").await;
    assert_eq!(c, 0, "{o}");
    let nums: Vec<u64> = o.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    eprintln!("connection flood: {} open, {} refused", nums[0], nums[1]);
    assert!(nums[0] <= 600 && nums[1] > 0, "no per-sandbox connection limit: {o}");
    let (c, o) = run(d, &calm, &format!("echo calm | timeout 5 python3 -c \"import socket; s=socket.create_connection(('{ip}', 9000), 3); s.sendall(b'calm'); print(s.recv(10))\"")).await;
    assert!(c == 0 && o.contains("calm"), "a calm sandbox cannot connect: {o}");
    let (st, _) = d.req("GET", "/v1/sandboxes", None).await;
    assert_eq!(st, 200);
    d.rm(&flood).await;
    d.rm(&calm).await;
}

/// WebSocket and long-lived HTTP through an exposed port.
#[tokio::test]
async fn websocket_and_streaming_http_through_a_port() {
    let d = shared();
    let id = debian(d, json!({})).await;
    let server = r#"
import base64, hashlib, socket, threading, time
def handle(c):
    req = b''
    while b'\r\n\r\n' not in req:
        req += c.recv(4096)
    head = req.decode()
    if 'Upgrade: websocket' in head or 'upgrade: websocket' in head:
        key = [l.split(':', 1)[1].strip() for l in head.split('\r\n') if l.lower().startswith('sec-websocket-key')][0]
        acc = base64.b64encode(hashlib.sha1((key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').encode()).digest()).decode()
        c.sendall(('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' % acc).encode())
        while True:
            h = c.recv(2)
            if len(h) < 2: return
            n = h[1] & 127
            if n == 126: n = int.from_bytes(c.recv(2), 'big')
            mask = c.recv(4); data = b''
            while len(data) < n: data += c.recv(n - len(data))
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if h[0] & 15 == 8: return
            out = b'echo:' + data
            c.sendall(bytes([0x81, len(out)]) + out)
    else:
        c.sendall(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')
        for i in range(5):
            msg = ('chunk %d\n' % i).encode()
            c.sendall(b'%x\r\n%s\r\n' % (len(msg), msg)); time.sleep(0.4)
        c.sendall(b'0\r\n\r\n'); c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 8000)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;
    d.raw("PUT", &format!("/v1/sandboxes/{id}/files?path=/tmp/server.py"), server.to_string().into()).await;
    bg(d, &id, "python3 /tmp/server.py").await;
    eventually("the server listens", 20, || async {
        run(d, &id, "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000), 1)\"").await.0 == 0
    })
    .await;
    let (st, v) = d.req("POST", &format!("/v1/sandboxes/{id}/ports"), Some(json!({"port": 8000}))).await;
    assert_eq!(st, 201, "{v}");
    let (addr, token) = (v["address"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string());
    // Long-lived HTTP: chunks arrive as they are sent, not at the end.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET /stream HTTP/1.1\r\nHost: x\r\nX-Spinup-Token: {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut got = String::new();
    let mut first_chunk_at = None;
    let mut buf = [0u8; 1024];
    while !got.contains("0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        if first_chunk_at.is_none() && got.contains("chunk 0") {
            first_chunk_at = Some(t0.elapsed());
        }
    }
    assert!(got.contains("chunk 4"), "{got}");
    assert!(
        first_chunk_at.unwrap() < Duration::from_millis(1200),
        "the first chunk waited for the end: {first_chunk_at:?}"
    );
    // WebSocket, token in the query (as a browser would).
    let url = format!("ws://{addr}/ws?spinup_token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket through the port");
    use futures::{SinkExt, StreamExt};
    for m in ["one", "two"] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(m.into())).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(r.into_text().unwrap().as_str(), format!("echo:{m}"));
    }
    d.rm(&id).await;
}
