//! Health and resource usage as seen from inside the sandbox.

use std::time::Instant;

use spinup_protocol::AgentInfo;

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Memory charged to this sandbox's cgroup (v2 first, then v1); where no
/// cgroupfs is visible (a user-space kernel accounts for itself), the
/// kernel's own used memory.
fn cgroup_memory() -> Option<u64> {
    read_u64("/sys/fs/cgroup/memory.current")
        .or_else(|| read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
        .or_else(meminfo_used)
}

fn meminfo_used() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// CPU time of this sandbox's cgroup in microseconds.
fn cgroup_cpu_us() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/cpu.stat") {
        for line in s.lines() {
            if let Some(v) = line.strip_prefix("usage_usec ") {
                return v.trim().parse().ok();
            }
        }
    }
    read_u64("/sys/fs/cgroup/cpuacct/cpuacct.usage")
        .or_else(|| read_u64("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"))
        .map(|ns| ns / 1000)
}

fn self_rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn load_avg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// Used and total bytes of the root filesystem, counted as `df` does:
/// total = blocks × fragment size, used = total − free blocks.
fn disk_usage() -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs("/").ok()?;
    let frag = st.fragment_size() as u64;
    let total = (st.blocks() as u64).saturating_mul(frag);
    let free = (st.blocks_free() as u64).saturating_mul(frag);
    Some((total.saturating_sub(free), total))
}

pub fn collect(started: Instant, processes: usize) -> AgentInfo {
    let disk = disk_usage();
    AgentInfo {
        protocol: spinup_protocol::PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        uptime_ms: started.elapsed().as_millis() as u64,
        processes,
        agent_rss_bytes: self_rss(),
        memory_bytes: cgroup_memory(),
        cpu_usage_us: cgroup_cpu_us(),
        load_avg: load_avg(),
        disk_used_bytes: disk.map(|d| d.0),
        disk_total_bytes: disk.map(|d| d.1),
    }
}
