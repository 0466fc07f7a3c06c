//! Small Linux helpers: signals, process liveness, cgroups, namespaces, `lo`, host devices.

use crate::{io_err, Resources, Result};
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

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The v2 controllers a pod cgroup delegates to its containers (those libcontainer sets).
const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// The v1 hierarchies to create a cgroup in: every mounted controller hierarchy, not the
/// named `systemd` one nor the hybrid layout's `unified` (v2) mount.
fn v1_controller_dirs(root: &Path, rel: &Path) -> Vec<(String, PathBuf)> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(true);
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_link && name != "systemd" && name != "unified" {
                out.push((name, e.path().join(rel)));
            }
        }
    }
    out
}

fn write_cgroup_file(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", dir.join(file).display()),
        )
    })
}

/// Writes a pod limit. A file the hierarchy does not have (its controller is not enabled or
/// delegated here: cgroupfs answers EACCES to creating it) is logged and skipped, so a node
/// without, say, the cpu controller still runs pods, as the kubelet does.
fn set_limit(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    match write_cgroup_file(dir, file, value) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            tracing::warn!(error = %e, "cgroup limit not available; not set");
            Ok(())
        }
        r => r,
    }
}

/// cgroup v1 `cpu.shares` → v2 `cpu.weight` (the conversion runc and the kubelet use).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Creates the cgroup `rel` (and its parents) in every hierarchy and sets `limits` on it: the
/// pod-level cgroup its containers' cgroups go under. On v2 the controllers are enabled in
/// `cgroup.subtree_control` from the root down, including `rel` itself (it holds no process,
/// only container cgroups). Existing directories are kept; limits are written again.
pub fn create_cgroup(rel: &Path, limits: &Resources) -> std::io::Result<()> {
    create_cgroup_in(Path::new(CGROUP_ROOT), cgroup_v2(), rel, limits)
}

/// [`create_cgroup`] under the cgroup mount `root` (unit tests use a plain directory).
fn create_cgroup_in(root: &Path, v2: bool, rel: &Path, limits: &Resources) -> std::io::Result<()> {
    let quota = limits.cpu_limit_millis.map(crate::spec::cpu_quota_us);
    if v2 {
        let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<&str> = available
            .split_whitespace()
            .filter(|c| V2_CONTROLLERS.contains(c))
            .collect();
        let mut dir = root.to_path_buf();
        let components = rel.components().filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        });
        for part in components.map(Some).chain(std::iter::once(None)) {
            for c in &enable {
                // One write per controller: one the kernel refuses must not stop the others.
                if let Err(e) = write_cgroup_file(&dir, "cgroup.subtree_control", &format!("+{c}"))
                {
                    tracing::debug!(error = %e, "enabling a cgroup controller");
                }
            }
            let Some(part) = part else { break };
            dir.push(part);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        if let Some(m) = limits.memory_limit_bytes {
            set_limit(&dir, "memory.max", &m.to_string())?;
        }
        if let Some(q) = quota {
            set_limit(
                &dir,
                "cpu.max",
                &format!("{q} {}", crate::spec::CPU_PERIOD_US),
            )?;
        }
        if let Some(s) = limits.cpu_shares {
            set_limit(&dir, "cpu.weight", &shares_to_weight(s).to_string())?;
        }
        if let Some(p) = limits.pids_limit {
            set_limit(&dir, "pids.max", &p.to_string())?;
        }
        return Ok(());
    }
    for (controllers, dir) in v1_controller_dirs(root, rel) {
        fs::create_dir_all(&dir)?;
        let has = |c: &str| controllers.split(',').any(|x| x == c);
        if has("memory") {
            if let Some(m) = limits.memory_limit_bytes {
                set_limit(&dir, "memory.limit_in_bytes", &m.to_string())?;
            }
        }
        if has("cpu") {
            if let Some(q) = quota {
                set_limit(
                    &dir,
                    "cpu.cfs_period_us",
                    &crate::spec::CPU_PERIOD_US.to_string(),
                )?;
                set_limit(&dir, "cpu.cfs_quota_us", &q.to_string())?;
            }
            if let Some(s) = limits.cpu_shares {
                set_limit(&dir, "cpu.shares", &s.to_string())?;
            }
        }
        if has("pids") {
            if let Some(p) = limits.pids_limit {
                set_limit(&dir, "pids.max", &p.to_string())?;
            }
        }
    }
    Ok(())
}

/// Removes the cgroup `rel` and any cgroups left below it (deepest first) from every
/// hierarchy. A cgroup whose last process is still exiting is retried briefly.
pub fn remove_cgroup_tree(rel: &Path) {
    fn remove(dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove(&e.path());
                }
            }
        }
        for attempt in 0..20 {
            match fs::remove_dir(dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if attempt == 19 => {
                    tracing::warn!(path = %dir.display(), error = %e, "removing cgroup")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    for d in cgroup_dirs(rel) {
        if d.exists() {
            remove(&d);
        }
    }
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

/// This process's capability bounding set (`CapBnd` in `/proc/self/status`) as a bit mask;
/// everything when it cannot be read.
pub fn bounding_set() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// Every character and block device under the host's `/dev` (what a privileged container
/// gets, as containerd's `WithDevices` gives it), without the per-container ones (`pts`,
/// `ptmx`, `shm`, `mqueue`) libcontainer makes itself.
pub fn host_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn walk(dir: &Path, out: &mut Vec<oci_spec::runtime::LinuxDevice>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name();
            if ["pts", "shm", "mqueue", "ptmx", "console", ".udev", ".lxc"]
                .iter()
                .any(|n| name == *n)
            {
                continue;
            }
            let Ok(md) = fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = md.file_type();
            if ft.is_dir() {
                walk(&path, out);
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let rdev = md.rdev();
            let dev = LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(libc::major(rdev) as i64)
                .minor(libc::minor(rdev) as i64)
                .file_mode(md.mode() & 0o7777)
                .uid(md.uid())
                .gid(md.gid())
                .build();
            if let Ok(dev) = dev {
                out.push(dev);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Resources {
        Resources {
            memory_limit_bytes: Some(64 << 20),
            cpu_limit_millis: Some(250),
            cpu_shares: Some(256),
            pids_limit: None,
        }
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn v2_pod_cgroup_enables_controllers_down_to_the_pod() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids rdma\n",
        )
        .unwrap();
        let rel = Path::new("/kubepods/burstable/podu1");
        create_cgroup_in(root, true, rel, &limits()).unwrap();
        // Every level down to the pod delegates (the last write is the last controller).
        for dir in [
            "",
            "kubepods",
            "kubepods/burstable",
            "kubepods/burstable/podu1",
        ] {
            assert_eq!(read(root.join(dir).join("cgroup.subtree_control")), "+pids");
        }
        let pod = root.join("kubepods/burstable/podu1");
        assert_eq!(read(pod.join("memory.max")), (64 << 20).to_string());
        assert_eq!(read(pod.join("cpu.max")), "25000 100000");
        assert_eq!(
            read(pod.join("cpu.weight")),
            shares_to_weight(256).to_string()
        );
        // Again (a restarted daemon): existing directories are fine.
        create_cgroup_in(root, true, rel, &limits()).unwrap();
    }

    #[test]
    fn v1_pod_cgroup_in_each_controller_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for h in ["memory", "cpu,cpuacct", "pids", "systemd", "unified"] {
            fs::create_dir(root.join(h)).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        create_cgroup_in(root, false, Path::new("/kubepods/podu2"), &limits()).unwrap();
        let pod = |h: &str| root.join(h).join("kubepods/podu2");
        assert_eq!(
            read(pod("memory").join("memory.limit_in_bytes")),
            (64 << 20).to_string()
        );
        assert_eq!(read(pod("cpu,cpuacct").join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read(pod("cpu,cpuacct").join("cpu.shares")), "256");
        assert!(pod("pids").is_dir());
        assert!(!pod("systemd").exists() && !pod("unified").exists());
    }

    #[test]
    fn shares_map_to_weights_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
