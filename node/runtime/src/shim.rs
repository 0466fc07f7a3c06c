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

use crate::attach::Frame;
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
use std::os::unix::net::UnixStream;
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
        ["exec", dir, lc_root, json] => exec(Path::new(dir), Path::new(lc_root), json, false),
        ["exec", dir, lc_root, json, "--tty"] => {
            exec(Path::new(dir), Path::new(lc_root), json, true)
        }
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
                "usage: shim run <container-dir> <libcontainer-root> | shim exec <container-dir> <libcontainer-root> <exec-json> [--tty] | shim sandbox <ns-dir> <hostname> [--host-network]"
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

fn exec(dir: &Path, lc_root: &Path, json: &str, tty: bool) -> i32 {
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
    if tty {
        return exec_tty(dir, lc_root, &cfg, &rec);
    }
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
    let process_path = match write_exec_process(dir, &cfg, false) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let built = with_default_signals(|| {
        ContainerBuilder::new(rec.id.clone(), SyscallType::default())
            .with_root_path(lc_root)
            .map(|b| {
                b.with_stdin(i)
                    .with_stdout(o)
                    .with_stderr(e)
                    .as_tenant()
                    .with_process(Some(&process_path))
                    .with_detach(true)
            })
            .and_then(|b| b.build())
    });
    let _ = fs::remove_file(&process_path);
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

/// How long libcontainer may take to send a new terminal's master over the console socket.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stdin bytes held for a process that does not read them, before the shim stops reading more.
const STDIN_BUFFER: usize = 1 << 20;
/// Output held for an attach session that does not read it, before the session is dropped.
const CLIENT_BUFFER: usize = 4 << 20;

/// Reads what is there without blocking: `Ok(None)` at EOF (a pty master reports its end as
/// `EIO` once every slave is closed), `Ok(Some(0))` when nothing is ready.
fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match nix::unistd::read(fd.as_raw_fd(), buf) {
        Ok(0) | Err(nix::errno::Errno::EIO) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(Some(0)),
        Err(e) => Err(e.into()),
    }
}

/// Writes as much of `pending` as `fd` takes without blocking and removes it from `pending`.
fn write_some(fd: &OwnedFd, pending: &mut Vec<u8>) -> std::io::Result<()> {
    while !pending.is_empty() {
        match nix::unistd::write(fd, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The process an exec runs: the container's own process settings (user, groups,
/// capabilities, rlimits, no_new_privileges, as upstream's exec) with the exec's command,
/// environment and directory; written next to the container for libcontainer's tenant builder.
fn write_exec_process(
    dir: &Path,
    cfg: &crate::ExecConfig,
    terminal: bool,
) -> Result<std::path::PathBuf, String> {
    let spec = oci_spec::runtime::Spec::load(dir.join("bundle/config.json"))
        .map_err(|e| format!("reading the container's spec: {e}"))?;
    let mut process = spec.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for (k, v) in &cfg.env {
        env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    if terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    process
        .set_args(Some(cfg.args.clone()))
        .set_env(Some(env))
        .set_terminal(Some(terminal))
        .set_console_size(None);
    if let Some(cwd) = &cfg.cwd {
        process.set_cwd(cwd.into());
    }
    let path = dir.join(format!("exec-{}.process.json", std::process::id()));
    write_json_atomic(&path, &process).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `kubectl exec -t`: the container's own process settings (user, capabilities, rlimits)
/// with the exec's command, environment and directory, on a terminal that libcontainer
/// allocates inside the container (so `tty` names `/dev/pts/N` of the container's devpts) and
/// makes the controlling terminal of the new session. The shim then relays: attach frames on
/// its stdin → the terminal (data, resizes), the terminal → its stdout.
fn exec_tty(dir: &Path, lc_root: &Path, cfg: &crate::ExecConfig, rec: &ContainerRecord) -> i32 {
    let fail = |msg: String| {
        eprintln!("exec: {msg}");
        crate::EXEC_START_FAILED
    };
    let process_path = match write_exec_process(dir, cfg, true) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let console_path = dir.join(format!("exec-{}.console.sock", std::process::id()));
    let cleanup = || {
        let _ = fs::remove_file(&process_path);
        let _ = fs::remove_file(&console_path);
    };
    let listener = match crate::tty::bind(&console_path) {
        Ok(l) => l,
        Err(e) => {
            cleanup();
            return fail(format!("console socket: {e}"));
        }
    };
    let built = with_default_signals(|| {
        ContainerBuilder::new(rec.id.clone(), SyscallType::default())
            .with_root_path(lc_root)
            .map(|b| {
                b.with_console_socket(Some(&console_path))
                    .as_tenant()
                    .with_process(Some(&process_path))
                    .with_detach(true)
            })
            .and_then(|b| b.build())
    });
    let pid = match built {
        Ok(p) => p,
        Err(e) => {
            cleanup();
            return fail(e.to_string());
        }
    };
    let master = crate::tty::receive_pty_master(&listener, CONSOLE_TIMEOUT);
    drop(listener);
    cleanup();
    let master = match master {
        Ok(m) => m,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return fail(format!("receiving the terminal: {e}"));
        }
    };
    relay_exec_tty(pid, master)
}

/// The exec shim's loop with a terminal; returns the process's exit code.
fn relay_exec_tty(pid: Pid, master: OwnedFd) -> i32 {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let sfd = mask
        .thread_block()
        .and_then(|_| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let stdin = std::io::stdin().as_fd().try_clone_to_owned();
    let (sfd, stdin) = match (sfd, stdin) {
        (Ok(s), Ok(i)) => (s, i),
        _ => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            return wait_code(pid);
        }
    };
    let _ = crate::tty::set_nonblocking(&master);
    let _ = crate::tty::set_nonblocking(&stdin);
    let mut stdout = std::io::stdout();
    let (mut input_open, mut master_open) = (true, true);
    let mut inbuf = Vec::new();
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut code = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        if code.is_none() {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => code = Some(c),
                Ok(WaitStatus::Signaled(_, s, _)) => code = Some(128 + s as i32),
                Err(nix::errno::Errno::ECHILD) => code = Some(255),
                _ => {}
            }
            if code.is_some() {
                drain_until = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        if !master_open || drain_until.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let timeout = match drain_until {
            Some(d) => PollTimeout::try_from(
                d.saturating_duration_since(Instant::now()).as_millis() as i32 + 1,
            )
            .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut master_events = PollFlags::POLLIN;
        if !pending.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        let want_input = input_open && pending.len() < STDIN_BUFFER && code.is_none();
        let mut fds = vec![
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), master_events),
        ];
        if want_input {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (sig, term, input) = (
            ready(&fds[0]),
            ready(&fds[1]),
            fds.get(2).is_some_and(ready),
        );
        drop(fds);
        if sig {
            while let Ok(Some(_)) = sfd.read_signal() {}
        }
        if input {
            match read_some(&stdin, &mut buf) {
                Ok(Some(n)) => inbuf.extend_from_slice(&buf[..n]),
                Ok(None) | Err(_) => input_open = false,
            }
            match crate::attach::drain_frames(&mut inbuf) {
                Ok(frames) => {
                    for f in frames {
                        match f {
                            Frame::Stdin(d) => pending.extend_from_slice(&d),
                            Frame::Resize { width, height } => {
                                let _ = crate::tty::set_window_size(&master, width, height);
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    eprintln!("exec: {e}");
                    input_open = false;
                }
            }
        }
        if term {
            if !pending.is_empty() && write_some(&master, &mut pending).is_err() {
                pending.clear();
            }
            loop {
                match read_some(&master, &mut buf) {
                    Ok(Some(0)) => break,
                    Ok(Some(n)) => {
                        // The daemon went away: keep draining so the process is not blocked.
                        let _ = stdout.write_all(&buf[..n]).and_then(|_| stdout.flush());
                    }
                    Ok(None) | Err(_) => {
                        master_open = false;
                        break;
                    }
                }
            }
        }
    }
    match code {
        Some(c) => c,
        None => wait_code(pid),
    }
}

fn wait_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
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

/// Name of the unix socket in the container directory that attach sessions connect to.
pub const ATTACH_SOCKET: &str = "attach.sock";
/// Name of the console socket libcontainer sends a tty container's pty master to.
const CONSOLE_SOCKET: &str = "console.sock";

/// One attach session connected to the shim.
struct Client {
    sock: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// The session said it writes stdin (only such sessions close it with `stdinOnce`).
    writes_stdin: bool,
    stdin_ended: bool,
    gone: bool,
}

/// The container's stdin as the shim holds it: the pipe's write end or the pty master.
struct ContainerStdin {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    /// Close once `pending` is written (`stdinOnce` after the first session).
    close_after_flush: bool,
    /// No more input is accepted.
    closed: bool,
    tty: bool,
}

impl ContainerStdin {
    fn accept(&mut self, data: &[u8]) {
        if self.fd.is_some() && !self.closed {
            self.pending.extend_from_slice(data);
        }
    }

    /// `stdinOnce`: the first session's stdin ended. A pipe is closed (EOF); a terminal cannot
    /// be closed without ending the output too, so it gets the EOF character (^D), as a user
    /// would type it.
    fn close(&mut self) {
        if self.closed {
            return;
        }
        if self.tty {
            self.accept(&[0x04]);
        }
        self.closed = true;
        self.close_after_flush = !self.tty;
    }

    fn flush(&mut self) {
        if let Some(fd) = &self.fd {
            if write_some(fd, &mut self.pending).is_err() {
                self.pending.clear();
                self.fd = None;
                self.closed = true;
            }
        }
        if self.close_after_flush && self.pending.is_empty() {
            self.fd = None;
        }
    }
}

/// What a poll slot belongs to.
#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Output(usize),
    Listener,
    Client(usize),
    Stdin,
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

    // Without a terminal: pipes for stdout and stderr, and for stdin when the spec keeps it
    // open (else /dev/null). With one: libcontainer allocates the pty inside the container and
    // sends its master over the console socket; stdin, stdout and stderr are all the pty.
    let console_path = dir.join(CONSOLE_SOCKET);
    let console = if rec.tty {
        match crate::tty::bind(&console_path) {
            Ok(l) => Some(l),
            Err(e) => return fail(dir, ready, format!("console socket: {e}")),
        }
    } else {
        None
    };
    let pipes = (|| -> nix::Result<_> {
        let stdin = if rec.stdin && !rec.tty {
            Some(pipe2(OFlag::O_CLOEXEC)?)
        } else {
            None
        };
        Ok((pipe2(OFlag::O_CLOEXEC)?, pipe2(OFlag::O_CLOEXEC)?, stdin))
    })();
    let ((out_r, out_w), (err_r, err_w), stdin_pipe) = match pipes {
        Ok(p) => p,
        Err(e) => return fail(dir, ready, format!("pipe: {e}")),
    };
    let (stdin_r, stdin_w) = match stdin_pipe {
        Some((r, w)) => (r, Some(w)),
        None => match File::open("/dev/null") {
            Ok(f) => (OwnedFd::from(f), None),
            Err(e) => return fail(dir, ready, format!("opening /dev/null: {e}")),
        },
    };

    let built = with_default_signals(|| {
        ContainerBuilder::new(rec.id.clone(), SyscallType::default())
            .with_root_path(lc_root)
            .map(|b| {
                let b = if rec.tty {
                    b.with_console_socket(Some(&console_path))
                } else {
                    b.with_stdin(stdin_r).with_stdout(out_w).with_stderr(err_w)
                };
                b.as_init(dir.join("bundle"))
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
    let master = match &console {
        Some(l) => match crate::tty::receive_pty_master(l, CONSOLE_TIMEOUT) {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                let _ = container.delete(true);
                return fail(
                    dir,
                    ready,
                    format!("receiving the container's terminal: {e}"),
                );
            }
        },
        None => None,
    };
    drop(console);
    let _ = fs::remove_file(&console_path);

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
    // Attach sessions connect here; without it the container still runs (logs work).
    let listener = crate::tty::bind(&dir.join(ATTACH_SOCKET))
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| eprintln!("attach socket: {e}"))
        .ok();

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
    let (mut streams, mut stdin): ([Option<(OwnedFd, Stream)>; 2], ContainerStdin) = match master {
        Some(m) => {
            drop((out_r, err_r));
            let _ = crate::tty::set_nonblocking(&m);
            let writer = if rec.stdin { m.try_clone().ok() } else { None };
            (
                [Some((m, Stream::Stdout)), None],
                ContainerStdin {
                    fd: writer,
                    pending: Vec::new(),
                    close_after_flush: false,
                    closed: false,
                    tty: true,
                },
            )
        }
        None => {
            if let Some(w) = &stdin_w {
                let _ = crate::tty::set_nonblocking(w);
            }
            (
                [Some((out_r, Stream::Stdout)), Some((err_r, Stream::Stderr))],
                ContainerStdin {
                    fd: stdin_w,
                    pending: Vec::new(),
                    close_after_flush: false,
                    closed: false,
                    tty: false,
                },
            )
        }
    };
    // The terminal, for resizes (a descriptor of its own: the output stream's closes at EOF).
    let terminal = streams[0]
        .as_ref()
        .filter(|_| rec.tty)
        .and_then(|(fd, _)| fd.try_clone().ok());
    let mut clients: Vec<Client> = Vec::new();
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
        let mut slots = vec![Slot::Signal];
        for (i, s) in streams.iter().enumerate() {
            if let Some((fd, _)) = s {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(i));
            }
        }
        if let Some(l) = &listener {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Listener);
        }
        let take_input = stdin.pending.len() < STDIN_BUFFER;
        for (i, c) in clients.iter().enumerate() {
            let mut ev = PollFlags::empty();
            if take_input {
                ev |= PollFlags::POLLIN;
            }
            if !c.outbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.sock.as_fd(), ev));
            slots.push(Slot::Client(i));
        }
        if let (Some(fd), false) = (&stdin.fd, stdin.pending.is_empty()) {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
            slots.push(Slot::Stdin);
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
        let ready_slots: Vec<Slot> = fds
            .iter()
            .zip(&slots)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, &s)| s)
            .collect();
        drop(fds);

        for slot in ready_slots {
            match slot {
                Slot::Output(i) => {
                    let Some((fd, stream)) = &streams[i] else {
                        continue;
                    };
                    let stream = *stream;
                    match read_some(fd, &mut buf) {
                        Ok(Some(0)) => {}
                        Ok(Some(n)) => {
                            if let Err(e) = log.write(stream, &buf[..n]) {
                                eprintln!("writing the container log: {e}");
                            }
                            let frame = match stream {
                                Stream::Stdout => Frame::Stdout(buf[..n].to_vec()),
                                Stream::Stderr => Frame::Stderr(buf[..n].to_vec()),
                            }
                            .encode();
                            for c in clients.iter_mut() {
                                c.outbuf.extend_from_slice(&frame);
                                if c.outbuf.len() > CLIENT_BUFFER {
                                    // A session that does not read must not hold the
                                    // container's output (or the shim's memory) back.
                                    c.gone = true;
                                }
                            }
                        }
                        Ok(None) => {
                            let _ = log.finish(stream);
                            streams[i] = None;
                        }
                        Err(e) => {
                            eprintln!("reading container output: {e}");
                            let _ = log.finish(stream);
                            streams[i] = None;
                        }
                    }
                }
                Slot::Listener => {
                    while let Some(Ok((sock, _))) = listener.as_ref().map(|l| l.accept()) {
                        if sock.set_nonblocking(true).is_ok() {
                            clients.push(Client {
                                sock,
                                inbuf: Vec::new(),
                                outbuf: Vec::new(),
                                writes_stdin: false,
                                stdin_ended: false,
                                gone: false,
                            });
                        }
                    }
                }
                Slot::Client(i) => {
                    let c = &mut clients[i];
                    if !c.outbuf.is_empty() {
                        match c.sock.write(&c.outbuf) {
                            Ok(n) => {
                                c.outbuf.drain(..n);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => c.gone = true,
                        }
                    }
                    if take_input && !c.gone {
                        match c.sock.read(&mut buf) {
                            Ok(0) => c.gone = true,
                            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => c.gone = true,
                        }
                        match crate::attach::drain_frames(&mut c.inbuf) {
                            Ok(frames) => {
                                for f in frames {
                                    match f {
                                        Frame::Hello { stdin } => c.writes_stdin = stdin,
                                        Frame::Stdin(d) if !c.stdin_ended => stdin.accept(&d),
                                        Frame::CloseStdin => c.stdin_ended = true,
                                        Frame::Resize { width, height } => {
                                            if let Some(t) = &terminal {
                                                let _ =
                                                    crate::tty::set_window_size(t, width, height);
                                            }
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            Err(e) => {
                                eprintln!("attach session: {e}");
                                c.gone = true;
                            }
                        }
                    }
                    if (c.gone || c.stdin_ended) && c.writes_stdin && rec.stdin_once {
                        stdin.close();
                    }
                }
                Slot::Stdin => {}
                Slot::Signal => {
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
        }
        // Input is written whenever there is some (the poll slot only wakes us for the rest).
        stdin.flush();
        clients.retain(|c| !c.gone);
    }
    for s in streams.iter().flatten() {
        let _ = log.finish(s.1);
    }
    // Sessions get the last output, then EOF: the container is gone.
    drop(listener);
    let _ = fs::remove_file(dir.join(ATTACH_SOCKET));
    for mut c in clients {
        let _ = c.sock.set_nonblocking(false);
        let _ = c.sock.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = c.sock.write_all(&c.outbuf);
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
