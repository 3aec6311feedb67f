//! spinup-agent: PID 1 of every Spinup sandbox.
//!
//! It reaps zombies, forwards signals to the processes it started, and
//! serves the Spinup protocol (HTTP/2) on one byte stream handed to it by
//! the driver: an inherited listening unix socket (`--listen-fd`), a socket
//! path (`--listen`), a host socket the agent dials out to (`--dial`), or a
//! character device such as a virtio-serial port (`--serial`).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the static agent has no logging stack: its few messages go to stdout/stderr, which the driver logs"
)]

mod changes;
mod files;
mod info;
mod net;
mod process;
mod pty;
mod serial;
mod server;
mod vminit;
mod watch;

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

enum Listen {
    Fd(i32),
    Path(String),
    Dial(String),
    Serial(String),
    /// PID 1 of a microVM: boot the guest, then serve on its serial port.
    Vm,
}

#[allow(clippy::exit, reason = "a usage error ends the agent before it serves anything")]
fn usage() -> ! {
    eprintln!("usage: spinup-agent [--listen-fd N | --listen PATH | --dial PATH | --serial DEV | --vm]\n       spinup-agent --version");
    std::process::exit(2)
}

fn parse_args() -> Listen {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--version"] => {
            println!("spinup-agent {} (protocol {})", env!("CARGO_PKG_VERSION"), spinup_protocol::PROTOCOL_VERSION);
            #[allow(clippy::exit, reason = "--version answers and ends")]
            std::process::exit(0)
        }
        [] => Listen::Fd(spinup_protocol::LISTEN_FD),
        ["--listen-fd", n] => Listen::Fd(n.parse().unwrap_or_else(|_| usage())),
        ["--listen", p] => Listen::Path(p.to_string()),
        ["--dial", p] => Listen::Dial(p.to_string()),
        ["--serial", p] => Listen::Serial(p.to_string()),
        ["--vm"] => Listen::Vm,
        _ => usage(),
    }
}

fn main() {
    changes::mark_start();
    let mut listen = parse_args();
    if let Listen::Vm = listen {
        listen = Listen::Serial(vminit::boot());
    } else if std::process::id() == 1 {
        // Every sandbox is its own machine: a fresh machine-id (a fork's
        // children must not share their parent's). vminit does the same.
        vminit::write_machine_id();
    }
    if std::process::id() == 1 {
        // Not dumpable: guest root (without CAP_SYS_PTRACE) cannot open the
        // agent's fds through /proc/1/fd (its listening socket, the VM's
        // identity pipe). Its children become dumpable again at exec.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    // One thread: an idle sandbox should cost next to nothing. Blocking file
    // I/O goes to tokio's blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(listen));
    std::process::exit(code);
}

async fn run(listen: Listen) -> i32 {
    let table = Arc::new(process::Table::default());

    // Reap every child, ours or orphaned, whenever SIGCHLD arrives.
    let mut sigchld = signal(SignalKind::child()).expect("SIGCHLD handler");
    {
        let table = table.clone();
        tokio::spawn(async move {
            loop {
                table.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
    }

    // Forward termination and user signals to every process group we run.
    for (kind, forward) in [
        (SignalKind::hangup(), libc::SIGHUP),
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::quit(), libc::SIGQUIT),
        (SignalKind::user_defined1(), libc::SIGUSR1),
        (SignalKind::user_defined2(), libc::SIGUSR2),
    ] {
        let table = table.clone();
        let mut s = signal(kind).expect("signal handler");
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                table.signal_all(forward);
            }
        });
    }
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");

    let app = server::router(table.clone());
    let serve = async {
        match listen {
            Listen::Fd(fd) => {
                // SAFETY: the driver passes an open, bound, listening unix
                // socket at this fd; nothing else in this process owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                let std_l = std::os::unix::net::UnixListener::from(owned);
                std_l.set_nonblocking(true).expect("nonblocking listener");
                let l = tokio::net::UnixListener::from_std(std_l).expect("listener on fd");
                server::serve_listener(l, app).await
            }
            Listen::Path(p) => {
                let _ = std::fs::remove_file(&p);
                let l = tokio::net::UnixListener::bind(&p).expect("bind agent socket");
                server::serve_listener(l, app).await
            }
            Listen::Dial(p) => server::serve_dial(&p, app).await,
            Listen::Serial(dev) => server::serve_serial(&dev, app).await,
            Listen::Vm => unreachable!("booted before the runtime starts"),
        }
    };
    tokio::select! {
        _ = serve => 1,
        _ = term.recv() => {
            table.signal_all(libc::SIGTERM);
            // Give processes a moment to exit cleanly; the pid namespace
            // takes the rest with us.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while table.running() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            0
        }
    }
}
