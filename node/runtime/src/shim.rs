//! The shim process (`k3rs shim ...`): everything that must not run in the node daemon.
//!
//! - `run <container-dir> <libcontainer-root>`: forks; the child calls `setsid`, creates and
//!   starts the container with libcontainer, reports `ok <pid>` (or the error) to the parent over
//!   a pipe, and then supervises: container output → CRI log, reaping, stop requests (SIGTERM with
//!   the grace period in `<dir>/stop`, then SIGKILL), and at exit the OOM counter, `state.json`
//!   and `delete` of the libcontainer state and cgroups. The parent exits at once with 0 or 1, so
//!   the supervisor is re-parented away from the daemon and survives its restart.
//! - `exec <container-dir> <libcontainer-root> <exec-json>`: starts a process in the running
//!   container with libcontainer's tenant builder, its stdio being the shim's own (the daemon's
//!   pipes), waits for it and exits with its exit code (126 if it could not be started).
//! - `sandbox <ns-dir> <hostname> [--host-network]`: unshares network, IPC and UTS namespaces,
//!   sets the hostname, brings `lo` up and bind-mounts the namespaces into `<ns-dir>`.

use crate::crilog::{CriLogWriter, RotatingLog, Stream};
use crate::{read_json, sys, write_json_atomic, ContainerRecord, ContainerState, StateFile};
use chrono::Utc;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, pipe2, setsid, ForkResult, Pid};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Grace period when a stop request did not say (the Kubernetes default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How long to keep reading output after the container's init exited.
const DRAIN: Duration = Duration::from_secs(2);

/// Entry point of the shim; `args` are the arguments after `shim`. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["run", dir, lc_root] => run(Path::new(dir), Path::new(lc_root)),
        ["exec", dir, lc_root, json] => exec(Path::new(dir), Path::new(lc_root), json),
        ["sandbox", ns_dir, hostname, rest @ ..] => {
            let host_network = rest.contains(&"--host-network");
            match sandbox(Path::new(ns_dir), hostname, host_network) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
        _ => {
            eprintln!(
                "usage: shim run <container-dir> <libcontainer-root> | shim exec <container-dir> <libcontainer-root> <exec-json> | shim sandbox <ns-dir> <hostname> [--host-network]"
            );
            2
        }
    }
}

fn sandbox(ns_dir: &Path, hostname: &str, host_network: bool) -> Result<(), String> {
    let mut flags = CloneFlags::CLONE_NEWIPC;
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    let mut kinds = vec!["ipc"];
    if !host_network {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
        sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
        kinds.extend(["net", "uts"]);
    }
    for ns in kinds {
        let target = ns_dir.join(ns);
        File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        mount(
            Some(format!("/proc/self/ns/{ns}").as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mounting the {ns} namespace: {e}"))?;
    }
    Ok(())
}

/// Runs `f` (which creates container processes) with no signal ignored. Rust programs ignore
/// SIGPIPE, the daemon may have inherited ignored signals, libcontainer does not reset
/// dispositions, and an ignored signal stays ignored across exec: without this, container
/// processes would ignore them (runc resets them too). The shim keeps its own dispositions
/// afterwards (a vanished reader must not kill the supervisor). glibc reserves 32 and 33.
fn with_default_signals<T>(f: impl FnOnce() -> T) -> T {
    let mut reset = Vec::new();
    for sig in
        (1..=libc::SIGRTMAX()).filter(|s| ![libc::SIGKILL, libc::SIGSTOP, 32, 33].contains(s))
    {
        // SAFETY: sigaction with a null new action only reads the disposition into `old`, a
        // zero-initialised (valid) sigaction that outlives the call.
        let ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            // SAFETY: installing SIG_DFL (no handler code) while the shim is single-threaded.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
            reset.push(sig);
        }
    }
    let r = f();
    for sig in reset {
        // SAFETY: restores SIG_IGN, as it was, while the shim is single-threaded.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    r
}

fn exec(dir: &Path, lc_root: &Path, json: &str) -> i32 {
    let fail = |msg: String| {
        eprintln!("exec: {msg}");
        crate::EXEC_START_FAILED
    };
    let cfg: crate::ExecConfig = match serde_json::from_str(json) {
        Ok(c) => c,
        Err(e) => return fail(format!("bad exec config: {e}")),
    };
    let rec: ContainerRecord = match read_json(&dir.join("container.json")) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let stdio = (|| -> std::io::Result<_> {
        Ok((
            std::io::stdin().as_fd().try_clone_to_owned()?,
            std::io::stdout().as_fd().try_clone_to_owned()?,
            std::io::stderr().as_fd().try_clone_to_owned()?,
        ))
    })();
    let (i, o, e) = match stdio {
        Ok(s) => s,
        Err(e) => return fail(format!("duplicating stdio: {e}")),
    };
    let built = with_default_signals(|| {
        ContainerBuilder::new(rec.id.clone(), SyscallType::default())
            .with_root_path(lc_root)
            .map(|b| {
                b.with_stdin(i)
                    .with_stdout(o)
                    .with_stderr(e)
                    .as_tenant()
                    .with_container_args(cfg.args.clone())
                    .with_env(cfg.env.iter().cloned().collect())
                    .with_cwd(cfg.cwd.as_ref().map(std::path::PathBuf::from))
                    .with_detach(true)
            })
            .and_then(|b| b.build())
    });
    let pid = match built {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return fail(format!("waiting for the process: {e}")),
        }
    }
}

fn run(dir: &Path, lc_root: &Path) -> i32 {
    let (ready_r, ready_w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pipe: {e}");
            return 1;
        }
    };
    // SAFETY: the shim is a fresh single-threaded process (nothing has spawned threads), so the
    // child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("fork: {e}");
            1
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(ready_w);
            let mut msg = String::new();
            let _ = File::from(ready_r).read_to_string(&mut msg);
            if msg.starts_with("ok ") {
                0
            } else if msg.is_empty() {
                eprintln!("the shim exited before the container started (see shim.log)");
                1
            } else {
                eprintln!("{}", msg.trim_start_matches("err ").trim());
                1
            }
        }
        Ok(ForkResult::Child) => {
            let code = supervise(dir, lc_root, File::from(ready_w));
            std::process::exit(code)
        }
    }
}

fn redirect_stdio(dir: &Path) -> std::io::Result<()> {
    let null = File::open("/dev/null")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))?;
    dup2(null.as_raw_fd(), 0)?;
    dup2(log.as_raw_fd(), 1)?;
    dup2(log.as_raw_fd(), 2)?;
    Ok(())
}

fn write_state(dir: &Path, state: ContainerState) {
    let st = StateFile {
        shim_pid: std::process::id() as i32,
        state,
    };
    if let Err(e) = write_json_atomic(&dir.join("state.json"), &st) {
        eprintln!("writing state: {e}");
    }
}

fn fail(dir: &Path, mut ready: File, msg: String) -> i32 {
    eprintln!("{msg}");
    write_state(
        dir,
        ContainerState::Exited {
            code: 128,
            signal: None,
            started_at: None,
            finished_at: Utc::now(),
            oom_killed: false,
            error: Some(msg.clone()),
        },
    );
    let _ = write!(ready, "err {msg}");
    1
}

fn supervise(dir: &Path, lc_root: &Path, mut ready: File) -> i32 {
    let _ = setsid();
    if let Err(e) = redirect_stdio(dir) {
        return fail(dir, ready, format!("redirecting the shim's output: {e}"));
    }
    let rec: ContainerRecord = match read_json(&dir.join("container.json")) {
        Ok(r) => r,
        Err(e) => return fail(dir, ready, e.to_string()),
    };
    let log_file = match RotatingLog::open(&rec.log_path, rec.log_rotation) {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("opening log {}: {e}", rec.log_path.display());
            return fail(dir, ready, msg);
        }
    };
    let pipes =
        (|| -> nix::Result<_> { Ok((pipe2(OFlag::O_CLOEXEC)?, pipe2(OFlag::O_CLOEXEC)?)) })();
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return fail(dir, ready, format!("pipe: {e}")),
    };
    let devnull = match File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => return fail(dir, ready, format!("opening /dev/null: {e}")),
    };

    let built = with_default_signals(|| {
        ContainerBuilder::new(rec.id.clone(), SyscallType::default())
            .with_root_path(lc_root)
            .map(|b| {
                b.with_stdin(OwnedFd::from(devnull))
                    .with_stdout(out_w)
                    .with_stderr(err_w)
                    .as_init(dir.join("bundle"))
                    .with_systemd(false)
                    .with_detach(true)
            })
            .and_then(|b| b.build())
    });
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            sys::remove_cgroup(&rec.cgroups_path);
            return fail(dir, ready, format!("creating the container: {e}"));
        }
    };
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        return fail(dir, ready, "libcontainer returned no pid".into());
    };

    // Signals are handled synchronously through a signalfd from here on. The container's init
    // already exists, so it does not inherit this mask.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    let sfd = mask
        .thread_block()
        .and_then(|_| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let sfd = match sfd {
        Ok(s) => s,
        Err(e) => {
            let _ = container.kill(Signal::SIGKILL, true);
            let _ = waitpid(pid, None);
            let _ = container.delete(true);
            return fail(dir, ready, format!("signalfd: {e}"));
        }
    };

    if let Err(e) = container.start() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        let _ = container.delete(true);
        return fail(dir, ready, format!("starting the container: {e}"));
    }
    let started_at = Utc::now();
    write_state(
        dir,
        ContainerState::Running {
            pid: pid.as_raw(),
            started_at,
        },
    );
    let _ = write!(ready, "ok {pid}");
    drop(ready);
    // libcontainer's setup is done: hand its heap back (the shim lives as long as the container).
    // SAFETY: malloc_trim only releases free heap memory; no pointers are invalidated.
    unsafe { libc::malloc_trim(0) };

    let mut log = CriLogWriter::new(log_file);
    let mut streams: [Option<(OwnedFd, Stream)>; 2] =
        [Some((out_r, Stream::Stdout)), Some((err_r, Stream::Stderr))];
    let mut exit: Option<WaitStatus> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        if exit.is_some() {
            let drained = streams.iter().all(Option::is_none);
            if drained || drain_until.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        if let Some(k) = kill_at {
            if Instant::now() >= k {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                kill_at = None;
            }
        }
        let now = Instant::now();
        let wake = [kill_at, drain_until].into_iter().flatten().min();
        let timeout = match wake {
            Some(w) => {
                PollTimeout::try_from(w.saturating_duration_since(now).as_millis() as i32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let mut which = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            if let Some((fd, _)) = s {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let ready_streams: Vec<usize> = fds[1..]
            .iter()
            .zip(&which)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, &i)| i)
            .collect();
        let sig_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);

        for i in ready_streams {
            let Some((fd, stream)) = &streams[i] else {
                continue;
            };
            let stream = *stream;
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    let _ = log.finish(stream);
                    streams[i] = None;
                }
                Ok(n) => {
                    if let Err(e) = log.write(stream, &buf[..n]) {
                        eprintln!("writing the container log: {e}");
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => {
                    eprintln!("reading container output: {e}");
                    streams[i] = None;
                }
            }
        }

        if sig_ready {
            while let Ok(Some(si)) = sfd.read_signal() {
                match Signal::try_from(si.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => loop {
                        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::StillAlive) | Err(_) => break,
                            Ok(ws) => {
                                if ws.pid() == Some(pid) {
                                    exit = Some(ws);
                                    kill_at = None;
                                    drain_until = Some(Instant::now() + DRAIN);
                                }
                            }
                        }
                    },
                    Ok(Signal::SIGTERM | Signal::SIGINT) if exit.is_none() => {
                        let grace = fs::read_to_string(dir.join("stop"))
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .map(Duration::from_millis)
                            .unwrap_or(DEFAULT_GRACE);
                        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                        let at = Instant::now() + grace;
                        kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                    }
                    _ => {}
                }
            }
        }
    }
    for s in streams.iter().flatten() {
        let _ = log.finish(s.1);
    }

    let oom_killed = sys::oom_killed(&rec.cgroups_path);
    let (code, signal) = match exit {
        Some(WaitStatus::Exited(_, c)) => (c, None),
        Some(WaitStatus::Signaled(_, s, _)) => (128 + s as i32, Some(s as i32)),
        _ => (255, None),
    };
    write_state(
        dir,
        ContainerState::Exited {
            code,
            signal,
            started_at: Some(started_at),
            finished_at: Utc::now(),
            oom_killed,
            error: None,
        },
    );
    let _ = container.refresh_status();
    if let Err(e) = container.delete(true) {
        eprintln!("deleting the container: {e}");
    }
    0
}
