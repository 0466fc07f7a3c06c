//! Small Linux helpers: signals, process liveness, cgroups, namespaces, `lo`.

use crate::{io_err, Result};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::fs;
use std::path::{Path, PathBuf};

pub const NAMESPACES: [&str; 3] = ["net", "ipc", "uts"];

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn kill(pid: i32, sig: i32) {
    if pid <= 0 {
        return;
    }
    if let Ok(sig) = Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// True if `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}

/// True if `pid` is alive and is the shim of container `id` (guards against pid reuse).
pub fn is_shim_of(pid: i32, id: &str) -> bool {
    if !process_alive(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => cmd
            .split(|&b| b == 0)
            .any(|arg| arg.ends_with(format!("/containers/{id}").as_bytes())),
        Err(_) => false,
    }
}

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The directories of a cgroup path in every hierarchy (v1: one per controller).
fn cgroup_dirs(rel: &Path) -> Vec<PathBuf> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let base = Path::new("/sys/fs/cgroup");
    if cgroup_v2() {
        return vec![base.join(rel)];
    }
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(base) {
        for e in rd.flatten() {
            let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(true);
            if !is_link {
                out.push(e.path().join(rel));
            }
        }
    }
    out
}

/// Removes a cgroup (an empty one: `rmdir`) from every hierarchy; missing ones are fine.
pub fn remove_cgroup(rel: &Path) {
    for d in cgroup_dirs(rel) {
        if d.exists() {
            if let Err(e) = fs::remove_dir(&d) {
                tracing::warn!(path = %d.display(), error = %e, "removing cgroup");
            }
        }
    }
}

/// Whether the kernel OOM-killed a process in the cgroup (`oom_kill` counter > 0).
pub fn oom_killed(rel: &Path) -> bool {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let file = if cgroup_v2() {
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events")
    } else {
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control")
    };
    fs::read_to_string(file)
        .map(|s| {
            s.lines().any(|l| {
                let mut it = l.split_whitespace();
                it.next() == Some("oom_kill")
                    && it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) > 0
            })
        })
        .unwrap_or(false)
}

/// Unmounts and deletes the bind-mounted namespace files in `ns_dir`.
pub fn unmount_namespaces(ns_dir: &Path) -> Result<()> {
    for ns in NAMESPACES {
        let p = ns_dir.join(ns);
        if p.exists() {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
            fs::remove_file(&p).map_err(io_err(format!("removing {}", p.display())))?;
        }
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into ifr, a valid ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just filled in.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads ifr, a valid ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
