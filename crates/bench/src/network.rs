//! `spinup bench --network`.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::Method;
use serde_json::{json, Value};
use spinup_protocol::client::{empty_body, full_body};

use crate::{stats, Api, Conn, Opts};

/// A server that exists only on this machine: a network namespace with a
/// veth to the host (198.19.254.2), plain HTTP on :80 and TLS on :443 under
/// a CA made for the run. `/small` answers 64 bytes (keep-alive), `/big`
/// 64 MiB.
struct BenchNet {
    ns: String,
    host_if: String,
    ip: String,
    ca_pem: String,
}

const BIG: usize = 64 << 20;

impl BenchNet {
    fn start() -> Result<BenchNet> {
        let ns = format!("spbench-{}", std::process::id());
        let host_if = "spbench0".to_string();
        let ip = "198.19.254.2".to_string();
        let sh = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output().context("running ip")?;
            if !out.status.success() {
                bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh(&["netns", "add", &ns])?;
        sh(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        sh(&["addr", "add", "198.19.254.1/24", "dev", &host_if])?;
        sh(&["link", "set", &host_if, "up"])?;
        sh(&["-n", &ns, "addr", "add", "198.19.254.2/24", "dev", "eth0"])?;
        sh(&["-n", &ns, "link", "set", "eth0", "up"])?;
        sh(&["-n", &ns, "link", "set", "lo", "up"])?;
        sh(&["-n", &ns, "route", "add", "default", "via", "198.19.254.1"])?;
        let ca = std::sync::Arc::new(spinup_net::ca::SandboxCa::generate("Spinup bench upstream CA")?);
        let ca_pem = ca.cert_pem().to_string();
        let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only; it serves from there.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error().to_string()));
                return;
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let (Ok(http), Ok(https)) = (
                    tokio::net::TcpListener::bind("0.0.0.0:80").await,
                    tokio::net::TcpListener::bind("0.0.0.0:443").await,
                ) else {
                    let _ = tx.send(Err("binding the bench server".into()));
                    return;
                };
                let _ = tx.send(Ok(()));
                let tls = tokio_rustls::TlsAcceptor::from(ca.server_config());
                tokio::spawn(async move {
                    while let Ok((s, _)) = http.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(bench_http(s));
                    }
                });
                while let Ok((s, _)) = https.accept().await {
                    let _ = s.set_nodelay(true);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Ok(s) = tls.accept(s).await {
                            bench_http(s).await;
                        }
                    });
                }
            });
        });
        rx.recv_timeout(Duration::from_secs(10)).context("bench server")?.map_err(|e| anyhow::anyhow!(e))?;
        Ok(BenchNet { ns, host_if, ip, ca_pem })
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

async fn bench_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let zeros = vec![0u8; 256 * 1024];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let big = head.starts_with(b"GET /big");
        let len = if big { BIG } else { 64 };
        let h = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n");
        if s.write_all(h.as_bytes()).await.is_err() {
            return;
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len());
            if s.write_all(&zeros[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    }
}

/// curl arguments for `n` requests of `/small` over one connection, printing
/// each request's total time, then one `/big` printing the download speed.
fn curl_script(url: &str, n: usize, extra: &str) -> String {
    // One `-o /dev/null URL` pair per request: the same connection, each
    // transfer's own time.
    let urls = std::iter::repeat_n(format!("-o /dev/null {url}/small"), n).collect::<Vec<_>>().join(" ");
    format!(
        "curl -s {extra} -w '%{{time_total}}\\n' {urls} && curl -s {extra} -o /dev/null -w 'speed %{{speed_download}}\\n' {url}/big && curl -s {extra} -o /dev/null -w 'speed %{{speed_download}}\\n' {url}/big && curl -s {extra} -o /dev/null -w 'speed %{{speed_download}}\\n' {url}/big"
    )
}

/// (per-request latencies, median download speed in MB/s) from curl's
/// output; the first request (connection and TLS set-up) is left out.
fn parse_curl(out: &str) -> Result<(Vec<Duration>, f64)> {
    let mut lat = vec![];
    let mut speeds = vec![];
    for l in out.lines() {
        if let Some(s) = l.strip_prefix("speed ") {
            speeds.push(s.trim().parse::<f64>()? / 1e6);
        } else if let Ok(t) = l.trim().parse::<f64>() {
            lat.push(Duration::from_secs_f64(t));
        }
    }
    if lat.is_empty() || speeds.is_empty() {
        bail!("unexpected curl output: {out}");
    }
    speeds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if lat.len() > 1 {
        lat.remove(0);
    }
    Ok((lat, speeds[speeds.len() / 2]))
}

/// `spinup bench --network`: HTTP latency and throughput from a sandbox to
/// a server on this machine, next to the same curl run on the host; and the
/// same over HTTPS through the secrets proxy (TLS terminated with the
/// sandbox's CA, re-encrypted upstream, placeholder swapped), next to the
/// host's HTTPS.
pub async fn run_network(c: &impl Api, o: Opts) -> Result<Value> {
    let n = o.exec_iterations.clamp(20, 1000);
    let mut conn = Conn::open(c).await?;
    let net = BenchNet::start()?;
    // The daemon's proxy trusts this run's CA for sandboxes made from now.
    let ca_dir = o.data_dir.join("net/upstream-ca.d");
    std::fs::create_dir_all(&ca_dir)
        .with_context(|| format!("{} (pass --data-dir of the running daemon)", ca_dir.display()))?;
    let ca_file = ca_dir.join(format!("spinup-bench-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &net.ca_pem)?;
    let host_ca = std::env::temp_dir().join(format!("spinup-bench-ca-{}.pem", std::process::id()));
    std::fs::write(&host_ca, &net.ca_pem)?;
    let secret = "SPINUP_BENCH_TOKEN";
    c.call(Method::PUT, &format!("/v1/secrets/{secret}"), full_body("bench-token-value")).await?;
    let result = async {
        let ip = &net.ip;
        let host_run = |script: String| -> Result<String> {
            let out = Command::new("sh").arg("-c").arg(&script).output()?;
            if !out.status.success() {
                bail!("host curl failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        };
        let mut create = json!({
            "env": "debian",
            "network": {"mode": "open", "hosts": {"bench.test": ip}},
            "secrets": [{"name": secret, "mode": "proxy", "hosts": ["bench.test"]}],
        });
        if let Some(d) = &o.driver {
            create["driver"] = d.clone().into();
        }
        eprintln!("creating a debian sandbox (the first run builds the environment)");
        let (st, v) = conn.call("POST", "/v1/sandboxes", create).await?;
        if st != 201 {
            bail!("create failed: {v}");
        }
        let id = v["id"].as_str().unwrap_or("").to_string();
        let sandbox_run = |script: String| {
            let id = id.clone();
            async move {
                let mut conn = Conn::open(c).await?;
                let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"cmd": script})).await?;
                if st != 200 || v["exit_code"] != 0 {
                    bail!("sandbox curl failed: {v}");
                }
                Ok::<_, anyhow::Error>(v["stdout"].as_str().unwrap_or("").to_string())
            }
        };
        let http_url = format!("http://{ip}");
        let host_tls = format!("--cacert {} --resolve bench.test:443:{ip}", host_ca.display());
        let arms = [
            ("host_http", host_run(curl_script(&http_url, n, ""))?),
            ("sandbox_http", sandbox_run(curl_script(&http_url, n, "")).await?),
            ("host_https", host_run(curl_script("https://bench.test", n, &host_tls))?),
            (
                "sandbox_https_proxy",
                sandbox_run(curl_script("https://bench.test", n, "-H \"Authorization: Bearer $SPINUP_BENCH_TOKEN\""))
                    .await?,
            ),
        ];
        let _ = conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await;
        let mut out = json!({"requests": n, "big_mib": BIG >> 20});
        for (k, text) in arms {
            let (lat, mbps) = parse_curl(&text)?;
            let s = stats(lat);
            out[k] = json!({"latency_ms": {"p50": s.p50, "p95": s.p95}, "throughput_mb_s": mbps});
        }
        let r = |a: &str, b: &str, f: &str| {
            let (x, y) = if f == "lat" {
                (
                    out[a]["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                    out[b]["latency_ms"]["p50"].as_f64().unwrap_or(1.0),
                )
            } else {
                (out[a]["throughput_mb_s"].as_f64().unwrap_or(0.0), out[b]["throughput_mb_s"].as_f64().unwrap_or(1.0))
            };
            x / y
        };
        let ratios = [
            ("ratio_sandbox_vs_host_http_latency_p50", r("sandbox_http", "host_http", "lat")),
            ("ratio_sandbox_vs_host_http_throughput", r("sandbox_http", "host_http", "tp")),
            ("ratio_proxy_vs_host_https_latency_p50", r("sandbox_https_proxy", "host_https", "lat")),
            ("ratio_proxy_vs_host_https_throughput", r("sandbox_https_proxy", "host_https", "tp")),
        ];
        for (k, v) in ratios {
            out[k] = v.into();
        }
        Ok(out)
    }
    .await;
    let _ = std::fs::remove_file(&ca_file);
    let _ = std::fs::remove_file(&host_ca);
    let _ = c.call(Method::DELETE, &format!("/v1/secrets/{secret}"), empty_body()).await;
    result
}

pub fn print_network_table(v: &Value) {
    let f = |x: &Value| x.as_f64().map(|n| format!("{n:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "| HTTP to a server on this machine ({} requests on one connection; {} MiB download) | latency p50 (ms) | p95 | throughput (MB/s) |",
        v["requests"], v["big_mib"]
    );
    println!("|---|---|---|---|");
    for (k, label) in [
        ("host_http", "baseline: curl on the host, HTTP"),
        ("sandbox_http", "curl in a sandbox, HTTP (veth + NAT + policy)"),
        ("host_https", "baseline: curl on the host, HTTPS"),
        ("sandbox_https_proxy", "curl in a sandbox, HTTPS through the secrets proxy"),
    ] {
        let e = &v[k];
        println!(
            "| {label} | {} | {} | {} |",
            f(&e["latency_ms"]["p50"]),
            f(&e["latency_ms"]["p95"]),
            f(&e["throughput_mb_s"])
        );
    }
    println!();
    println!(
        "sandbox vs host (HTTP): latency {}×, throughput {}×; secrets proxy vs host (HTTPS): latency {}×, throughput {}×",
        f(&v["ratio_sandbox_vs_host_http_latency_p50"]),
        f(&v["ratio_sandbox_vs_host_http_throughput"]),
        f(&v["ratio_proxy_vs_host_https_latency_p50"]),
        f(&v["ratio_proxy_vs_host_https_throughput"])
    );
}
