//! PID 1: bring the machine up, supervise the node daemon, bring it down cleanly.
//! Every step logs and survives its failure; nothing here panics or returns.

use crate::blockdev::{self, Probe};
use crate::config::{NodeConfig, StaticNetwork};
use crate::sys::{MountFlags, RealSys, Sys};
use crate::{
    grow, logfile, modules, mounts, net, power, readiness, sntp, supervisor::Backoff, update,
};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

pub const DATA_DIR: &str = "/var/lib/k3rs";
pub const KUBECONFIG: &str = "/etc/k3rs/k3rs.yaml";
/// The board's module list (one name per line), written by the image builder.
pub const MODULES_FILE: &str = "/etc/k3rs/modules";
/// The image's build time (seconds since the epoch): the clock is never set earlier.
pub const BUILD_EPOCH_FILE: &str = "/etc/k3rs/build-epoch";
/// Present only in the initramfs: PID 1 there switches to the root slot.
pub const INITRAMFS_MARKER: &str = "/etc/k3rs/initramfs";
/// Set by stage 1 when it execs the root slot's `/init`.
const STAGE_ENV: &str = "K3RS_INIT_STAGE";
/// The node daemon's pid while it runs (what a service manager calls its main pid).
pub const NODE_PID_FILE: &str = "/run/k3rs/node.pid";
/// Airgap image archives on the NoCloud seed: `images/*.tar` are copied to
/// `<data-dir>/agent/images/`, which the kubelet imports at start (K3s's airgap directory).
const SEED_IMAGES_DIR: &str = "images";
/// How often the clock is re-checked against the SNTP servers.
const SNTP_INTERVAL: Duration = Duration::from_secs(1024);
/// Offsets below this are left alone (no slewing here; stepping for noise is worse).
const SNTP_STEP_THRESHOLD_NANOS: i128 = 500_000_000;
pub const KUBECONFIG_BEGIN: &str = "-----BEGIN K3RS KUBECONFIG-----";
pub const KUBECONFIG_END: &str = "-----END K3RS KUBECONFIG-----";
const API_PORT: u16 = 6443;
/// Bounds each step of the readiness probe. client-go's TLS handshake timeout: an emulated or
/// slow board (a Pi 3 under TCG) takes seconds for a handshake, and a probe that gives up
/// sooner would never see its API ready.
const API_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Modules loaded when the image has no module list.
const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "button",
    "evdev",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "isofs",
    "erofs",
    "squashfs",
    "overlay",
    "br_netfilter",
    "veth",
    "bridge",
    "vxlan",
    "nf_tables",
    "nft_nat",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    PowerOff,
    Reboot,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse().ok()))
        .unwrap_or(0.0)
}

/// `MemTotal − MemAvailable` in KiB, and MemTotal.
pub fn memory_in_use_kib() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let total = field("MemTotal:")?;
    Some((total - field("MemAvailable:")?, total))
}

/// Runs as PID 1. Never returns.
pub fn run_pid1() -> ! {
    // Signals are taken synchronously by the main loop; threads inherit this mask and children
    // are started through `command`, which clears it.
    let signals = block_signals();
    let sys = RealSys;
    // Stage 2 (the root slot's /init) inherits the mounts moved over by stage 1; mounting again
    // would stack fresh, empty filesystems on top of them.
    let stage2 = std::env::var_os(STAGE_ENV).is_some();
    let failed_mounts = if stage2 { 0 } else { mounts::mount_early(&sys) };
    ensure_console();
    init_logging();
    info!(uptime = uptime(), failed_mounts, "k3rs-init: PID 1 started");
    clock_sanity();
    // SAFETY: reboot(RB_DISABLE_CAD) only changes how Ctrl-Alt-Del is handled (SIGINT to PID 1).
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let moddir = PathBuf::from("/lib/modules").join(release.trim());
    let list = std::fs::read_to_string(MODULES_FILE).ok();
    let wanted: Vec<&str> = match &list {
        Some(l) => l
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect(),
        None => DEFAULT_MODULES.to_vec(),
    };
    if stage2 {
        info!("k3rs-init: running from the root slot");
        writable_etc(&sys);
    } else {
        modules::load_modules(&sys, &moddir, &wanted);
        mounts::enable_cgroup_controllers(&sys, Path::new("/sys/fs/cgroup"));
        mounts::apply_sysctls(&sys, mounts::SYSCTLS);
        if Path::new(INITRAMFS_MARKER).exists() {
            // Only returns when the slot cannot be used: then the initramfs is the system.
            if let Err(e) = switch_to_slot(&sys) {
                error!("k3rs-init: root slot unusable: {e}");
                roll_back_failed_trial(&e);
                error!("k3rs-init: running from the initramfs");
            }
        }
    }
    power::watch_power_buttons();

    wait_for_partition("data", Duration::from_secs(5));
    let (cfg, seed) = load_config(&sys);
    let hostname = cfg.hostname.clone().unwrap_or_else(|| "k3rs".to_string());
    set_hostname(&sys, &hostname);
    let mut mounted = Vec::new();
    match mount_data(&sys) {
        Some(m) => {
            start_log_file(&m);
            mounted.push(m);
        }
        None => logfile::discard_early(),
    }
    machine_id(&sys);
    let trial = if stage2 { check_update(&cfg) } else { None };
    if let Some(seed) = &seed {
        import_seed_images(&sys, seed);
    }
    let mut ntp_servers = cfg.ntp_servers.clone();
    for s in bring_up_network(&hostname, cfg.network.as_ref()) {
        if !ntp_servers.contains(&s) {
            ntp_servers.push(s);
        }
    }
    // Before the daemon starts: it creates certificates on first boot and checks peers' ones.
    if !ntp_servers.is_empty() {
        sync_clock(&ntp_servers);
        let servers = ntp_servers.clone();
        let spawned = std::thread::Builder::new()
            .name("sntp".into())
            .spawn(move || loop {
                std::thread::sleep(SNTP_INTERVAL);
                sync_clock(&servers);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "starting the SNTP thread failed");
        }
    }
    info!(
        uptime = uptime(),
        "k3rs-init: system up; starting the node daemon"
    );
    supervise(&cfg, &signals, &mounted, trial)
}

/// A boot of a freshly updated slot that is not the default yet.
struct Trial {
    slot: String,
    version: String,
    deadline: Instant,
}

const DEFAULT_TRIAL_TIMEOUT: Duration = Duration::from_secs(600);

/// Stage 1 could not use the slot it was told to boot: on a trial boot, the way back is a
/// reboot (the firmware boots the default slot again).
fn roll_back_failed_trial(why: &str) {
    let Some(running) = update::running_slot() else {
        return;
    };
    match update::esp_default_slot() {
        Ok(default) if default != running => {
            error!("k3rs-init: trial boot of slot {running} failed ({why}); rebooting into slot {default}");
            nix::unistd::sync();
            let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
            error!(error = ?err, "reboot(2) failed");
        }
        Ok(_) | Err(update::UpdateError::NoBootloader) => {}
        Err(e) => warn!(error = %chain(&e), "reading the default slot failed"),
    }
}

/// Where this boot stands with respect to an update: a trial boot to commit or undo, the report
/// of one that was rolled back, or nothing.
fn check_update(cfg: &NodeConfig) -> Option<Trial> {
    let running = update::running_slot()?;
    let data = Path::new(DATA_DIR);
    let pending = update::pending(data);
    let default = match update::esp_default_slot() {
        Ok(d) => d,
        // A board without systemd-boot (Raspberry Pi): no A/B updates to check.
        Err(update::UpdateError::NoBootloader) => return None,
        Err(e) => {
            warn!(error = %chain(&e), "k3rs-init: reading the default slot failed; no update checks this boot");
            return None;
        }
    };
    if running != default {
        let timeout = cfg
            .update_trial_timeout
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TRIAL_TIMEOUT);
        let version = pending.map(|p| p.version).unwrap_or_default();
        warn!(slot = %running, version = %version, timeout_secs = timeout.as_secs(), "k3rs-init: trial boot of an updated slot; committed once the API answers, else rolled back to slot {default}");
        return Some(Trial {
            slot: running,
            version,
            deadline: Instant::now() + timeout,
        });
    }
    if let Some(p) = pending {
        let (state, detail) = if p.slot == running {
            ("committed", format!("slot {running} is the default"))
        } else {
            error!(version = %p.version, failed_slot = %p.slot, "k3rs-init: UPDATE ROLLED BACK: the update did not come up; running the previous slot {running}");
            (
                "rolled-back",
                format!("slot {} did not come up; back on slot {running}", p.slot),
            )
        };
        if let Err(e) = update::finish(data, state, &detail) {
            warn!(error = %chain(&e), "recording the update's outcome failed");
        }
    }
    None
}

/// Makes the trial slot the default once its API answers.
fn commit_trial(t: &Trial) -> bool {
    match update::commit(&t.slot) {
        Ok(()) => {
            info!(slot = %t.slot, version = %t.version, "k3rs-init: update committed: slot {} is the default now", t.slot);
            let detail = format!("slot {} is the default", t.slot);
            if let Err(e) = update::finish(Path::new(DATA_DIR), "committed", &detail) {
                warn!(error = %chain(&e), "recording the update's outcome failed");
            }
            true
        }
        Err(e) => {
            error!(error = %chain(&e), "k3rs-init: committing the update failed; retrying");
            false
        }
    }
}

/// A command whose child starts with no blocked signals: the mask PID 1 blocks is inherited
/// across fork and exec, and std's spawn does not reset it.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only calls sigemptyset and
    // pthread_sigmask, which are async-signal-safe, on a local sigset_t.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
            Ok(())
        });
    }
    cmd
}

fn cmdline_value(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .map(str::to_string)
}

/// Stage 1 → 2: mounts the root slot named on the kernel command line (`k3rs.slot=A|B`, default
/// A; `none` stays in the initramfs) read-only, moves the API mounts into it, frees the
/// initramfs, makes it `/` and execs its `/init`. Returns only on failure, before anything is
/// lost.
fn switch_to_slot(sys: &dyn Sys) -> Result<(), String> {
    let slot = cmdline_value("k3rs.slot").unwrap_or_else(|| "A".into());
    if slot == "none" {
        return Err("k3rs.slot=none".into());
    }
    let part = format!("root{slot}");
    let dev = wait_for_partition(&part, Duration::from_secs(5))
        .ok_or_else(|| format!("no partition named {part}"))?;
    let head =
        blockdev::read_head(&dev.dev).map_err(|e| format!("reading {}: {e}", dev.dev.display()))?;
    let fstype = match blockdev::probe(&head) {
        Probe::Erofs => "erofs",
        Probe::Squashfs => "squashfs",
        other => {
            return Err(format!(
                "{} holds {other:?}, not erofs or squashfs",
                dev.dev.display()
            ))
        }
    };
    let root = Path::new("/sysroot");
    let _ = sys.mkdir_all(root);
    let ro = MountFlags {
        rdonly: true,
        nodev: true,
        ..MountFlags::NONE
    };
    sys.mount(&dev.dev.display().to_string(), root, fstype, ro, None)
        .map_err(|e| format!("mounting {} ({fstype}): {e}", dev.dev.display()))?;
    if !root.join("init").exists() {
        let _ = sys.umount(root);
        return Err(format!("slot {slot} has no /init"));
    }
    info!(slot = %slot, device = %dev.dev.display(), fstype, uptime = uptime(), "k3rs-init: switching to root slot");
    use nix::mount::MsFlags;
    for m in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let target = root.join(m.trim_start_matches('/'));
        if let Err(e) = nix::mount::mount(
            Some(m),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ) {
            warn!(mount = m, error = %e, "moving mount into the slot failed");
        }
    }
    // From here on there is no way back: the initramfs is emptied to give its memory back.
    free_initramfs(Path::new("/"), root);
    let step = (|| -> nix::Result<()> {
        nix::unistd::chdir(root)?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
        nix::unistd::chroot(".")?;
        nix::unistd::chdir("/")
    })();
    if let Err(e) = step {
        error!(error = %e, "switching root failed");
    }
    use std::os::unix::process::CommandExt;
    let err = Command::new("/init").env(STAGE_ENV, "2").exec();
    // Nothing to fall back to: keep PID 1 alive so the console shows why.
    error!(error = %err, "exec of the slot's /init failed; halting");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Deletes the initramfs's files (same filesystem as `/`), leaving mount points such as `keep`.
fn free_initramfs(dir: &Path, keep: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root_dev) = std::fs::symlink_metadata("/").map(|m| m.dev()) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p == keep {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != root_dev {
            continue;
        }
        if md.is_dir() {
            free_initramfs(&p, keep);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// The root slot is read-only: /etc gets a tmpfs-backed overlay for hostname, resolv.conf,
/// machine-id and the kubeconfig.
fn writable_etc(sys: &dyn Sys) {
    let base = Path::new("/run/k3rs/etc");
    let _ = sys.mkdir_all(&base.join("upper"));
    let _ = sys.mkdir_all(&base.join("work"));
    let data = "lowerdir=/etc,upperdir=/run/k3rs/etc/upper,workdir=/run/k3rs/etc/work";
    if let Err(e) = sys.mount(
        "overlay",
        Path::new("/etc"),
        "overlay",
        MountFlags {
            nodev: true,
            nosuid: true,
            ..MountFlags::NONE
        },
        Some(data),
    ) {
        error!(error = %e, "overlay on /etc failed; /etc stays read-only");
    }
}

fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("k3rs-init: blocking signals failed: {e}");
    }
    set
}

fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid initialised sigset_t, a null siginfo pointer is allowed, and `ts`
    // lives for the duration of the call.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r > 0 {
        Signal::try_from(r).ok()
    } else {
        None
    }
}

/// The kernel hands PID 1 /dev/console as fds 0–2 when the initramfs has the node; if it did not,
/// open it from devtmpfs now.
fn ensure_console() {
    use std::os::fd::AsRawFd;
    if nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 on a valid open fd onto the standard descriptors, which are unused.
            unsafe { libc::dup2(c.as_raw_fd(), fd) };
        }
    }
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_writer(|| logfile::ConsoleAndFile)
        .try_init();
}

/// From here on PID 1's lines and the node daemon's output also go to a rotated file on the data
/// partition (only there: memory-backed state gets no file). Failing to start it costs only the
/// file.
fn start_log_file(data: &Path) {
    let path = data.join(logfile::LOG_FILE);
    match logfile::start(&path) {
        Ok(()) => {
            info!(path = %path.display(), max_mib = logfile::MAX_BYTES >> 20, keep = logfile::KEEP, "k3rs-init: logging to the console and a rotated file")
        }
        Err(e) => warn!(path = %path.display(), error = %e, "k3rs-init: no log file; console only"),
    }
}

/// Where the node daemon's stdout and stderr go: a pipe drained by a thread that copies to the
/// console and the log file, or (`None`) the console itself when there is no log file or the
/// pipe or thread cannot be had.
fn daemon_output() -> Option<(std::process::Stdio, std::process::Stdio)> {
    use std::process::Stdio;
    if !logfile::active() {
        return None;
    }
    let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "pipe for the node daemon's output failed; console only");
            return None;
        }
    };
    let write2 = match write.try_clone() {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "dup of the node daemon's output pipe failed; console only");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("daemon-log".into())
        .spawn(move || logfile::pump(read, &mut std::io::stderr()));
    if let Err(e) = spawned {
        warn!(error = %e, "starting the node daemon's log thread failed; console only");
        return None;
    }
    Some((Stdio::from(write), Stdio::from(write2)))
}

fn build_epoch() -> Option<i64> {
    std::fs::read_to_string(BUILD_EPOCH_FILE)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
}

fn clock_sanity() {
    let Some(epoch) = build_epoch() else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now < epoch {
        let ts = libc::timespec {
            tv_sec: epoch as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: clock_settime with a valid clock id and a timespec that outlives the call.
        let r = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        warn!(
            now,
            epoch,
            ok = r == 0,
            "clock was before the image's build date; set it forward"
        );
    }
}

fn now_unix_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Asks the servers in order until one answers, and steps the clock to its time unless that is
/// before the image's build date. Returns whether a server answered.
fn sync_clock(servers: &[String]) -> bool {
    let floor = build_epoch().unwrap_or(0);
    for server in servers {
        let addrs = match sntp::resolve(server) {
            Ok(a) => a,
            Err(e) => {
                warn!(server = %server, "SNTP: {}", chain(&e));
                continue;
            }
        };
        for addr in addrs {
            let mut reply = sntp::query(addr, Duration::from_secs(1));
            if matches!(reply, Err(sntp::SntpError::Io { .. })) {
                // One retry: the first datagram after the link came up can be lost (ARP).
                reply = sntp::query(addr, Duration::from_secs(1));
            }
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    warn!(server = %addr, "SNTP: {}", chain(&e));
                    continue;
                }
            };
            let offset_ms = (reply.offset_nanos / 1_000_000) as i64;
            if reply.offset_nanos.abs() < SNTP_STEP_THRESHOLD_NANOS {
                info!(server = %addr, offset_ms, stratum = reply.stratum, "k3rs-init: SNTP: clock in sync");
                return true;
            }
            match sntp::corrected_time(now_unix_nanos(), &reply, floor) {
                Ok(t) => {
                    let ts = libc::timespec {
                        tv_sec: (t / 1_000_000_000) as libc::time_t,
                        tv_nsec: (t % 1_000_000_000) as libc::c_long,
                    };
                    // SAFETY: clock_settime with a valid clock id and a timespec that outlives
                    // the call.
                    let r = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
                    if r == 0 {
                        info!(server = %addr, offset_ms, stratum = reply.stratum, "k3rs-init: SNTP: clock stepped");
                    } else {
                        warn!(error = %std::io::Error::last_os_error(), "SNTP: clock_settime failed");
                    }
                    return true;
                }
                Err(e) => warn!(server = %addr, "SNTP: {}; clock left alone", chain(&e)),
            }
        }
    }
    warn!(servers = ?servers, "SNTP: no server gave a usable time");
    false
}

fn wait_for_partition(name: &str, max: Duration) -> Option<blockdev::BlockDev> {
    let start = Instant::now();
    loop {
        if let Some(d) = blockdev::list()
            .into_iter()
            .find(|d| d.partname.as_deref() == Some(name))
        {
            return Some(d);
        }
        if start.elapsed() > max {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_opt(sys: &dyn Sys, p: &Path) -> Option<String> {
    sys.read_file(p)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A NoCloud seed volume.
struct Seed {
    dev: PathBuf,
    fstype: &'static str,
}

const SEED_MOUNT: &str = "/run/k3rs/seed";

/// The NoCloud seed (a CIDATA vfat/iso9660 volume: `user-data`, `meta-data`, optional
/// `network-config` v2), else `k3rs.toml` on the ESP, else defaults. A broken file is reported
/// and ignored: the node boots with defaults and nothing is written.
fn load_config(sys: &dyn Sys) -> (NodeConfig, Option<Seed>) {
    for dev in blockdev::list() {
        let Ok(head) = blockdev::read_head(&dev.dev) else {
            continue;
        };
        let fstype = match blockdev::probe(&head) {
            Probe::Vfat { label } if label.eq_ignore_ascii_case("cidata") => "vfat",
            Probe::Iso9660 { label } if label.eq_ignore_ascii_case("cidata") => "iso9660",
            _ => continue,
        };
        let dir = Path::new(SEED_MOUNT);
        let _ = sys.mkdir_all(dir);
        let ro = MountFlags {
            rdonly: true,
            ..MountFlags::SECURE
        };
        if let Err(e) = sys.mount(&dev.dev.display().to_string(), dir, fstype, ro, None) {
            error!(device = %dev.dev.display(), error = %e, "mounting the NoCloud seed failed; booting with defaults");
            return (NodeConfig::default(), None);
        }
        let ud = read_opt(sys, &dir.join("user-data")).unwrap_or_default();
        let md = read_opt(sys, &dir.join("meta-data"));
        let nc = read_opt(sys, &dir.join("network-config"));
        let _ = sys.umount(dir);
        let mut cfg = match NodeConfig::from_nocloud(&ud, md.as_deref()) {
            Ok(c) => {
                info!(device = %dev.dev.display(), role = ?c.role, hostname = ?c.hostname, "k3rs-init: config from NoCloud seed");
                c
            }
            Err(e) => {
                error!(device = %dev.dev.display(), "k3rs-init: CONFIG ERROR: {}; booting with defaults, nothing overwritten", chain(&e));
                NodeConfig::default()
            }
        };
        // network-config is read even when user-data is broken: a node that boots with
        // defaults should still be reachable where DHCP is absent.
        if let (None, Some(nc)) = (&cfg.network, nc) {
            match crate::config::parse_network_config(&nc) {
                Ok(n) => cfg.network = n,
                Err(e) => error!(
                    "k3rs-init: CONFIG ERROR: network-config: {}; using DHCP",
                    chain(&e)
                ),
            }
        }
        return (
            cfg,
            Some(Seed {
                dev: dev.dev.clone(),
                fstype,
            }),
        );
    }
    if let Some(esp) = blockdev::list()
        .into_iter()
        .find(|d| d.partname.as_deref() == Some("ESP"))
    {
        let dir = Path::new("/run/k3rs/esp");
        let _ = sys.mkdir_all(dir);
        let ro = MountFlags {
            rdonly: true,
            ..MountFlags::SECURE
        };
        if sys
            .mount(&esp.dev.display().to_string(), dir, "vfat", ro, None)
            .is_ok()
        {
            let text = read_opt(sys, &dir.join("k3rs.toml"));
            let _ = sys.umount(dir);
            if let Some(text) = text {
                return match NodeConfig::from_toml(&text) {
                    Ok(c) => {
                        info!(role = ?c.role, hostname = ?c.hostname, "k3rs-init: config from k3rs.toml on the ESP");
                        (c, None)
                    }
                    Err(e) => {
                        error!("k3rs-init: CONFIG ERROR: {}; booting with defaults, nothing overwritten", chain(&e));
                        (NodeConfig::default(), None)
                    }
                };
            }
        }
    }
    info!("k3rs-init: no seed or k3rs.toml; default config (single-node server)");
    (NodeConfig::default(), None)
}

/// Copies `images/*.tar` from the seed into the kubelet's airgap directory, skipping archives
/// already there with the same size (the seed stays attached across boots).
fn import_seed_images(sys: &dyn Sys, seed: &Seed) {
    let dir = Path::new(SEED_MOUNT);
    let ro = MountFlags {
        rdonly: true,
        ..MountFlags::SECURE
    };
    if let Err(e) = sys.mount(&seed.dev.display().to_string(), dir, seed.fstype, ro, None) {
        warn!(device = %seed.dev.display(), error = %e, "mounting the NoCloud seed for airgap images failed");
        return;
    }
    let dest = Path::new(DATA_DIR).join("agent/images");
    let mut copied = 0;
    if let Ok(rd) = std::fs::read_dir(dir.join(SEED_IMAGES_DIR)) {
        for e in rd.flatten() {
            let src = e.path();
            let is_tar = src
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("tar"));
            let Some(name) = src.file_name().filter(|_| is_tar) else {
                continue;
            };
            let target = dest.join(name.to_ascii_lowercase());
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::metadata(&target).is_ok_and(|m| m.len() == size) {
                continue;
            }
            let tmp = target.with_extension("tar.part");
            let r = std::fs::create_dir_all(&dest)
                .and_then(|_| std::fs::copy(&src, &tmp))
                .and_then(|_| std::fs::rename(&tmp, &target));
            match r {
                Ok(()) => copied += 1,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    warn!(file = %src.display(), error = %e, "copying an airgap image from the seed failed");
                }
            }
        }
    }
    let _ = sys.umount(dir);
    if copied > 0 {
        info!(copied, to = %dest.display(), "k3rs-init: airgap images from the NoCloud seed");
    }
}

fn set_hostname(sys: &dyn Sys, name: &str) {
    if let Err(e) = sys.set_hostname(name) {
        warn!(error = %e, "sethostname failed");
    }
    let _ = sys.mkdir_all(Path::new("/etc"));
    let _ = sys.write_file(Path::new("/etc/hostname"), format!("{name}\n").as_bytes());
    let _ = sys.write_file(
        Path::new("/etc/hosts"),
        format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {name}\n").as_bytes(),
    );
}

/// Mounts the data partition (GPT name `data`) at /var/lib/k3rs, creating ext4 on it when it is
/// blank. A partition holding something else is left alone and state stays in memory.
fn mount_data(sys: &dyn Sys) -> Option<PathBuf> {
    let target = PathBuf::from(DATA_DIR);
    let found = mount_data_partition(sys, &target);
    if found.is_none() {
        // The root may be read-only: state goes to memory.
        let flags = MountFlags {
            nosuid: true,
            nodev: true,
            ..MountFlags::NONE
        };
        if let Err(e) = sys.mount("k3rs-data", &target, "tmpfs", flags, Some("mode=0700")) {
            warn!(error = %e, "tmpfs for {DATA_DIR} failed");
        }
    }
    found
}

fn mount_data_partition(sys: &dyn Sys, target: &Path) -> Option<PathBuf> {
    let target = target.to_path_buf();
    let _ = sys.mkdir_all(&target);
    let Some(dev) = wait_for_partition("data", Duration::from_secs(1)) else {
        warn!("no data partition (GPT name \"data\"); cluster state lives in memory only");
        return None;
    };
    grow_data_partition(&dev);
    let head = match blockdev::read_head(&dev.dev) {
        Ok(h) => h,
        Err(e) => {
            error!(device = %dev.dev.display(), error = %e, "reading the data partition failed; state in memory only");
            return None;
        }
    };
    let mut grow_fs_to = None;
    match blockdev::probe(&head) {
        Probe::Ext4 => {
            let part_bytes = sysfs_u64(&format!("/sys/class/block/{}/size", dev.name))
                .map(|s| s * 512)
                .unwrap_or(0);
            if let Some((block, blocks)) = grow::ext4_geometry(&head) {
                let fits = part_bytes / block;
                if fits.saturating_sub(blocks) * block >= grow::MIN_GROWTH_BYTES {
                    grow_fs_to = Some((block, blocks, fits));
                }
            }
        }
        Probe::Blank => {
            info!(device = %dev.dev.display(), "k3rs-init: first boot: creating ext4 on the data partition");
            let status = command("/sbin/mke2fs")
                .args([
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "k3rs-data",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                ])
                .arg(&dev.dev)
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    error!(status = %s, "mke2fs failed; state in memory only");
                    return None;
                }
                Err(e) => {
                    error!(error = %e, "running /sbin/mke2fs failed; state in memory only");
                    return None;
                }
            }
        }
        other => {
            error!(device = %dev.dev.display(), found = ?other, "the data partition holds something that is not ext4; not formatting it; state in memory only");
            return None;
        }
    }
    let flags = MountFlags {
        nosuid: true,
        nodev: true,
        noatime: true,
        ..MountFlags::NONE
    };
    match sys.mount(&dev.dev.display().to_string(), &target, "ext4", flags, None) {
        Ok(()) => {
            info!(device = %dev.dev.display(), "k3rs-init: data partition mounted at {DATA_DIR}");
            if let Some((block, from, to)) = grow_fs_to {
                match grow::ext4_resize_online(&target, to) {
                    Ok(()) => info!(
                        from_mib = (from * block) >> 20,
                        to_mib = (to * block) >> 20,
                        "k3rs-init: data filesystem grown online (EXT4_IOC_RESIZE_FS)"
                    ),
                    Err(e) => warn!("growing the data filesystem: {}", chain(&e)),
                }
            }
            Some(target)
        }
        Err(e) => {
            error!(device = %dev.dev.display(), error = %e, "mounting the data partition failed; state in memory only");
            None
        }
    }
}

fn sysfs_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Extends the data partition to the end of its disk when the disk is larger than the image
/// (see [`grow`]). Failures are logged; the partition is then used as it is.
fn grow_data_partition(part: &blockdev::BlockDev) {
    let Some(disk) = std::fs::canonicalize(format!("/sys/class/block/{}", part.name))
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
    else {
        return;
    };
    let sector =
        sysfs_u64(&format!("/sys/class/block/{disk}/queue/logical_block_size")).unwrap_or(512);
    let Some(disk_lbas) =
        sysfs_u64(&format!("/sys/class/block/{disk}/size")).map(|s| s * 512 / sector)
    else {
        return;
    };
    let disk_dev = PathBuf::from(format!("/dev/{disk}"));
    let result = (|| -> Result<Option<grow::Growth>, grow::GrowError> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk_dev)
            .map_err(|source| grow::GrowError::Io {
                what: format!("opening {}", disk_dev.display()),
                source,
            })?;
        let Some(g) = grow::grow_gpt_partition(&mut f, sector, disk_lbas, "data")? else {
            return Ok(None);
        };
        f.sync_all().map_err(|source| grow::GrowError::Io {
            what: "syncing the GPT".into(),
            source,
        })?;
        grow::kernel_resize_partition(
            &disk_dev,
            g.number,
            g.first_lba * sector,
            (g.new_last_lba - g.first_lba + 1) * sector,
        )?;
        Ok(Some(g))
    })();
    match result {
        Ok(Some(g)) => info!(
            disk = %disk_dev.display(),
            partition = g.number,
            from_mib = ((g.old_last_lba - g.first_lba + 1) * sector) >> 20,
            to_mib = ((g.new_last_lba - g.first_lba + 1) * sector) >> 20,
            "k3rs-init: data partition grown to fill the disk"
        ),
        Ok(None) => {}
        Err(e) => warn!(disk = %disk_dev.display(), "growing the data partition: {}", chain(&e)),
    }
}

fn machine_id(sys: &dyn Sys) {
    let stored = Path::new(DATA_DIR).join("machine-id");
    let id = match read_opt(sys, &stored)
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 32)
    {
        Some(id) => id,
        None => {
            let mut b = [0u8; 16];
            let _ = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
            let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let _ = sys.write_file(&stored, format!("{id}\n").as_bytes());
            id
        }
    };
    let _ = sys.write_file(Path::new("/etc/machine-id"), format!("{id}\n").as_bytes());
}

/// Loopback, then the static config or DHCP on the first wired interface. Returns the NTP
/// servers DHCP named (option 42).
fn bring_up_network(hostname: &str, static_net: Option<&StaticNetwork>) -> Vec<String> {
    let mut nl = match net::Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            error!("netlink: {}; no networking", chain(&e));
            return Vec::new();
        }
    };
    if let Err(e) = nl.link_up(1) {
        warn!("loopback: {}", chain(&e));
    }
    let start = Instant::now();
    let wanted = static_net.and_then(|n| n.interface.clone());
    let iface = loop {
        if let Some(w) = &wanted {
            if Path::new("/sys/class/net").join(w).exists() {
                break w.clone();
            }
        }
        // A named interface gets a second to appear before the first wired one is used.
        if wanted.is_none() || start.elapsed() > Duration::from_secs(1) {
            if let Some(i) = net::first_wired_interface() {
                if let Some(w) = &wanted {
                    warn!(wanted = %w, using = %i, "static network: no such interface; using the first wired one");
                }
                break i;
            }
        }
        if start.elapsed() > Duration::from_secs(5) {
            warn!("no wired network interface; networking is loopback only");
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(st) = static_net {
        let result = (|| -> Result<(Ipv4Addr, u8), String> {
            let (addr, prefix) = st.cidr().map_err(|e| e.to_string())?;
            let index = net::ifindex(&iface).map_err(|e| chain(&e))?;
            nl.link_up(index).map_err(|e| chain(&e))?;
            nl.add_address(index, addr, prefix).map_err(|e| chain(&e))?;
            if let Some(gw) = st.gateway {
                nl.add_default_route(index, gw, false)
                    .map_err(|e| chain(&e))?;
            }
            Ok((addr, prefix))
        })();
        match result {
            Ok((addr, prefix)) => {
                if !st.dns.is_empty() {
                    if let Err(e) = std::fs::write("/etc/resolv.conf", net::resolv_conf(&st.dns)) {
                        warn!(error = %e, "writing /etc/resolv.conf failed");
                    }
                }
                info!(iface = %iface, address = %addr, prefix, gateway = ?st.gateway, dns = ?st.dns, "k3rs-init: static network");
            }
            Err(e) => error!(iface = %iface, "static network: {e}"),
        }
        return Vec::new();
    }
    let result = (|| -> Result<Vec<String>, net::NetError> {
        let index = net::ifindex(&iface)?;
        nl.link_up(index)?;
        let client = net::DhcpClient::new(&iface, Some(hostname.to_string()))?;
        let lease = client.acquire(Duration::from_secs(20))?;
        apply_lease(&mut nl, index, &lease)?;
        info!(iface = %iface, address = %lease.address, prefix = lease.prefix, router = ?lease.router, dns = ?lease.dns, ntp = ?lease.ntp, lease_secs = lease.lease_secs, "k3rs-init: DHCP lease");
        let ntp = lease.ntp.iter().map(|a| a.to_string()).collect();
        let spawned = std::thread::Builder::new()
            .name("dhcp".into())
            .spawn(move || renew_loop(client, lease, index));
        if let Err(e) = spawned {
            warn!(error = %e, "starting the DHCP renewal thread failed");
        }
        Ok(ntp)
    })();
    result.unwrap_or_else(|e| {
        error!(iface = %iface, "network: {}", chain(&e));
        Vec::new()
    })
}

fn apply_lease(nl: &mut net::Netlink, index: u32, lease: &net::Lease) -> Result<(), net::NetError> {
    nl.add_address(index, lease.address, lease.prefix)?;
    if let Some(gw) = lease.router {
        nl.add_default_route(index, gw, true)?;
    }
    if !lease.dns.is_empty() {
        if let Err(e) = std::fs::write("/etc/resolv.conf", net::resolv_conf(&lease.dns)) {
            warn!(error = %e, "writing /etc/resolv.conf failed");
        }
    }
    Ok(())
}

/// Renews at half the lease time; on failure retries every minute, keeping the address.
fn renew_loop(client: net::DhcpClient, mut lease: net::Lease, index: u32) {
    let mut wait = Duration::from_secs(u64::from(lease.lease_secs / 2).max(30));
    loop {
        std::thread::sleep(wait);
        match client.renew(&lease) {
            Ok(l) => {
                if let Ok(mut nl) = net::Netlink::open() {
                    if let Err(e) = apply_lease(&mut nl, index, &l) {
                        warn!("applying the renewed lease: {}", chain(&e));
                    }
                }
                info!(address = %l.address, lease_secs = l.lease_secs, "DHCP lease renewed");
                lease = l;
                wait = Duration::from_secs(u64::from(lease.lease_secs / 2).max(30));
            }
            Err(e) => {
                warn!("DHCP renewal: {}", chain(&e));
                wait = Duration::from_secs(60);
            }
        }
    }
}

struct Running {
    pid: Pid,
    started: Instant,
}

fn spawn_daemon(cfg: &NodeConfig) -> Option<Running> {
    let args = cfg.daemon_args(DATA_DIR, KUBECONFIG);
    let _ = std::fs::create_dir_all("/etc/k3rs");
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    info!(exe = %exe.display(), args = %args.iter().map(|a| if a.starts_with("--token=") { "--token=***" } else { a.as_str() }).collect::<Vec<_>>().join(" "), "k3rs-init: starting the node daemon");
    let mut cmd = command(&exe);
    cmd.args(&args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root");
    if let Some((stdout, stderr)) = daemon_output() {
        // A pipe is not a terminal, but colour codes would still land in the file.
        cmd.stdout(stdout).stderr(stderr).env("NO_COLOR", "1");
    }
    match cmd.spawn() {
        Ok(child) => {
            let _ = std::fs::create_dir_all("/run/k3rs");
            if let Err(e) = std::fs::write(NODE_PID_FILE, format!("{}\n", child.id())) {
                warn!(error = %e, "writing {NODE_PID_FILE} failed");
            }
            Some(Running {
                pid: Pid::from_raw(child.id() as i32),
                started: Instant::now(),
            })
        }
        Err(e) => {
            error!(error = %e, "starting the node daemon failed");
            None
        }
    }
}

/// The API answers `/readyz` (see [`crate::readiness`]); the kubeconfig appears once the server
/// wrote its certificates, so until then there is nothing to ask.
fn api_ready() -> bool {
    if !Path::new(KUBECONFIG).exists() {
        return false;
    }
    match readiness::api_ready(Path::new(KUBECONFIG), API_PORT, API_PROBE_TIMEOUT) {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "k3rs-init: API not ready yet");
            false
        }
    }
}

fn supervise(
    cfg: &NodeConfig,
    signals: &SigSet,
    mounted: &[PathBuf],
    mut trial: Option<Trial>,
) -> ! {
    let mut backoff = Backoff::default();
    let mut child: Option<Running> = None;
    let mut next_start = Instant::now();
    let mut ready_at: Option<Instant> = None;
    let mut idle_reported = false;
    loop {
        if child.is_none() && Instant::now() >= next_start {
            child = spawn_daemon(cfg);
            if child.is_none() {
                next_start = Instant::now() + backoff.on_exit(Duration::ZERO);
            }
        }
        let timeout = if ready_at.is_none() && child.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        match wait_signal(signals, timeout) {
            Some(Signal::SIGCHLD) => {
                for (pid, status) in reap() {
                    if child.as_ref().map(|c| c.pid) == Some(pid) {
                        let ran = child
                            .take()
                            .map(|c| c.started.elapsed())
                            .unwrap_or_default();
                        let delay = backoff.on_exit(ran);
                        error!(status = %status, ran_secs = ran.as_secs(), restart_in_secs = delay.as_secs_f32(), restarts = backoff.restarts, "k3rs-init: node daemon exited; restarting");
                        next_start = Instant::now() + delay;
                        ready_at = None;
                        idle_reported = false;
                    }
                }
            }
            Some(Signal::SIGTERM | Signal::SIGPWR | Signal::SIGUSR2) => {
                shutdown(child, Halt::PowerOff, mounted)
            }
            Some(Signal::SIGINT) => shutdown(child, Halt::Reboot, mounted),
            Some(s) => info!(signal = %s, "ignoring signal"),
            None => {}
        }
        if child.is_some() && ready_at.is_none() && api_ready() {
            ready_at = Some(Instant::now());
            let mem = memory_in_use_kib().unwrap_or((0, 0));
            info!(
                uptime = uptime(),
                mem_used_kib = mem.0,
                mem_total_kib = mem.1,
                "k3rs-init: API ready"
            );
            if cfg.print_kubeconfig {
                print_kubeconfig();
            }
        }
        if let Some(t) = &trial {
            if ready_at.is_some() {
                if commit_trial(t) {
                    trial = None;
                }
            } else if Instant::now() >= t.deadline {
                error!(slot = %t.slot, version = %t.version, "k3rs-init: trial boot: the API did not answer in time; rolling back");
                shutdown(child, Halt::Reboot, mounted);
            }
        }
        if let (Some(t), false) = (ready_at, idle_reported) {
            if t.elapsed() >= Duration::from_secs(10) {
                idle_reported = true;
                let mem = memory_in_use_kib().unwrap_or((0, 0));
                info!(
                    mem_used_kib = mem.0,
                    mem_total_kib = mem.1,
                    "k3rs-init: idle memory (MemTotal - MemAvailable, 10s after API ready)"
                );
            }
        }
    }
}

fn print_kubeconfig() {
    use std::io::Write;
    match std::fs::read_to_string(KUBECONFIG) {
        Ok(k) => {
            let block = format!(
                "{KUBECONFIG_BEGIN}\n{}{}{KUBECONFIG_END}\n",
                k,
                if k.ends_with('\n') { "" } else { "\n" }
            );
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(block.as_bytes());
            let _ = out.flush();
        }
        Err(e) => warn!(error = %e, "reading the kubeconfig failed"),
    }
}

/// Reaps every exited child (orphans included).
fn reap() -> Vec<(Pid, String)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, format!("exit code {code}"))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid, format!("killed by {sig}"))),
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}

fn wait_gone(pid: Option<Pid>, max: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < max {
        let reaped = reap();
        match pid {
            Some(p) if reaped.iter().any(|(r, _)| *r == p) => return true,
            Some(_) => {}
            // No pid: wait for every process to go (ECHILD).
            None => {
                if matches!(
                    waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
                    Err(nix::errno::Errno::ECHILD)
                ) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn shutdown(child: Option<Running>, halt: Halt, mounted: &[PathBuf]) -> ! {
    info!(?halt, "k3rs-init: shutting down");
    if let Some(c) = child {
        let _ = kill(c.pid, Signal::SIGTERM);
        if !wait_gone(Some(c.pid), Duration::from_secs(20)) {
            warn!("node daemon did not stop in 20s; killing it");
            let _ = kill(c.pid, Signal::SIGKILL);
            wait_gone(Some(c.pid), Duration::from_secs(2));
        } else {
            info!("k3rs-init: node daemon stopped");
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !wait_gone(None, Duration::from_secs(3)) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        wait_gone(None, Duration::from_secs(1));
    }
    // The log file lives on the data partition: closed before it is unmounted.
    logfile::stop(Duration::from_secs(2));
    nix::unistd::sync();
    let mut clean = true;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounted.iter().rev() {
        // What containers left mounted below it first (detached if still busy).
        for sub in mounts::mounts_below(&mountinfo, m)
            .into_iter()
            .filter(|s| s != m)
        {
            if nix::mount::umount(&sub).is_err() {
                let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Err(e) = nix::mount::umount(m) {
            clean = false;
            warn!(target = %m.display(), error = %e, "unmount failed; remounting read-only");
            let _ = nix::mount::mount(
                None::<&str>,
                m,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    nix::unistd::sync();
    if clean {
        info!("k3rs-init: filesystems unmounted cleanly");
    }
    let how = match halt {
        Halt::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Halt::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    info!(?halt, "k3rs-init: bye");
    let err = nix::sys::reboot::reboot(how);
    error!(error = ?err, "reboot(2) failed; halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `k3rs reboot`: asks PID 1 to stop the node and reboot (what Ctrl-Alt-Del does).
pub fn request_reboot() -> std::io::Result<()> {
    kill(Pid::from_raw(1), Signal::SIGINT).map_err(std::io::Error::from)
}

/// `k3rs poweroff`: asks PID 1 to stop the node and power off.
pub fn request_poweroff() -> std::io::Result<()> {
    kill(Pid::from_raw(1), Signal::SIGTERM).map_err(std::io::Error::from)
}
