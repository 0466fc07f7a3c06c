//! The early mounts, cgroup2 controller delegation and sysctls.

use crate::sys::{MountFlags, Sys};
use std::path::Path;
use tracing::{info, warn};

/// One early mount: source, target, fstype, flags, data.
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: Option<&'static str>,
}

const NOSUID_NODEV: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: false,
    rdonly: false,
    noatime: false,
};
const NOSUID_NOEXEC: MountFlags = MountFlags {
    nosuid: true,
    nodev: false,
    noexec: true,
    rdonly: false,
    noatime: false,
};

/// In order: a mount's parent is always mounted before it.
pub const EARLY_MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MountFlags::SECURE,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MountFlags::SECURE,
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags {
            nosuid: true,
            ..MountFlags::NONE
        },
        data: Some("mode=0755"),
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID_NOEXEC,
        data: Some("gid=5,mode=620,ptmxmode=666"),
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    Mount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: MountFlags::SECURE,
        data: Some("nsdelegate"),
    },
];

/// Mounts the early filesystems. `EBUSY` (already mounted) counts as success; other failures are
/// logged and skipped so the machine still comes up as far as it can. Returns how many failed.
pub fn mount_early(sys: &dyn Sys) -> usize {
    let mut failed = 0;
    for m in EARLY_MOUNTS {
        let target = Path::new(m.target);
        if let Err(e) = sys.mkdir_all(target) {
            warn!(target = m.target, error = %e, "creating mount point failed");
        }
        match sys.mount(m.source, target, m.fstype, m.flags, m.data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                warn!(target = m.target, fstype = m.fstype, error = %e, "mount failed");
                failed += 1;
            }
        }
    }
    failed
}

/// Enables every available cgroup2 controller for the children of the root cgroup, one at a
/// time so that one refusal does not block the others. Returns the controllers enabled.
pub fn enable_cgroup_controllers(sys: &dyn Sys, root: &Path) -> Vec<String> {
    let available = match sys.read_file(&root.join("cgroup.controllers")) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            warn!(error = %e, "reading cgroup.controllers failed");
            return Vec::new();
        }
    };
    let mut enabled = Vec::new();
    for c in available.split_whitespace() {
        match sys.write_file(
            &root.join("cgroup.subtree_control"),
            format!("+{c}").as_bytes(),
        ) {
            Ok(()) => enabled.push(c.to_string()),
            Err(e) => warn!(controller = c, error = %e, "enabling cgroup controller failed"),
        }
    }
    info!(controllers = %enabled.join(" "), "cgroup2 controllers delegated");
    enabled
}

/// The sysctls a node needs: forwarding, bridge netfilter, inotify limits, overcommit.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.inotify.max_user_watches", "524288"),
    ("vm.overcommit_memory", "1"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.panic", "10"),
];

/// `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes the sysctls; a missing key (module not loaded) is a warning. Returns how many failed.
pub fn apply_sysctls(sys: &dyn Sys, sysctls: &[(&str, &str)]) -> usize {
    let mut failed = 0;
    for (k, v) in sysctls {
        if let Err(e) = sys.write_file(Path::new(&sysctl_path(k)), v.as_bytes()) {
            warn!(key = k, error = %e, "sysctl failed");
            failed += 1;
        }
    }
    failed
}

/// Mount points at or below `under` from `/proc/self/mountinfo` text, deepest first (the order
/// to unmount them in). Containers leave overlay roots, volumes and namespace files mounted below
/// the data directory; the data partition only unmounts once they are gone.
pub fn mounts_below(mountinfo: &str, under: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(under))
        .collect();
    // Later mounts stack on earlier ones at the same point: unmount in reverse mount order,
    // deeper paths before their parents.
    out.reverse();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::FakeSys;

    #[test]
    fn early_mounts_parents_first_and_ebusy_is_fine() {
        let sys = FakeSys::default().failing("mount devtmpfs", libc::EBUSY);
        assert_eq!(mount_early(&sys), 0);
        let mounts: Vec<String> = sys
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount"))
            .collect();
        let pos = |t: &str| {
            mounts
                .iter()
                .position(|m| m.split(' ').nth(2) == Some(t))
                .unwrap()
        };
        assert!(pos("/proc") < pos("/sys"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert_eq!(mounts.len(), EARLY_MOUNTS.len());
    }

    #[test]
    fn a_failed_mount_is_counted_not_fatal() {
        let sys = FakeSys::default().failing("mount cgroup2", libc::ENODEV);
        assert_eq!(mount_early(&sys), 1);
        assert!(sys.calls().iter().any(|c| c.starts_with("mount tmp /tmp")));
    }

    #[test]
    fn cgroup_controllers_enabled_one_by_one() {
        let sys = FakeSys::default()
            .with_file(
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory pids\n",
            )
            .failing(
                "write /sys/fs/cgroup/cgroup.subtree_control +cpuset",
                libc::EBUSY,
            );
        let enabled = enable_cgroup_controllers(&sys, Path::new("/sys/fs/cgroup"));
        assert_eq!(enabled, vec!["cpu", "io", "memory", "pids"]);
    }

    #[test]
    fn mounts_below_deepest_first() {
        let mi = "22 1 254:2 / / ro - erofs /dev/vda2 ro\n\
30 22 254:4 / /var/lib/k3rs rw - ext4 /dev/vda4 rw\n\
31 30 0:40 / /var/lib/k3rs/agent/containers/a/rootfs rw - overlay overlay rw\n\
32 30 0:41 / /var/lib/k3rs/agent/pods/u/volumes/my\\040vol rw - tmpfs tmpfs rw\n\
33 31 0:42 / /var/lib/k3rs/agent/containers/a/rootfs/dev/shm rw - tmpfs shm rw\n\
34 22 0:43 / /var/lib/k3rs-other rw - tmpfs t rw\n\
35 22 0:44 / /run rw - tmpfs run rw\n";
        let m = mounts_below(mi, Path::new("/var/lib/k3rs"));
        let s: Vec<String> = m.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            s,
            vec![
                "/var/lib/k3rs/agent/containers/a/rootfs/dev/shm",
                "/var/lib/k3rs/agent/pods/u/volumes/my vol",
                "/var/lib/k3rs/agent/containers/a/rootfs",
                "/var/lib/k3rs",
            ]
        );
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        let sys = FakeSys::default();
        assert_eq!(apply_sysctls(&sys, &[("vm.overcommit_memory", "1")]), 0);
        assert_eq!(sys.calls(), vec!["write /proc/sys/vm/overcommit_memory 1"]);
    }
}
