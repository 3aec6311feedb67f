//! Test networks that exist only on this machine: a network namespace per
//! test with a veth to the host, addresses from 198.18.0.0/15 (the
//! benchmarking range: never routed outside), and real servers inside it:
//! - :80   HTTP echo (answers with the request head it received)
//! - :443  the same over TLS, for any SNI, under the test's own CA
//! - :8080 a TCP stream that writes "tick\n" every 100 ms until closed
//! - :9000 TCP echo
//!
//! Plus the metadata address 169.254.169.254 on a host-only interface.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct TestNet {
    pub ns: String,
    pub host_if: String,
    /// The host's address on the link (a host address: forbidden).
    pub host_ip: Ipv4Addr,
    /// The servers' address.
    pub ip: Ipv4Addr,
    /// A second address of the servers, in a private range (10.250.N.2):
    /// reachable from the host, from a sandbox only when listed.
    pub private_ip: Ipv4Addr,
    /// The CA the HTTPS server's certificates chain to (PEM file path).
    pub ca_file: std::path::PathBuf,
    pub ca_pem: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestNet {
    /// A fresh test network; `slot` distinguishes the test's networks.
    pub fn new(slot: u8) -> TestNet {
        // A /24 of 198.18.0.0/15 per (process, slot): parallel test
        // processes pick different ones.
        let n = ((std::process::id() as usize * 7 + slot as usize * 131) % 250) as u32;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n * 256;
        let (host_ip, addr) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let ns = format!("spt-{}-{slot}", std::process::id());
        let host_if = format!("spt{n}");
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &host_ip.to_string()]);
        let private_ip = Ipv4Addr::new(10, 250, n as u8, 2);
        ip(&["-n", &ns, "addr", "add", &format!("{private_ip}/32"), "dev", "eth0"]);
        let _ = Command::new("ip").args(["route", "del", &format!("{private_ip}/32")]).output();
        ip(&["route", "add", &format!("{private_ip}/32"), "via", &addr.to_string()]);
        let ca = Arc::new(spinup_net::ca::SandboxCa::generate("Spinup test upstream CA").unwrap());
        let ca_file = std::env::temp_dir().join(format!("spinup-test-ca-{}-{slot}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let t = TestNet {
            ns: ns.clone(),
            host_if,
            host_ip,
            ip: addr,
            private_ip,
            ca_file,
            ca_pem: ca.cert_pem().to_string(),
        };
        let netns = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; it then serves from here.
            assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let http = tokio::net::TcpListener::bind("0.0.0.0:80").await.unwrap();
                let https = tokio::net::TcpListener::bind("0.0.0.0:443").await.unwrap();
                let ticks = tokio::net::TcpListener::bind("0.0.0.0:8080").await.unwrap();
                let echo = tokio::net::TcpListener::bind("0.0.0.0:9000").await.unwrap();
                tx.send(()).unwrap();
                let tls = tokio_rustls::TlsAcceptor::from(ca.server_config());
                tokio::join!(
                    async {
                        loop {
                            let Ok((s, _)) = http.accept().await else { continue };
                            tokio::spawn(echo_http(s));
                        }
                    },
                    async {
                        loop {
                            let Ok((s, _)) = https.accept().await else { continue };
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                if let Ok(s) = tls.accept(s).await {
                                    echo_http(s).await;
                                }
                            });
                        }
                    },
                    async {
                        loop {
                            let Ok((mut s, _)) = ticks.accept().await else { continue };
                            tokio::spawn(async move {
                                while s.write_all(b"tick\n").await.is_ok() {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            });
                        }
                    },
                    async {
                        loop {
                            let Ok((s, _)) = echo.accept().await else { continue };
                            tokio::spawn(async move {
                                let (mut r, mut w) = tokio::io::split(s);
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            });
                        }
                    },
                );
            });
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("test servers up");
        t
    }

    /// Run a command inside the test namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.ns]).args(args).output().unwrap()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", &format!("{}/32", self.private_ip)]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// Answer every request on `s` with its own head (request line and
/// headers) as the body; keep-alive.
async fn echo_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
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
        // Bodies are not used by the tests: drop a declared one.
        let text = String::from_utf8_lossy(&head).to_string();
        let len = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: spinup-testnet\r\n\r\n{}",
            head.len(),
            text
        );
        if s.write_all(resp.as_bytes()).await.is_err() || text.to_ascii_lowercase().contains("connection: close") {
            return;
        }
    }
}

/// A TCP listener on the metadata address, on an interface of this test
/// process's own (removed on drop; the same /32 may sit on several, so
/// tests running side by side do not share one). Only the host can reach it.
pub struct Metadata {
    pub port: u16,
    link: String,
}

impl Drop for Metadata {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.link]).output();
    }
}

pub fn metadata_listener() -> Metadata {
    // (A veth pair: this kernel may have no dummy driver.)
    let link = format!("sptm{}", std::process::id());
    let peer = format!("{link}p");
    let _ = Command::new("ip").args(["link", "add", &link, "type", "veth", "peer", "name", &peer]).output();
    let _ = Command::new("ip").args(["addr", "add", "169.254.169.254/32", "dev", &link]).output();
    let _ = Command::new("ip").args(["link", "set", &link, "up"]).output();
    let _ = Command::new("ip").args(["link", "set", &peer, "up"]).output();
    let l = std::net::TcpListener::bind("169.254.169.254:0").expect("bind the metadata address");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, b"HTTP/1.0 200 OK\r\ncontent-length: 8\r\n\r\nmetadata");
        }
    });
    Metadata { port, link }
}

/// A TCP listener on every host address (0.0.0.0); returns its port.
pub fn host_listener() -> u16 {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nhost");
        }
    });
    port
}
