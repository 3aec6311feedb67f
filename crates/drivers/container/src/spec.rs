//! The OCI runtime spec for one sandbox: Docker's default hardening
//! (capabilities, masked and read-only paths, seccomp), plus
//! no_new_privileges, cgroup limits and the agent as PID 1.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::json;
use spinup_model::{Error, Result, SandboxSpec};

pub use spinup_protocol::guest_policy::{CAPABILITIES, MASKED_PATHS, READONLY_PATHS};

/// Syscalls Docker's default profile refuses to a container without extra
/// capabilities: kernel modules, keyrings, mounts and namespaces, clocks,
/// tracing other address spaces, BPF, perf, userfaultfd, reboot, swap.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// clone() flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET): refused, as Docker does, which also
/// closes the user-namespace route to cgroup release_agent (CVE-2022-0492).
const CLONE_NS_FLAGS: [u64; 7] =
    [0x0002_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000];

fn seccomp() -> serde_json::Value {
    let mut syscalls = vec![json!({
        "names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1
    })];
    for flag in CLONE_NS_FLAGS {
        syscalls.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]
        }));
    }
    // clone3 passes flags in memory where seccomp cannot see them; ENOSYS
    // makes libc fall back to clone(), which is filtered above.
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    })
}

/// Render `config.json` for a sandbox whose bundle lives in `dir`.
pub fn build(spec: &SandboxSpec, dir: &Path, cgroup_parent: &str) -> Result<String> {
    let r = spec.resources;
    let mib = 1024 * 1024;
    let period: u64 = 100_000;
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/run/spinup/spinup-agent", "--listen-fd", spinup_protocol::LISTEN_FD.to_string()],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": CAPABILITIES, "effective": CAPABILITIES, "permitted": CAPABILITIES,
                "inheritable": [], "ambient": []
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 500
        },
        "root": {"path": dir.join("rootfs"), "readonly": false},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/run/spinup", "type": "bind", "source": dir.join("run"), "options": ["rbind", "ro", "nosuid", "nodev"]},
            // Secrets live here, in memory: never in the writable layer.
            {"destination": "/run/secrets", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "mode=0750", "size=1m"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"},
                {"type": "network"}, {"type": "cgroup"}
            ],
            "cgroupsPath": format!("/{}/{}", cgroup_parent.trim_matches('/'), spec.id),
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": r.memory_mib * mib, "swap": r.memory_mib * mib},
                "pids": {"limit": r.pids},
                "cpu": {"quota": (r.vcpus * period as f64).round() as i64, "period": period}
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp(),
            "rootfsPropagation": "private"
        }
    });
    let mut config = config;
    if let Some(net) = &spec.net {
        // The daemon's namespace (veth already addressed) and resolver.
        for ns in config["linux"]["namespaces"].as_array_mut().into_iter().flatten() {
            if ns["type"] == "network" {
                ns["path"] = json!(net.netns);
            }
        }
        config["mounts"].as_array_mut().expect("mounts").push(json!(
            {"destination": "/etc/resolv.conf", "type": "bind", "source": dir.join("resolv.conf"), "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
        ));
    }
    // Round-trip through oci-spec: a field of the wrong shape fails here,
    // with a message, rather than inside the runtime.
    let typed: Spec = serde_json::from_value(config).map_err(|e| Error::internal("building the OCI spec", e))?;
    serde_json::to_string_pretty(&typed).map_err(|e| Error::internal("serializing the OCI spec", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinup_model::Resources;

    #[test]
    fn spec_carries_limits_and_hardening() {
        let s = SandboxSpec {
            net: None,
            id: "0123456789ab".into(),
            hostname: "0123456789ab".into(),
            resources: Resources { vcpus: 0.5, memory_mib: 64, disk_mib: 100, pids: 32 },
            layers: vec![],
        };
        let out = build(&s, Path::new("/var/lib/spinup/container/sandboxes/0123456789ab"), "spinup").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 32);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["hostname"], "0123456789ab");
        assert_eq!(v["linux"]["cgroupsPath"], "/spinup/0123456789ab");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let caps: Vec<String> = serde_json::from_value(v["process"]["capabilities"]["bounding"].clone()).unwrap();
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_NET_ADMIN"));
        let ns: Vec<String> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect();
        for want in ["pid", "mount", "uts", "ipc", "network", "cgroup"] {
            assert!(ns.iter().any(|n| n == want), "{want} namespace");
        }
        let denied = v["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap();
        assert!(denied.iter().any(|n| n == "unshare") && denied.iter().any(|n| n == "keyctl"));
    }
}
