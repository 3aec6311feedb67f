//! Host tools: the one way Spinup runs a host program ([`run`]), the one
//! [`which`], and [`HostTools`], the seam through which the daemon's
//! networking changes links, namespaces and nftables: [`RealHost`] runs
//! `ip` and `nft`; [`RecordingHost`] records each call as a line of text
//! and gives canned answers (for unit tests).
//!
//! Processes are spawned with `tokio::process`, never `std::process`, so
//! waiting for one never holds a runtime worker.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use spinup_model::{Error, Result};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub use async_trait::async_trait;

/// The longest argument summary an error quotes.
const SUMMARY_MAX: usize = 200;

/// How to run a host tool: its input, and what its failures become.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    stdin: Option<&'a [u8]>,
    fix: &'a str,
    failed: fn(String) -> Error,
}

impl<'a> Run<'a> {
    /// `fix`: what to do when the tool cannot be started, e.g. "install
    /// iproute2 and nftables (scripts/install-deps.sh)". Its stdin is
    /// /dev/null and a non-zero exit is [`Error::Internal`] unless said
    /// otherwise.
    pub const fn new(fix: &'a str) -> Run<'a> {
        Run { stdin: None, fix, failed: Error::Internal }
    }

    /// Feed `input` to the tool's stdin (then close it).
    pub const fn stdin(self, input: &'a [u8]) -> Run<'a> {
        Run { stdin: Some(input), ..self }
    }

    /// The error a non-zero exit becomes (its message says what ran, how it
    /// exited and its stderr).
    pub const fn failed_as(self, failed: fn(String) -> Error) -> Run<'a> {
        Run { failed, ..self }
    }
}

/// What a tool that exited 0 printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// The program and its arguments, as errors quote them (shortened).
pub fn summary(cmd: &Command) -> String {
    let c = cmd.as_std();
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if s.chars().count() > SUMMARY_MAX {
        s = s.chars().take(SUMMARY_MAX).collect::<String>() + "…";
    }
    s
}

/// Run `cmd` to its end, capturing its stdout and stderr. A tool that
/// cannot be started is [`Error::Unavailable`] ("cannot run <tool and
/// args>: <why>; <fix>"); one that exits non-zero is `how`'s failure
/// ("<tool and args> failed (<exit status>): <stderr>").
pub async fn run(cmd: &mut Command, how: Run<'_>) -> Result<Output> {
    let what = summary(cmd);
    cmd.stdin(if how.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Unavailable(format!("cannot run {what}: {e}; {}", how.fix)))?;
    let input = child.stdin.take();
    // Fed while its output is read, so a tool that writes before it has
    // read all its input cannot block on a full pipe.
    let feed = async {
        if let (Some(mut s), Some(bytes)) = (input, how.stdin) {
            // A tool that exits without reading it all fails below, by
            // its exit status.
            let _ = s.write_all(bytes).await;
        }
    };
    let ((), out) = tokio::join!(feed, child.wait_with_output());
    let out = out.map_err(|e| Error::internal(format!("waiting for {what}"), e))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        let said = if stderr.is_empty() { "nothing on stderr" } else { stderr.as_str() };
        return Err((how.failed)(format!("{what} failed ({}): {said}", out.status)));
    }
    Ok(Output { stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr })
}

/// Where `bin` is: itself when it names a path (has a `/`), else the first
/// file of that name in a `PATH` directory.
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        return Path::new(bin).is_file().then(|| PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(bin)).find(|p| p.is_file())
}

/// One IPv4 address of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    /// The interface it is on.
    pub link: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Links, network namespaces and nftables on the host: what the daemon's
/// networking changes, behind one seam so that tests can fake it.
///
/// Names are the kernel's (`sp213v7`, `spinup-<id>`); scripts are what
/// `ip -batch -` and `nft -f -` read.
#[async_trait]
pub trait HostTools: Send + Sync + std::fmt::Debug {
    /// Where `tool` is installed ([`which`]).
    fn which(&self, tool: &str) -> Option<PathBuf>;
    /// `net.ipv4.ip_forward = 1`.
    async fn enable_ipv4_forwarding(&self) -> Result<()>;
    /// The host's IPv4 addresses (`ip -j -4 addr`; none if it fails).
    async fn ipv4_addresses(&self) -> Vec<HostAddr>;
    /// The links the host's IPv4 default routes leave by (its uplinks).
    async fn default_route_links(&self) -> Vec<String>;
    /// Every link's name (`/sys/class/net`).
    async fn links(&self) -> Vec<String>;
    async fn link_exists(&self, name: &str) -> bool;
    /// `ip link del <name>`.
    async fn link_del(&self, name: &str) -> Result<()>;
    /// The network namespace (by name) the peer of veth `link` is in.
    async fn link_peer_netns(&self, link: &str) -> Option<String>;
    /// `ip -batch -` (in namespace `netns` when given: `ip -n <netns>`).
    async fn ip_batch(&self, netns: Option<&str>, script: &str) -> Result<()>;
    async fn netns_exists(&self, name: &str) -> bool;
    /// `ip netns del <name>`.
    async fn netns_del(&self, name: &str) -> Result<()>;
    /// `nft -f -`: one transaction (all of `script` or none of it).
    async fn nft(&self, script: &str) -> Result<()>;
    /// `nft -j list table inet <table>`: its JSON.
    async fn nft_list_table(&self, table: &str) -> Result<Vec<u8>>;
}

/// The host itself: `ip` (iproute2), `nft` (nftables), sysfs and procfs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

const NET_TOOLS: &str = "install iproute2 and nftables (scripts/install-deps.sh)";

impl RealHost {
    async fn tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let how = Run::new(NET_TOOLS);
        let how = match stdin {
            Some(s) => how.stdin(s.as_bytes()),
            None => how,
        };
        run(Command::new(tool).args(args), how).await
    }

    async fn ip_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = self.tool("ip", args, None).await.ok()?;
        serde_json::from_str(&out.stdout).ok()
    }
}

#[async_trait]
impl HostTools for RealHost {
    fn which(&self, tool: &str) -> Option<PathBuf> {
        which(tool)
    }

    async fn enable_ipv4_forwarding(&self) -> Result<()> {
        let f = "/proc/sys/net/ipv4/ip_forward";
        tokio::fs::write(f, "1").await.map_err(|e| Error::internal(format!("writing {f}"), e))
    }

    async fn ipv4_addresses(&self) -> Vec<HostAddr> {
        let Some(v) = self.ip_json(&["-j", "-4", "addr"]).await else { return vec![] };
        parse_addresses(&v)
    }

    async fn default_route_links(&self) -> Vec<String> {
        let Some(v) = self.ip_json(&["-j", "-4", "route", "show", "default"]).await else { return vec![] };
        v.as_array().into_iter().flatten().filter_map(|r| r["dev"].as_str().map(str::to_string)).collect()
    }

    async fn links(&self) -> Vec<String> {
        let Ok(mut rd) = tokio::fs::read_dir("/sys/class/net").await else { return vec![] };
        let mut out = vec![];
        while let Ok(Some(e)) = rd.next_entry().await {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out
    }

    async fn link_exists(&self, name: &str) -> bool {
        tokio::fs::try_exists(Path::new("/sys/class/net").join(name)).await.unwrap_or(false)
    }

    async fn link_del(&self, name: &str) -> Result<()> {
        self.tool("ip", &["link", "del", name], None).await.map(drop)
    }

    async fn link_peer_netns(&self, link: &str) -> Option<String> {
        let nsid = self.ip_json(&["-j", "-d", "link", "show", "dev", link]).await?[0]["link_netnsid"].as_i64()?;
        let ids = self.ip_json(&["-j", "netns", "list-id"]).await?;
        ids.as_array()?.iter().find(|n| n["nsid"].as_i64() == Some(nsid))?["name"].as_str().map(str::to_string)
    }

    async fn ip_batch(&self, netns: Option<&str>, script: &str) -> Result<()> {
        match netns {
            Some(ns) => self.tool("ip", &["-n", ns, "-batch", "-"], Some(script)).await.map(drop),
            None => self.tool("ip", &["-batch", "-"], Some(script)).await.map(drop),
        }
    }

    async fn netns_exists(&self, name: &str) -> bool {
        tokio::fs::try_exists(Path::new("/run/netns").join(name)).await.unwrap_or(false)
    }

    async fn netns_del(&self, name: &str) -> Result<()> {
        self.tool("ip", &["netns", "del", name], None).await.map(drop)
    }

    async fn nft(&self, script: &str) -> Result<()> {
        self.tool("nft", &["-f", "-"], Some(script)).await.map(drop)
    }

    async fn nft_list_table(&self, table: &str) -> Result<Vec<u8>> {
        self.tool("nft", &["-j", "list", "table", "inet", table], None).await.map(|o| o.stdout.into_bytes())
    }
}

/// The addresses in `ip -j -4 addr` output.
fn parse_addresses(v: &serde_json::Value) -> Vec<HostAddr> {
    let mut out = vec![];
    for link in v.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or_default();
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(ip), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else { continue };
            let Ok(addr) = ip.parse::<Ipv4Addr>() else { continue };
            out.push(HostAddr { link: name.to_string(), addr, prefix: p as u8 });
        }
    }
    out
}

/// A fake host for unit tests: every call is recorded as one line of text
/// (see [`RecordingHost::calls`]) and answered from what the test set up.
/// Scripts are recorded on their line with their lines joined by "; ".
///
/// It keeps a little state so sequences read true: `ip -batch` lines
/// `netns add N` and `link add L ...` make them exist, `link_del` and
/// `netns_del` remove them (and fail, as `ip` does, when they are absent).
#[derive(Debug, Default)]
pub struct RecordingHost {
    state: Mutex<Fake>,
}

#[derive(Debug, Default)]
struct Fake {
    calls: Vec<String>,
    links: BTreeSet<String>,
    netns: BTreeSet<String>,
    peers: HashMap<String, String>,
    addresses: Vec<HostAddr>,
    default_links: Vec<String>,
    tables: HashMap<String, Vec<u8>>,
    missing: BTreeSet<String>,
    failures: Vec<(String, String)>,
}

fn one_line(script: &str) -> String {
    script.trim_end().replace('\n', "; ")
}

impl RecordingHost {
    pub fn new() -> RecordingHost {
        RecordingHost::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Record `call`; the failure set up for it, if any.
    fn record(&self, call: String) -> Result<()> {
        self.with(|s| {
            let failure = s.failures.iter().find(|(part, _)| call.contains(part.as_str())).map(|(_, m)| m.clone());
            s.calls.push(call);
            failure.map_or(Ok(()), |m| Err(Error::Internal(m)))
        })
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<String> {
        self.with(|s| std::mem::take(&mut s.calls))
    }

    pub fn add_link(&self, name: &str) {
        self.with(|s| s.links.insert(name.to_string()));
    }

    pub fn add_netns(&self, name: &str) {
        self.with(|s| s.netns.insert(name.to_string()));
    }

    /// Veth `link`'s peer is in namespace `netns`.
    pub fn set_peer(&self, link: &str, netns: &str) {
        self.with(|s| s.peers.insert(link.to_string(), netns.to_string()));
    }

    pub fn set_addresses(&self, addresses: Vec<HostAddr>, default_links: Vec<String>) {
        self.with(|s| {
            s.addresses = addresses;
            s.default_links = default_links;
        });
    }

    /// What `nft -j list table inet <table>` prints (else it fails).
    pub fn set_table_json(&self, table: &str, json: &str) {
        self.with(|s| s.tables.insert(table.to_string(), json.as_bytes().to_vec()));
    }

    /// `which(tool)` finds nothing (every tool is found otherwise).
    pub fn without_tool(&self, tool: &str) {
        self.with(|s| s.missing.insert(tool.to_string()));
    }

    /// Calls whose line contains `part` fail with `message` (they are
    /// recorded all the same); the first matching rule wins.
    pub fn fail(&self, part: &str, message: &str) {
        self.with(|s| s.failures.push((part.to_string(), message.to_string())));
    }

    /// Forget every failure rule.
    pub fn heal(&self) {
        self.with(|s| s.failures.clear());
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.with(|s| s.links.contains(name))
    }

    pub fn has_netns(&self, name: &str) -> bool {
        self.with(|s| s.netns.contains(name))
    }
}

#[async_trait]
impl HostTools for RecordingHost {
    fn which(&self, tool: &str) -> Option<PathBuf> {
        let _ = self.record(format!("which {tool}"));
        self.with(|s| (!s.missing.contains(tool)).then(|| Path::new("/usr/sbin").join(tool)))
    }

    async fn enable_ipv4_forwarding(&self) -> Result<()> {
        self.record("sysctl net.ipv4.ip_forward=1".into())
    }

    async fn ipv4_addresses(&self) -> Vec<HostAddr> {
        let _ = self.record("ip -j -4 addr".into());
        self.with(|s| s.addresses.clone())
    }

    async fn default_route_links(&self) -> Vec<String> {
        let _ = self.record("ip -j -4 route show default".into());
        self.with(|s| s.default_links.clone())
    }

    async fn links(&self) -> Vec<String> {
        let _ = self.record("ls /sys/class/net".into());
        self.with(|s| s.links.iter().cloned().collect())
    }

    async fn link_exists(&self, name: &str) -> bool {
        let _ = self.record(format!("test -e /sys/class/net/{name}"));
        self.has_link(name)
    }

    async fn link_del(&self, name: &str) -> Result<()> {
        self.record(format!("ip link del {name}"))?;
        match self.with(|s| s.links.remove(name)) {
            true => Ok(()),
            false => Err(Error::Internal(format!("ip link del {name} failed: Cannot find device \"{name}\""))),
        }
    }

    async fn link_peer_netns(&self, link: &str) -> Option<String> {
        let _ = self.record(format!("ip -j -d link show dev {link}"));
        self.with(|s| s.peers.get(link).cloned())
    }

    async fn ip_batch(&self, netns: Option<&str>, script: &str) -> Result<()> {
        let on = netns.map(|n| format!("-n {n} ")).unwrap_or_default();
        self.record(format!("ip {on}-batch - <<< {}", one_line(script)))?;
        if netns.is_none() {
            self.with(|s| {
                for l in script.lines() {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    match w.as_slice() {
                        ["netns", "add", n, ..] => s.netns.insert(n.to_string()),
                        ["link", "add", n, ..] => s.links.insert(n.to_string()),
                        _ => false,
                    };
                }
            });
        }
        Ok(())
    }

    async fn netns_exists(&self, name: &str) -> bool {
        let _ = self.record(format!("test -e /run/netns/{name}"));
        self.has_netns(name)
    }

    async fn netns_del(&self, name: &str) -> Result<()> {
        self.record(format!("ip netns del {name}"))?;
        match self.with(|s| s.netns.remove(name)) {
            true => Ok(()),
            false => Err(Error::Internal(format!("ip netns del {name} failed: No such file or directory"))),
        }
    }

    async fn nft(&self, script: &str) -> Result<()> {
        self.record(format!("nft -f - <<< {}", one_line(script)))
    }

    async fn nft_list_table(&self, table: &str) -> Result<Vec<u8>> {
        self.record(format!("nft -j list table inet {table}"))?;
        self.with(|s| s.tables.get(table).cloned())
            .ok_or_else(|| Error::Internal(format!("nft -j list table inet {table} failed: No such file or directory")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_captures_stdout_and_feeds_stdin() {
        let out = run(Command::new("cat").arg("-"), Run::new("install coreutils").stdin(b"hello\n")).await.unwrap();
        assert_eq!(out.stdout, "hello\n");
        let out = run(Command::new("sh").args(["-c", "echo out; echo err >&2"]), Run::new("-")).await.unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("out\n", "err"));
    }

    #[tokio::test]
    async fn a_failure_says_what_ran_how_it_exited_and_its_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]), Run::new("-")).await.unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        assert_eq!(e.to_string(), "sh -c echo broken >&2; exit 3 failed (exit status: 3): broken");
        let e = run(&mut Command::new("false"), Run::new("-").failed_as(Error::Unavailable)).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert!(e.to_string().ends_with("false failed (exit status: 1): nothing on stderr"), "{e}");
    }

    #[tokio::test]
    async fn a_tool_that_cannot_start_is_unavailable_with_what_to_do() {
        let e = run(Command::new("spinup-no-such-tool").arg("-x"), Run::new("install it (scripts/install-deps.sh)"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        let m = e.to_string();
        assert!(m.starts_with("unavailable: cannot run spinup-no-such-tool -x: "), "{m}");
        assert!(m.ends_with("; install it (scripts/install-deps.sh)"), "{m}");
    }

    #[tokio::test]
    async fn large_input_and_output_do_not_deadlock() {
        let input = "x".repeat(1 << 20);
        let out = run(&mut Command::new("cat"), Run::new("-").stdin(input.as_bytes())).await.unwrap();
        assert_eq!(out.stdout.len(), input.len());
    }

    #[test]
    fn summaries_are_shortened() {
        let mut c = Command::new("tool");
        c.args(std::iter::repeat_n("argument", 100));
        let s = summary(&c);
        assert!(s.starts_with("tool argument argument") && s.ends_with('…'), "{s}");
        assert_eq!(s.chars().count(), SUMMARY_MAX + 1);
    }

    #[test]
    fn which_searches_path_or_takes_a_path() {
        assert!(which("sh").is_some_and(|p| p.is_absolute() && p.ends_with("sh")));
        assert_eq!(which("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(which("spinup-no-such-tool"), None);
        assert_eq!(which("/nonexistent/sh"), None);
    }

    #[test]
    fn ip_addresses_are_parsed() {
        let v: serde_json::Value = serde_json::from_str(
            r#"[{"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
                {"ifname": "eth0", "addr_info": [{"local": "192.168.1.20", "prefixlen": 24}, {"local": "bad"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            parse_addresses(&v),
            vec![
                HostAddr { link: "lo".into(), addr: Ipv4Addr::new(127, 0, 0, 1), prefix: 8 },
                HostAddr { link: "eth0".into(), addr: Ipv4Addr::new(192, 168, 1, 20), prefix: 24 },
            ]
        );
    }

    #[tokio::test]
    async fn the_fake_records_calls_and_keeps_links_and_namespaces() {
        let h = RecordingHost::new();
        h.ip_batch(None, "netns add spinup-a\nlink add v1 type veth peer name eth0 netns spinup-a\n").await.unwrap();
        assert!(h.netns_exists("spinup-a").await && h.link_exists("v1").await);
        h.fail("<<< delete", "Error: No such file or directory");
        assert!(h.nft("delete chain inet t sb_1\n").await.is_err());
        h.nft("add table inet t").await.unwrap();
        h.link_del("v1").await.unwrap();
        assert!(h.link_del("v1").await.is_err());
        assert!(h.nft_list_table("t").await.is_err());
        h.set_table_json("t", "{}");
        assert_eq!(h.nft_list_table("t").await.unwrap(), b"{}");
        assert_eq!(
            h.take_calls(),
            [
                "ip -batch - <<< netns add spinup-a; link add v1 type veth peer name eth0 netns spinup-a",
                "test -e /run/netns/spinup-a",
                "test -e /sys/class/net/v1",
                "nft -f - <<< delete chain inet t sb_1",
                "nft -f - <<< add table inet t",
                "ip link del v1",
                "ip link del v1",
                "nft -j list table inet t",
                "nft -j list table inet t",
            ]
        );
        assert!(h.calls().is_empty());
    }
}

/// overlayfs's `lowerdir=` value for `layers` (lowest first): top first,
/// and each layer once, where it is topmost. A layer can repeat (a fork of
/// an unchanged fork adds the same empty diff again) and overlayfs refuses
/// a repeated lower dir as overlapping (ELOOP); the lower copy of a layer
/// that is also above it hides nothing the upper one does not, so dropping
/// it changes no file.
pub fn overlay_lowerdir(layers: &[PathBuf]) -> String {
    let top_first: Vec<String> =
        distinct_layers(layers).iter().rev().map(|l| l.to_string_lossy().into_owned()).collect();
    top_first.join(":")
}

/// `layers` (lowest first) with each layer once, where it is topmost; see
/// [`overlay_lowerdir`]. A read-only overlay needs two lower dirs, so a
/// caller that may be left with one uses it directly.
pub fn distinct_layers(layers: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut top_first: Vec<PathBuf> = layers.iter().rev().filter(|l| seen.insert(*l)).cloned().collect();
    top_first.reverse();
    top_first
}

#[cfg(test)]
mod overlay_tests {
    use super::*;

    #[test]
    fn lowerdir_is_top_first_and_keeps_each_layer_where_it_is_topmost() {
        let l = |s: &str| PathBuf::from(s);
        assert_eq!(overlay_lowerdir(&[l("/a"), l("/b"), l("/c")]), "/c:/b:/a");
        assert_eq!(overlay_lowerdir(&[l("/a"), l("/e"), l("/b"), l("/e"), l("/e")]), "/e:/b:/a");
        assert_eq!(overlay_lowerdir(&[l("/a")]), "/a");
        assert_eq!(distinct_layers(&[l("/e"), l("/e")]), vec![l("/e")]);
        assert_eq!(distinct_layers(&[l("/a"), l("/e"), l("/b"), l("/e")]), vec![l("/a"), l("/b"), l("/e")]);
    }
}
