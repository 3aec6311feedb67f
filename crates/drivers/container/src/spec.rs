//! The OCI runtime spec for one sandbox: Docker's default hardening
//! (capabilities, masked and read-only paths, seccomp), plus
//! no_new_privileges, cgroup limits and the agent as PID 1.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::json;
use spinup_model::{Error, Result, SandboxSpec};

pub use spinup_protocol::guest_policy::{CAPABILITIES, MASKED_PATHS, READONLY_PATHS};

/// Syscalls a sandbox may make, with the semantics of Docker's default
/// profile: the kernel's x86_64 and i386 tables (through Linux 6.15), less
/// [`DENIED_SYSCALLS`], less the ones no kernel implements any more, less
/// `clone`, `clone3` and `personality`, which are allowed on their
/// arguments only (see [`seccomp`]). Anything else gets EPERM; a syscall
/// number past the highest the runtime's libseccomp knows gets ENOSYS
/// (runc's stub), so libc falls back from calls newer than the filter.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "chroot",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "migrate_pages",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "nice",
    "oldfstat",
    "oldlstat",
    "oldolduname",
    "oldstat",
    "olduname",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_madvise",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readdir",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setdomainname",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "sethostname",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "sgetmask",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaction",
    "sigaltstack",
    "signal",
    "signalfd",
    "signalfd4",
    "sigpending",
    "sigprocmask",
    "sigreturn",
    "sigsuspend",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "ssetmask",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls left out of [`ALLOWED_SYSCALLS`] on purpose, as Docker's
/// default profile leaves them out for a container without extra
/// capabilities: kernel modules, keyrings, mounts and namespaces, clocks,
/// tracing other address spaces, BPF, perf, io_uring (a large kernel
/// surface with a history of escapes, refused by Docker since 25.0),
/// userfaultfd, NUMA policy, reboot, swap, the LSM interfaces.
pub const DENIED_SYSCALLS: &[&str] = &[
    "_sysctl",
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_settime",
    "clock_settime64",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "listmount",
    "lookup_dcookie",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "mbind",
    "memfd_secret",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "open_tree_attr",
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
    "set_mempolicy_home_node",
    "setns",
    "settimeofday",
    "statmount",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// clone() flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET): clone is allowed only without them,
/// as Docker does, which also closes the user-namespace route to cgroup
/// release_agent (CVE-2022-0492).
const CLONE_NS_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// personality() values allowed (as Docker allows them): PER_LINUX, its
/// 32-bit variant, either with UNAME26 (0x0020000), and the query
/// 0xffffffff. The rest (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ...) weaken
/// the process's own hardening.
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn seccomp() -> serde_json::Value {
    let mut syscalls = vec![
        json!({"names": ALLOWED_SYSCALLS, "action": "SCMP_ACT_ALLOW"}),
        json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
        }),
        // clone3 passes its flags in memory where seccomp cannot see them;
        // ENOSYS makes libc fall back to clone(), which is checked above.
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    for p in PERSONALITIES {
        syscalls.push(json!({
            "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
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
        let seccomp = &v["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed = seccomp["syscalls"][0]["names"].as_array().unwrap();
        assert_eq!(allowed.len(), ALLOWED_SYSCALLS.len());
        assert!(allowed.iter().any(|n| n == "openat") && !allowed.iter().any(|n| n == "unshare"));
    }

    #[test]
    fn the_allow_list_is_sorted_and_leaves_out_what_is_refused() {
        for list in [ALLOWED_SYSCALLS, DENIED_SYSCALLS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        }
        for name in DENIED_SYSCALLS.iter().chain(&["clone", "clone3", "personality"]) {
            assert!(!ALLOWED_SYSCALLS.contains(name), "{name} is refused but listed as allowed");
        }
        // What every libc and language runtime needs at start.
        for name in ["execve", "mmap", "openat", "rt_sigaction", "futex", "rseq", "prlimit64", "socket", "ptrace"] {
            assert!(ALLOWED_SYSCALLS.contains(&name), "{name}");
        }
    }
}
