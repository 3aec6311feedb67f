//! The agent as a microVM's init (`/init --vm` in the initramfs): load the
//! modules the guest needs, mount the root disk, move into it and stay PID 1.
//!
//! Settings come from the kernel command line (`spinup.hostname=...`,
//! `spinup.pids=...`, `spinup.cpu=...`, `spinup.mem=...`); the host writes nothing into the
//! guest any other way.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use spinup_protocol::VM_AGENT_PORT as PORT_NAME;

fn log(msg: &str) {
    eprintln!("spinup-agent: {msg}");
}

fn fail(msg: &str) -> ! {
    // The host reports the console's last lines, this one among them.
    log(&format!("vm init failed: {msg}"));
    power_off()
}

/// End the guest: a reboot, which QEMU (-no-reboot, reboot=t) turns into
/// its own exit; microvm without ACPI has no power-off device.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    #[allow(clippy::exit, reason = "PID 1 of a VM whose reboot failed has nothing left to run")]
    std::process::exit(1)
}

fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = std::fs::create_dir_all(target);
    if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
        fail(&format!("mount {fstype} on {target}: {e}"));
    }
}

/// Load each module listed (in dependency order) in /modules/order.
fn load_modules() {
    let order = std::fs::read_to_string("/modules/order").unwrap_or_default();
    for rel in order.lines().filter(|l| !l.is_empty()) {
        let path = format!("/modules/{rel}");
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => fail(&format!("open {path}: {e}")),
        };
        let params = CString::default();
        // SAFETY: finit_module reads the open module file and the empty
        // parameter string; both outlive the call.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                fail(&format!("loading {rel}: {e}"));
            }
        }
    }
}

fn wait_for(path: &str, bound: Duration) {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > bound {
            fail(&format!("{path} did not appear within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The device node of the virtio-serial port named `name`.
fn find_port(name: &str) -> Option<String> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        if std::fs::read_to_string(e.path().join("name")).ok()?.trim() == name {
            return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    None
}

/// Bring the loopback interface up (the kernel starts with it down).
fn loopback_up() {
    // SAFETY: plain socket + ioctl on a zeroed ifreq naming "lo".
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(s);
    }
}

/// `spinup.net=ADDR/PREFIX,GATEWAY,DNS`: address `eth0` (the virtio-net
/// NIC on the host's tap), route through the gateway, and point
/// /etc/resolv.conf (a bind mount from /run, so never the disk) at the
/// sandbox's resolver.
fn net_up(cmdline: &str) {
    let Some(v) = cmdline_value(cmdline, "spinup.net") else { return };
    wait_for("/sys/class/net/eth0", Duration::from_secs(5));
    configure_net(v, true);
}

/// Address eth0 per `ADDR/PREFIX,GATEWAY,DNS`; `first`: also bind the
/// resolv.conf (later calls, after a restore from saved memory, replace the
/// address, the route and the file's content).
fn configure_net(v: &str, first: bool) {
    let parts: Vec<&str> = v.split(',').collect();
    let parsed = (|| {
        let (a, p) = parts.first()?.split_once('/')?;
        Some((
            a.parse::<std::net::Ipv4Addr>().ok()?,
            p.parse::<u8>().ok().filter(|p| *p <= 32)?,
            parts.get(1)?.parse::<std::net::Ipv4Addr>().ok()?,
            parts.get(2)?.parse::<std::net::Ipv4Addr>().ok()?,
        ))
    })();
    let Some((addr, prefix, gw, dns)) = parsed else {
        log(&format!("ignoring a malformed spinup.net={v}"));
        return;
    };
    fn sin(ip: std::net::Ipv4Addr) -> libc::sockaddr {
        // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes).
        unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(ip).to_be();
            std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sa)
        }
    }
    let mask = std::net::Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) });
    // SAFETY: ioctls on a datagram socket with zeroed, filled-in structs.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"eth0\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_addr = sin(addr);
        if libc::ioctl(s, libc::SIOCSIFADDR, &ifr) != 0 {
            log(&format!("eth0 address: {}", std::io::Error::last_os_error()));
        }
        ifr.ifr_ifru.ifru_netmask = sin(mask);
        libc::ioctl(s, libc::SIOCSIFNETMASK, &ifr);
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        let mut rt: libc::rtentry = std::mem::zeroed();
        rt.rt_dst = sin(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sin(std::net::Ipv4Addr::UNSPECIFIED);
        if !first {
            // The old default route (its gateway may be unreachable now).
            libc::ioctl(s, libc::SIOCDELRT, &rt);
        }
        rt.rt_gateway = sin(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        if libc::ioctl(s, libc::SIOCADDRT, &rt) != 0 {
            log(&format!("default route: {}", std::io::Error::last_os_error()));
        }
        libc::close(s);
    }
    let conf = "/run/spinup-resolv.conf";
    let _ = std::fs::write(
        conf,
        format!("# written by spinup: the sandbox's own resolver\nnameserver {dns}\noptions timeout:2 attempts:2\n"),
    );
    if !first {
        return;
    }
    if std::fs::symlink_metadata("/etc/resolv.conf").map(|m| !m.is_file()).unwrap_or(true) {
        let _ = std::fs::remove_file("/etc/resolv.conf");
        let _ = std::fs::write("/etc/resolv.conf", "");
    }
    let _ = mount(Some(conf), "/etc/resolv.conf", None::<&str>, MsFlags::MS_BIND, None::<&str>);
}

/// Grow the root ext4 filesystem online to the size of its disk (the disk
/// limit; the environment's image is only as big as its content).
fn grow_root() {
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let Ok(sectors) = std::fs::read_to_string("/sys/block/vda/size") else { return };
    let Ok(sectors) = sectors.trim().parse::<u64>() else { return };
    let Ok(st) = nix::sys::statvfs::statvfs("/") else { return };
    let bsize = st.fragment_size();
    let want = sectors * 512 / bsize;
    if want <= st.blocks() {
        return;
    }
    let Ok(f) = std::fs::File::open("/") else { return };
    // SAFETY: EXT4_IOC_RESIZE_FS takes a pointer to the new block count.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), EXT4_IOC_RESIZE_FS, &want) };
    if r != 0 {
        log(&format!("growing / to {want} blocks: {}", std::io::Error::last_os_error()));
    }
}

/// Put the agent (and so everything it starts) in a cgroup with the
/// sandbox's pids and CPU limits, in a cgroup namespace, so the guest sees
/// its limits at /sys/fs/cgroup as it does in a container.
fn limits(cmdline: &str) {
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None);
    // A limit that cannot be set is a failed boot, not an unlimited sandbox.
    let set = |file: &str, value: &str| {
        if let Err(e) = std::fs::write(file, value) {
            fail(&format!("{file} = {value}: {e}"));
        }
    };
    set("/sys/fs/cgroup/cgroup.subtree_control", "+pids +memory +cpu");
    let dir = "/sys/fs/cgroup/sandbox";
    if let Err(e) = std::fs::create_dir_all(dir) {
        fail(&format!("{dir}: {e}"));
    }
    if let Some(p) = cmdline_value(cmdline, "spinup.pids") {
        set(&format!("{dir}/pids.max"), p);
    }
    if let Some(m) = cmdline_value(cmdline, "spinup.mem") {
        set(&format!("{dir}/memory.max"), m);
        let _ = std::fs::write(format!("{dir}/memory.swap.max"), "0");
    }
    if let Some(q) = cmdline_value(cmdline, "spinup.cpu") {
        set(&format!("{dir}/cpu.max"), &format!("{q} 100000"));
    }
    set(&format!("{dir}/cgroup.procs"), "0");
    let _ = nix::mount::umount("/sys/fs/cgroup");
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).is_ok() {
        mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None);
    }
}

/// Least privilege, as the OCI drivers give a container: hidden and
/// read-only kernel interfaces, no new user namespaces, a read-only
/// cgroupfs, Docker's capability set and no_new_privs for the agent and so
/// for everything it starts. (No seccomp filter: the kernel is the guest's
/// own; the VM is the boundary.)
fn lockdown() {
    use spinup_protocol::guest_policy::{CAPABILITY_NUMBERS, MASKED_PATHS, READONLY_PATHS};
    for (knob, value) in [
        ("/proc/sys/user/max_user_namespaces", "0"),
        // No module loading and no modprobe helper from here on.
        ("/proc/sys/kernel/modprobe", "\n"),
        ("/proc/sys/kernel/modules_disabled", "1"),
    ] {
        match std::fs::write(knob, value) {
            Ok(()) => {}
            // A kernel built without modules (a user's own) has no knob.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => fail(&format!("{knob}: {e}")),
        }
    }
    // The serial console is a file on the host: no guest process may write
    // to it (and without CAP_MKNOD none can make the node again).
    for node in ["/dev/console", "/dev/ttyS0", "/dev/ttyS1", "/dev/ttyS2", "/dev/ttyS3"] {
        let _ = std::fs::remove_file(node);
    }
    for p in MASKED_PATHS {
        let Ok(m) = std::fs::metadata(p) else { continue };
        let r = if m.is_dir() {
            mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
        } else {
            mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        };
        if let Err(e) = r {
            log(&format!("masking {p}: {e}"));
        }
    }
    for p in READONLY_PATHS.iter().copied().chain(["/sys", "/sys/fs/cgroup"]) {
        if !Path::new(p).exists() {
            continue;
        }
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if let Err(e) = mount(Some(p), p, None::<&str>, flags, None::<&str>)
            .and_then(|_| mount(None::<&str>, p, None::<&str>, ro, None::<&str>))
        {
            log(&format!("making {p} read-only: {e}"));
        }
    }
    // Capabilities: drop everything outside Docker's set from the bounding
    // set, then keep only that set.
    // Docker's set less CAP_MKNOD: a guest's /dev is the kernel's devtmpfs.
    let keep: u64 = CAPABILITY_NUMBERS.iter().filter(|&&c| c != 27).fold(0, |m, c| m | (1u64 << c));
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                fail(&format!("dropping capability {cap}: {}", std::io::Error::last_os_error()));
            }
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header { version: 0x2008_0522, pid: 0 };
    let half =
        |shift: u32| Data { effective: (keep >> shift) as u32, permitted: (keep >> shift) as u32, inheritable: 0 };
    let data = [half(0), half(32)];
    // SAFETY: capset reads the header and two data structs (version 3).
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) };
    if r != 0 {
        fail(&format!("dropping capabilities: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail("setting no_new_privs");
    }
}

/// The write end of the pipe to the real init (see [`own_pid_namespace`]).
static IDENTITY: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Messages on the identity pipe: `[kind u8][len u8][payload]`.
const SET_HOSTNAME: u8 = 1;
const RESEED: u8 = 2;
const SET_NET: u8 = 3;

/// A VM continued from saved memory is a new machine: ask the real init,
/// which keeps the privileges the agent dropped, to set its hostname and
/// reseed the kernel's RNG with `entropy` (so two restores of one snapshot
/// never share random numbers). Only under `--vm`.
pub fn set_identity(hostname: &str, entropy: &[u8], net: Option<&str>) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = IDENTITY.get().ok_or_else(|| std::io::Error::other("not a VM guest: no identity channel"))?;
    if hostname.is_empty() || hostname.len() > 64 || entropy.len() > 255 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "hostname 1-64 bytes, entropy ≤ 255 bytes"));
    }
    let mut msg = vec![SET_HOSTNAME, hostname.len() as u8];
    msg.extend_from_slice(hostname.as_bytes());
    msg.extend_from_slice(&[RESEED, entropy.len() as u8]);
    msg.extend_from_slice(entropy);
    if let Some(n) = net.filter(|n| n.len() < 200 && n.bytes().all(|b| b.is_ascii_digit() || b"./,".contains(&b))) {
        msg.extend_from_slice(&[SET_NET, n.len() as u8]);
        msg.extend_from_slice(n.as_bytes());
    }
    w.write_all(&msg)?;
    write_machine_id();
    Ok(())
}

/// The real init's side of the identity pipe: a hostname (checked to be a
/// hostname) and entropy to mix in before forcing a reseed. Nothing else.
/// Returns false once the pipe is closed.
fn serve_identity(r: &mut std::fs::File) -> bool {
    use std::io::Read;
    // The pipe is non-blocking: a message must arrive whole within a second,
    // so a writer that stops mid-message cannot stall the real init.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut read_exact = |buf: &mut [u8]| -> std::io::Result<()> {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let mut head = [0u8; 2];
    if read_exact(&mut head).is_err() {
        return false;
    }
    let mut body = vec![0u8; head[1] as usize];
    if read_exact(&mut body).is_err() {
        return false;
    }
    match head[0] {
        SET_HOSTNAME
            if !body.is_empty() && body.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.') =>
        {
            let _ = nix::unistd::sethostname(std::ffi::OsStr::from_bytes(&body));
        }
        SET_NET if body.iter().all(|b| b.is_ascii_digit() || b"./,".contains(b)) => {
            configure_net(&String::from_utf8_lossy(&body), false);
        }
        RESEED => {
            // Mix the host's bytes in, then make the CRNG reseed now rather
            // than at its next interval.
            let _ = std::fs::OpenOptions::new().write(true).open("/dev/urandom").and_then(|mut f| {
                use std::io::Write;
                f.write_all(&body)?;
                nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
                // SAFETY: RNDRESEEDCRNG takes no argument.
                unsafe { rnd_reseed_crng(f.as_raw_fd()) }.map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        _ => {}
    }
    true
}

/// Serve from a PID namespace of our own, as in a container: the guest's
/// processes see the agent as PID 1 and nothing else (no kernel threads).
/// The real init stays behind to end the VM if the agent ever exits, and to
/// apply a new identity after a restore from saved memory.
fn own_pid_namespace() {
    use nix::sys::wait::{waitpid, WaitStatus};
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        fail(&format!("new pid namespace: {e}"));
    }
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK) {
        Ok(p) => p,
        Err(e) => fail(&format!("identity pipe: {e}")),
    };
    // SAFETY: single-threaded here (the async runtime starts after boot).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            // Blocking writes (messages are far below PIPE_BUF, so atomic).
            let _ = nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
            let _ = IDENTITY.set(std::fs::File::from(w));
            let _ = nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH);
            mnt("proc", "/proc", "proc", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None);
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            // No threads after unshare(CLONE_NEWPID) (clone fails with
            // EINVAL): poll the pipe, and reap between polls.
            let mut r = Some(std::fs::File::from(r));
            loop {
                if let Some(f) = &mut r {
                    let mut fds = [nix::poll::PollFd::new(f.as_fd(), nix::poll::PollFlags::POLLIN)];
                    if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) > 0
                        && !serve_identity(f)
                    {
                        r = None;
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(200));
                }
                loop {
                    match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                            log(&format!("agent exited ({code}); powering off"));
                            power_off();
                        }
                        Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                            log(&format!("agent killed by {sig}; powering off"));
                            power_off();
                        }
                        Err(nix::errno::Errno::ECHILD) => power_off(),
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        _ => {}
                    }
                }
            }
        }
        Err(e) => fail(&format!("fork: {e}")),
    }
}

/// Boot the guest; returns the agent's serial device.
pub fn boot() -> String {
    let t0 = Instant::now();
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None);
    mnt("proc", "/proc", "proc", nodev, None);
    mnt("sysfs", "/sys", "sysfs", nodev, None);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    load_modules();
    if cmdline_value(&cmdline, "spinup.probe").is_some() {
        log(&format!("{} in {} ms", spinup_protocol::VM_PROBE_MARKER, t0.elapsed().as_millis()));
        power_off();
    }
    wait_for("/dev/vda", Duration::from_secs(10));
    mnt("/dev/vda", "/newroot", "ext4", MsFlags::empty(), None);
    // Move into the root disk: the initramfs stays underneath, emptied.
    for f in ["/run", "/modules"] {
        let _ = std::fs::remove_dir_all(f).or_else(|_| std::fs::remove_file(f));
    }
    for m in ["/dev", "/proc", "/sys"] {
        let target = format!("/newroot{m}");
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = mount(Some(m), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
            fail(&format!("moving {m}: {e}"));
        }
    }
    // PID 1 shares its root with the kernel's own threads, which start
    // usermode helpers (/sbin/modprobe, /sbin/request-key) as full root:
    // keep theirs on the emptied initramfs, never on the guest's disk.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS) {
        fail(&format!("unshare CLONE_FS: {e}"));
    }
    if let Err(e) = std::env::set_current_dir("/newroot") {
        fail(&format!("chdir /newroot: {e}"));
    }
    if let Err(e) = mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
        fail(&format!("moving the root: {e}"));
    }
    if let Err(e) = nix::unistd::chroot(".") {
        fail(&format!("chroot: {e}"));
    }
    let _ = std::env::set_current_dir("/");
    grow_root();
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    mnt("shm", "/dev/shm", "tmpfs", nodev, Some("mode=1777,size=65536k"));
    mnt("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=755"));
    limits(&cmdline);
    if let Some(h) = cmdline_value(&cmdline, "spinup.hostname") {
        let _ = nix::unistd::sethostname(h);
    }
    // A fresh machine-id for every guest.
    let mut id = [0u8; 16];
    let _ = getrandom(&mut id);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::write("/etc/machine-id", format!("{hex}\n"));
    loopback_up();
    net_up(&cmdline);
    // Secrets (file mode) live here, in memory.
    let _ = std::fs::create_dir_all(crate::net::SECRETS_DIR);
    let _ = std::fs::set_permissions(
        crate::net::SECRETS_DIR,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o750),
    );
    let port = loop {
        if let Some(p) = find_port(PORT_NAME) {
            break p;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            fail(&format!("no virtio-serial port named {PORT_NAME}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    own_pid_namespace();
    lockdown();
    log(&format!("guest ready in {} ms; serving on {port}", t0.elapsed().as_millis()));
    port
}

/// A fresh machine-id for every sandbox (replacing, never following, what
/// is there).
pub fn write_machine_id() {
    let mut id = [0u8; 16];
    let _ = getrandom(&mut id);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    if std::path::Path::new("/etc").is_dir() {
        let _ = std::fs::remove_file("/etc/machine-id");
        let _ = std::fs::write("/etc/machine-id", format!("{hex}\n"));
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}
