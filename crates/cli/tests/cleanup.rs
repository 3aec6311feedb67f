//! Nothing left behind: a client that hangs up in the middle of a create or
//! a remove leaves no half-made sandbox, and what a killed daemon (or a
//! store that lost track) left on the host is removed by the next start or
//! by `spinup gc`, without touching anything that is not its own.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests report to the runner, which captures their output"
)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, leftovers, Daemon};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Send a whole request, wait `after`, then close the connection without
/// reading the answer (the client went away).
async fn hang_up_after(d: &Daemon, method: &str, path: &str, body: &str, after: Duration) {
    let mut s = tokio::net::UnixStream::connect(&d.sock).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(s);
}

async fn sandboxes(d: &Daemon) -> Vec<Value> {
    let (st, v) = d.req("GET", "/v1/sandboxes", None).await;
    assert_eq!(st, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// Points in a create or remove, from "just arrived" to "nearly done",
/// scaled to how long the driver takes.
fn hang_up_points() -> Vec<Duration> {
    let ms: &[u64] = match common::driver().as_str() {
        "microvm" => &[0, 300, 1500, 4000],
        "gvisor" => &[0, 60, 250, 700],
        _ => &[0, 15, 60, 200],
    };
    ms.iter().map(|m| Duration::from_millis(*m)).collect()
}

async fn a_client_that_hangs_up_mid_create_or_remove_leaves_nothing_half_made() {
    let d = Daemon::start(&format!("hangup-{}", common::driver()));
    // The environment is built once, before the clock matters.
    let warm = d.create(json!({})).await;
    d.rm(&warm).await;
    let body = json!({"env": "busybox", "driver": common::driver(), "network": {"mode": "open"}}).to_string();
    // A request whose connection is gone before the daemon even starts on
    // it may never run (nothing is half-done then either); once started it
    // must finish. Long enough for either to show:
    let settle = Duration::from_secs(if common::driver() == "microvm" { 20 } else { 8 });
    let (mut created, mut removed) = (0, 0);
    for after in hang_up_points() {
        hang_up_after(&d, "POST", "/v1/sandboxes", &body, after).await;
        // Nothing stays `creating`: the create runs to completion without
        // its client, and what it made is a whole, working sandbox.
        let t0 = Instant::now();
        let id = loop {
            let all = sandboxes(&d).await;
            assert!(all.len() <= 1, "one create made {all:?}");
            let creating = all.iter().any(|s| s["state"] == "creating");
            assert!(!creating || t0.elapsed() < Duration::from_secs(120), "stuck creating: {all:?}");
            if let Some(s) = all.iter().find(|s| s["state"] == "running") {
                break Some(s["id"].as_str().unwrap().to_string());
            }
            assert!(creating || all.is_empty(), "the create abandoned after {after:?} left {all:?}");
            if all.is_empty() && t0.elapsed() > settle {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(id) = id else { continue };
        created += 1;
        assert_eq!(d.ok(&id, "echo whole").await, "whole\n");
        // A remove abandoned at the same point removes all of it (or, not
        // started, leaves it whole).
        hang_up_after(&d, "DELETE", &format!("/v1/sandboxes/{id}?force=true"), "", after).await;
        let t0 = Instant::now();
        while d.req("GET", &format!("/v1/sandboxes/{id}"), None).await.0 != 404 && t0.elapsed() < settle {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (st, v) = d.req("GET", &format!("/v1/sandboxes/{id}"), None).await;
        if st == 404 {
            removed += 1;
        } else {
            assert_eq!(v["state"], "running", "the remove abandoned after {after:?} left {v}");
            assert_eq!(d.ok(&id, "echo whole").await, "whole\n", "half removed after {after:?}");
            d.rm(&id).await;
        }
        assert_eq!(leftovers(&d), Vec::<String>::new(), "after hanging up at {after:?}");
    }
    // Most points were really in the middle of an operation.
    assert!(created >= 2 && removed >= 2, "only {created} creates and {removed} removes ran");
}

/// Forget sandbox `id` as a store restored from an old backup would: the
/// row goes, its sandbox stays (the daemon must be stopped).
fn forget(d: &Daemon, id: &str) {
    let store = spinup_daemon::store::Store::open(&d.data().join("state.db")).unwrap();
    let state = store.get_sandbox(id).unwrap().expect("the sandbox's row").0.state;
    store.delete_sandbox(id, state, Some("forgotten by the test")).unwrap();
}

/// What of sandbox `id` is still on the host (the leak checker's list,
/// narrowed to it).
fn traces_of(d: &Daemon, id: &str) -> Vec<String> {
    let mut out: Vec<String> = leftovers(d).into_iter().filter(|l| l.contains(id)).collect();
    if Path::new("/run/netns").join(format!("spinup-{id}")).exists() {
        out.push(format!("netns spinup-{id}"));
    }
    let data = d.data().to_string_lossy().to_string();
    for drv in ["container", "gvisor", "microvm"] {
        if d.data().join(drv).join("sandboxes").join(id).exists() {
            out.push(format!("{drv} sandbox dir"));
        }
    }
    for l in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        let mp = l.split_whitespace().nth(4).unwrap_or("");
        if mp.starts_with(&data) && mp.contains(id) {
            out.push(format!("mount {mp}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn a_restart_removes_what_a_killed_daemon_left_of_a_forgotten_sandbox() {
    let d = Daemon::start(&format!("gcrestart-{}", common::driver()));
    let survivor = d.create(json!({"network": {"mode": "open"}})).await;
    d.ok(&survivor, "echo precious > /root/data").await;
    let lost = d.create(json!({"network": {"mode": "open"}})).await;
    d.ok(&lost, "sleep 1000 > /dev/null 2>&1 &").await;
    assert!(!traces_of(&d, &lost).is_empty(), "a running sandbox leaves traces to look for");
    d.kill9();
    forget(&d, &lost);
    d.restart();
    // The start found every piece of the forgotten sandbox and removed it:
    // its processes, mounts, cgroups, runtime state, namespace, veth and
    // chain; the survivor is untouched.
    assert_eq!(traces_of(&d, &lost), Vec::<String>::new());
    assert!(d.log().contains(&format!("gc: removed {} sandbox {lost}", common::driver())), "{}", d.log());
    assert!(d.log().contains(&format!("gc: removed network namespace spinup-{lost}")), "{}", d.log());
    assert_eq!(d.ok(&survivor, "cat /root/data").await, "precious\n");
    // A second pass has nothing left to do.
    let out = d.cli(&["gc"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nothing to remove\n");
    d.rm(&survivor).await;
    assert_eq!(leftovers(&d), Vec::<String>::new());
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Every kind of leftover, made by hand the way a killed daemon leaves
/// them, with no row in the store: `spinup gc` on the live daemon removes
/// each one and nothing of a sandbox it knows or of another daemon.
#[tokio::test]
async fn spinup_gc_removes_every_kind_of_leftover_and_nothing_else() {
    common::set_driver("container");
    let d = Daemon::start("gchand");
    let other = Daemon::start("gcother");
    let keep = d.create(json!({"network": {"mode": "open"}})).await;
    let theirs = other.create(json!({"network": {"mode": "open"}})).await;
    let data = d.data();
    let pool = std::fs::read_to_string(data.join("net-pool")).unwrap().trim().to_string();
    let ids = ["a0a0a0a0a0a1", "a0a0a0a0a0a2", "a0a0a0a0a0a3", "a0a0a0a0a0a4"];

    // 1. A network: namespace, recorded slot, veth and nftables chain.
    let (net_id, idx) = (ids[0], 9000u32);
    let veth = format!("sp{pool}v{idx}");
    let ns = format!("spinup-{net_id}");
    let p: u8 = pool.parse().unwrap();
    let base = (10u32 << 24) | ((p as u32) << 16);
    let gw = std::net::Ipv4Addr::from(base + idx * 4 + 1);
    let slot = json!({"index": idx, "host_if": veth, "gateway": gw.to_string(),
        "address": std::net::Ipv4Addr::from(base + idx * 4 + 2).to_string(), "prefix": 30});
    std::fs::create_dir_all(data.join("net").join(net_id)).unwrap();
    std::fs::write(data.join("net").join(net_id).join("slot.json"), slot.to_string()).unwrap();
    assert!(sh(&format!("ip netns add {ns} && ip link add {veth} type veth peer name eth0 netns {ns}"))
        .status
        .success());
    // ...and one with no record, found by the pool's veth it holds.
    let (bare_ns, bare_veth) = ("spinup-a0a0a0a0a0a5".to_string(), format!("sp{pool}v9002"));
    assert!(sh(&format!("ip netns add {bare_ns} && ip link add {bare_veth} type veth peer name eth0 netns {bare_ns}"))
        .status
        .success());
    let t = format!("spinup_{pool}");
    assert!(sh(&format!("nft add chain inet {t} sb_{idx} && nft add chain inet {t} rd_9001")).status.success());
    // 2. A sandbox dir with its rootfs still mounted.
    let rootfs = data.join("container/sandboxes").join(ids[1]).join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    assert!(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&rootfs).status().unwrap().success());
    // 3. A cgroup under the daemon's parent, in every hierarchy.
    let parent = common::cgroup_parent(&d.dir);
    let mut cgroups: Vec<PathBuf> = vec![];
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = e.path().join(&parent);
        if p.is_dir() && std::fs::create_dir(p.join(ids[2])).is_ok() {
            cgroups.push(p.join(ids[2]));
        }
    }
    assert!(!cgroups.is_empty(), "no cgroup hierarchy to make a leftover in");
    // 4. A VMM naming a sandbox dir (a stand-in: sleep under QEMU's name),
    // and a user's process naming one too, which is not ours to kill.
    let bin = d.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/sleep", bin.join("qemu-system-x86_64")).unwrap();
    let vmm = data.join("microvm/sandboxes").join(ids[3]).join("run/qemu");
    let mut proc_ = Command::new("bash")
        .args(["-c", "exec -a \"$0\" \"$1\" 1000"])
        .arg(&vmm)
        .arg(bin.join("qemu-system-x86_64"))
        .spawn()
        .unwrap();
    let mut user = Command::new("bash").args(["-c", "exec -a \"$0\" sleep 1000"]).arg(&vmm).spawn().unwrap();
    let pid = proc_.id();
    eventually("the stand-in VMM to start", 10, || async {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(ids[3]))
    })
    .await;

    let out = d.cli(&["gc"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        format!("removed network namespace {ns}"),
        format!("removed link {veth}"),
        "removed nftables chain rd_9001".to_string(),
        format!("removed link {bare_veth}"),
        format!("removed network namespace {bare_ns}"),
        format!("removed container sandbox {}", ids[1]),
        format!("removed container sandbox {}", ids[2]),
        format!("removed process {pid}"),
    ] {
        assert!(said.contains(&want), "`spinup gc` did not say {want:?}:\n{said}");
    }
    assert!(!netns_exists(&ns) && !netns_exists(&bare_ns));
    assert!(!Path::new("/sys/class/net").join(&bare_veth).exists());
    assert!(!Path::new("/sys/class/net").join(&veth).exists());
    let chains =
        String::from_utf8_lossy(&Command::new("nft").args(["list", "table", "inet", &t]).output().unwrap().stdout)
            .to_string();
    assert!(!chains.contains(&format!("chain sb_{idx} ")) && !chains.contains("chain rd_9001 "), "{chains}");
    assert!(!data.join("container/sandboxes").join(ids[1]).exists());
    assert!(cgroups.iter().all(|c| !c.exists()), "{cgroups:?}");
    let _ = proc_.wait();
    assert_eq!(user.try_wait().unwrap(), None, "gc killed a process that is not a driver's");
    let _ = user.kill();
    let _ = user.wait();
    assert!(!data.join("net").join(net_id).exists());
    // What it knows, and another daemon's sandbox, are untouched.
    assert_eq!(d.ok(&keep, "echo alive").await, "alive\n");
    assert_eq!(other.ok(&theirs, "echo alive").await, "alive\n");
    assert!(netns_exists(&format!("spinup-{keep}")) && netns_exists(&format!("spinup-{theirs}")));
    let out = d.cli(&["gc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nothing to remove\n");
    d.rm(&keep).await;
    other.rm(&theirs).await;
    assert_eq!(leftovers(&d), Vec::<String>::new());
    assert_eq!(leftovers(&other), Vec::<String>::new());
}

suite!(
    a_client_that_hangs_up_mid_create_or_remove_leaves_nothing_half_made,
    a_restart_removes_what_a_killed_daemon_left_of_a_forgotten_sandbox,
);
