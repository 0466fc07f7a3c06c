//! OCI runtime spec generation: a pure function of the container and sandbox configuration,
//! unit-testable without root. Also the security and cgroup vocabulary the kubelet hands the
//! runtime: capabilities add/drop, seccomp profiles, privileged mode, QoS classes and the
//! cgroupfs layout (`/kubepods/<qos>/pod<uid>/<container>`).

use crate::{ContainerConfig, Error, Result, Sandbox};
use oci_spec::runtime::{
    Arch, Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, Mount, MountBuilder, RootBuilder, Spec, UserBuilder,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// containerd's default capability set (what a Kubernetes container gets without securityContext).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability up to `CAP_CHECKPOINT_RESTORE` (40), in bit order: "ALL" and privileged.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The syscalls the `RuntimeDefault` profile refuses, as Docker's/containerd's default profile
/// does: (syscalls, capability that lifts the block, errno). Everything else is allowed (the
/// upstream profile is an allow-list of ~350 syscalls; what it leaves out is this list plus
/// syscalls the kernel does not have). Rows with a capability are refused only when the
/// container does not hold it, as upstream's `includes.caps` rules do.
const SECCOMP_BLOCKED: &[(&[&str], Option<&str>, i32)] = &[
    // Kernel keyring, module loading, kexec, obsolete and NUMA-hostile calls: never.
    (&["add_key", "keyctl", "request_key"], None, libc::EPERM),
    (&["kexec_load", "kexec_file_load"], None, libc::EPERM),
    (
        &[
            "create_module",
            "get_kernel_syms",
            "query_module",
            "nfsservctl",
        ],
        None,
        libc::EPERM,
    ),
    (
        &["uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old"],
        None,
        libc::EPERM,
    ),
    // Namespaces, mounts and other host-wide administration.
    (
        &[
            "mount",
            "mount_setattr",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "name_to_handle_at",
            "fanotify_init",
            "setdomainname",
            "sethostname",
        ],
        Some("CAP_SYS_ADMIN"),
        libc::EPERM,
    ),
    // clone3 cannot be filtered on its flags (they are behind a pointer): ENOSYS makes libc
    // fall back to clone, as upstream does.
    (&["clone3"], Some("CAP_SYS_ADMIN"), libc::ENOSYS),
    (&["bpf"], Some("CAP_BPF"), libc::EPERM),
    (&["perf_event_open"], Some("CAP_PERFMON"), libc::EPERM),
    (
        &["open_by_handle_at"],
        Some("CAP_DAC_READ_SEARCH"),
        libc::EPERM,
    ),
    (&["reboot"], Some("CAP_SYS_BOOT"), libc::EPERM),
    (
        &["init_module", "finit_module", "delete_module"],
        Some("CAP_SYS_MODULE"),
        libc::EPERM,
    ),
    (&["acct"], Some("CAP_SYS_PACCT"), libc::EPERM),
    (
        &[
            "ptrace",
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "userfaultfd",
        ],
        Some("CAP_SYS_PTRACE"),
        libc::EPERM,
    ),
    (&["iopl", "ioperm"], Some("CAP_SYS_RAWIO"), libc::EPERM),
    (
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
        Some("CAP_SYS_TIME"),
        libc::EPERM,
    ),
    (&["vhangup"], Some("CAP_SYS_TTY_CONFIG"), libc::EPERM),
    (
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "move_pages",
        ],
        Some("CAP_SYS_NICE"),
        libc::EPERM,
    ),
    (&["syslog"], Some("CAP_SYSLOG"), libc::EPERM),
];

/// CFS period used for CPU limits (the kubelet's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The seccomp profile of a container (`securityContext.seccompProfile.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter (the kubelet's default without `seccompDefault`).
    #[default]
    Unconfined,
    /// The runtime's default filter ([`SECCOMP_BLOCKED`]).
    RuntimeDefault,
}

/// The security settings of a container (pod and container `securityContext` merged by the
/// kubelet; the container's fields win).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Security {
    /// All capabilities, every host device, no seccomp, writable `/sys`, no masked paths.
    pub privileged: bool,
    /// Capability names with or without `CAP_`, or `ALL`.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    pub seccomp: SeccompProfile,
    /// Stay in the host's PID namespace (`hostPID`).
    pub host_pid: bool,
    /// Stay in the host's IPC namespace (`hostIPC`).
    pub host_ipc: bool,
    /// Namespaced sysctls (`spec.securityContext.sysctls`).
    pub sysctls: Vec<(String, String)>,
}

/// A pod's QoS class, computed as upstream's `GetPodQOS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    #[default]
    BestEffort,
}

impl QosClass {
    /// The name in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The QoS cgroup pods of this class live under (the kubelet's cgroupfs driver layout).
    pub fn parent_cgroup(self) -> &'static Path {
        Path::new(match self {
            QosClass::Guaranteed => "/kubepods",
            QosClass::Burstable => "/kubepods/burstable",
            QosClass::BestEffort => "/kubepods/besteffort",
        })
    }
}

/// The pod-level cgroup of a sandbox: its QoS class and the pod's limits (sums of its
/// containers' limits when all have one; shares from the requests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PodCgroup {
    pub qos: QosClass,
    pub resources: crate::Resources,
}

/// The cgroup of a pod: `/kubepods[/burstable|/besteffort]/pod<uid>`.
pub fn pod_cgroup_path(qos: QosClass, pod_uid: &str) -> PathBuf {
    qos.parent_cgroup().join(format!("pod{pod_uid}"))
}

/// The cgroups path of a container: under its pod's cgroup (`/k3rs/<pod>` for sandboxes created
/// before pod cgroups existed, so adopted containers keep their paths).
pub fn cgroups_path(sandbox: &Sandbox, id: &str) -> PathBuf {
    match &sandbox.cgroup_parent {
        Some(parent) => parent.join(id),
        None => PathBuf::from(format!("/k3rs/{}/{id}", sandbox.pod_uid)),
    }
}

/// The CFS quota of a CPU limit in millicores (at least 1 ms, as the kubelet does).
pub fn cpu_quota_us(millis: u64) -> i64 {
    (millis * CPU_PERIOD_US / 1000).max(1000) as i64
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Spec(e.to_string())
}

fn cap_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability set of a container, as containerd computes it: privileged gets every
/// capability; otherwise the default set, `drop: [ALL]` empties it, then `add` (`ALL` adds
/// every one) and the remaining drops apply. Only capabilities in `available` (a bit mask, the
/// node's own bounding set) are kept: a node that runs without one cannot give it away.
pub fn capabilities(sec: &Security, available: u64) -> BTreeSet<String> {
    let mut caps = requested_capabilities(sec);
    caps.retain(|c| {
        ALL_CAPABILITIES
            .iter()
            .position(|a| a == c)
            .is_none_or(|bit| available & (1 << bit) != 0)
    });
    caps
}

fn requested_capabilities(sec: &Security) -> BTreeSet<String> {
    let all = || ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if sec.privileged {
        return all();
    }
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    let mut caps: BTreeSet<String> = if sec.drop_capabilities.iter().any(is_all) {
        BTreeSet::new()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    if sec.add_capabilities.iter().any(is_all) {
        caps = all();
    } else {
        caps.extend(sec.add_capabilities.iter().map(|c| cap_name(c)));
    }
    for d in sec.drop_capabilities.iter().filter(|d| !is_all(d)) {
        let d = cap_name(d);
        // An explicit add wins over a drop of the same capability.
        if !sec.add_capabilities.iter().any(|a| cap_name(a) == d) {
            caps.remove(&d);
        }
    }
    caps
}

/// The `RuntimeDefault` filter for a container holding `caps`: allow by default, refuse the
/// rows of [`SECCOMP_BLOCKED`] whose capability it lacks.
pub fn runtime_default_seccomp(caps: &BTreeSet<String>) -> Result<LinuxSeccomp> {
    let architectures = if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    };
    let mut syscalls = Vec::new();
    for (names, lifted_by, errno) in SECCOMP_BLOCKED {
        if lifted_by.is_some_and(|c| caps.contains(c)) {
            continue;
        }
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(*errno as u32)
                .build()
                .map_err(spec_err)?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()
        .map_err(spec_err)
}

/// Builds the OCI spec for `cfg` running inside `sandbox`.
pub fn build(sandbox: &Sandbox, cfg: &ContainerConfig) -> Result<Spec> {
    let sec = &cfg.security;
    let mut spec = Spec::default();
    spec.set_hostname(if sandbox.host_network {
        None
    } else {
        Some(sandbox.hostname.clone())
    });
    spec.set_root(Some(
        RootBuilder::default()
            .path(cfg.rootfs.clone())
            .readonly(cfg.readonly_rootfs)
            .build()
            .map_err(spec_err)?,
    ));

    let mut process = spec.process().clone().unwrap_or_default();
    if cfg.args.is_empty() {
        return Err(Error::Spec("container has no command".into()));
    }
    process.set_terminal(Some(cfg.tty));
    process.set_args(Some(cfg.args.clone()));
    process.set_env(Some(
        cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    ));
    process.set_cwd(PathBuf::from(if cfg.cwd.is_empty() {
        "/"
    } else {
        &cfg.cwd
    }));
    process.set_user(
        UserBuilder::default()
            .uid(cfg.user.uid)
            .gid(cfg.user.gid)
            .additional_gids(cfg.user.additional_gids.clone())
            .build()
            .map_err(spec_err)?,
    );
    let cap_names = capabilities(sec, crate::sys::bounding_set());
    let caps: HashSet<Capability> = cap_names
        .iter()
        .map(|c| serde_json::from_value(serde_json::Value::String(c.clone())).map_err(spec_err))
        .collect::<Result<_>>()?;
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            // Empty, as containerd (the builder's default would be three capabilities, and
            // setting them after an empty bounding set fails).
            .inheritable(HashSet::new())
            .ambient(HashSet::new())
            .build()
            .map_err(spec_err)?,
    ));
    process.set_oom_score_adj(cfg.oom_score_adj);
    // Unset rather than false: libcontainer loads seccomp before dropping capabilities only
    // when the field is absent (with `false` the load would fail for lack of CAP_SYS_ADMIN).
    process.set_no_new_privileges(sec.no_new_privileges.then_some(true));
    spec.set_process(Some(process));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    if sec.privileged {
        // A writable /sys and cgroup tree, as runc/containerd give privileged containers.
        for m in &mut mounts {
            if m.destination().starts_with("/sys") {
                if let Some(opts) = m.options().clone() {
                    m.set_options(Some(opts.into_iter().filter(|o| o != "ro").collect()));
                }
            }
        }
    }
    let mut binds: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for (file, dest) in [
        ("resolv.conf", "/etc/resolv.conf"),
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
    ] {
        let src = sandbox.dir.join(file);
        if src.exists() {
            binds.push((src, dest.into(), false));
        }
    }
    for m in &cfg.mounts {
        binds.push((m.source.clone(), m.destination.clone(), m.read_only));
    }
    for (source, destination, ro) in binds {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if ro {
            options.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(source)
                .options(options)
                .build()
                .map_err(spec_err)?,
        );
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(cgroups_path(sandbox, &cfg.id)));
    let ns = |typ: LinuxNamespaceType, path: Option<&PathBuf>| -> Result<LinuxNamespace> {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p.clone());
        }
        b.build().map_err(spec_err)
    };
    // A namespace left out of the list is the shim's, i.e. the host's.
    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)?];
    if !sec.host_pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, None)?);
    }
    if !sandbox.host_network {
        namespaces.push(ns(LinuxNamespaceType::Network, Some(&sandbox.net_ns()))?);
        namespaces.push(ns(LinuxNamespaceType::Uts, Some(&sandbox.uts_ns()))?);
    }
    if !sec.host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, Some(&sandbox.ipc_ns()))?);
    }
    linux.set_namespaces(Some(namespaces));
    if !sec.sysctls.is_empty() {
        linux.set_sysctl(Some(sec.sysctls.iter().cloned().collect()));
    }
    if sec.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        linux.set_devices(Some(crate::sys::host_devices()));
    } else if sec.seccomp == SeccompProfile::RuntimeDefault {
        linux.set_seccomp(Some(runtime_default_seccomp(&cap_names)?));
    }

    let r = &cfg.resources;
    let mut res = LinuxResourcesBuilder::default();
    if let Some(limit) = r.memory_limit_bytes {
        // No swap: memory+swap = memory.
        res = res.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(spec_err)?,
        );
    }
    if r.cpu_limit_millis.is_some() || r.cpu_shares.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(m) = r.cpu_limit_millis {
            cpu = cpu.quota(cpu_quota_us(m)).period(CPU_PERIOD_US);
        }
        if let Some(s) = r.cpu_shares {
            cpu = cpu.shares(s);
        }
        res = res.cpu(cpu.build().map_err(spec_err)?);
    }
    if let Some(p) = r.pids_limit {
        res = res.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(spec_err)?,
        );
    }
    let mut built = res.build().map_err(spec_err)?;
    if sec.privileged {
        // Every device, read/write/mknod.
        built.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()
            .map_err(spec_err)?]));
    } else if let Some(old) = linux.resources() {
        // Keep the default device cgroup rules (libcontainer allows the standard devices).
        built.set_devices(old.devices().clone());
    }
    linux.set_resources(Some(built));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mount as CMount, Resources};

    fn sandbox() -> Sandbox {
        Sandbox {
            pod_uid: "pod1".into(),
            dir: PathBuf::from("/nonexistent/pod1"),
            hostname: "web".into(),
            host_network: false,
            cgroup_parent: Some(pod_cgroup_path(QosClass::Burstable, "pod1")),
        }
    }

    fn config(security: Security) -> ContainerConfig {
        ContainerConfig {
            id: "c".into(),
            args: vec!["true".into()],
            security,
            ..Default::default()
        }
    }

    fn spec_caps(spec: &Spec) -> BTreeSet<String> {
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        caps.effective()
            .clone()
            .unwrap()
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn spec_has_cgroup_path_namespaces_and_limits() {
        let cfg = ContainerConfig {
            id: "c1".into(),
            rootfs: "/r".into(),
            args: vec!["/bin/sh".into()],
            env: vec![("A".into(), "b".into())],
            mounts: vec![CMount {
                source: "/src".into(),
                destination: "/dst".into(),
                read_only: true,
            }],
            resources: Resources {
                memory_limit_bytes: Some(64 << 20),
                cpu_limit_millis: Some(500),
                cpu_shares: Some(512),
                pids_limit: Some(100),
            },
            ..Default::default()
        };
        let spec = build(&sandbox(), &cfg).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some("/kubepods/burstable/podpod1/c1".as_ref())
        );
        let nss = linux.namespaces().as_ref().unwrap();
        let net = nss
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            net.path().as_deref(),
            Some("/nonexistent/pod1/ns/net".as_ref())
        );
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(res.pids().unwrap().limit(), 100);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.env().as_ref().unwrap(), &vec!["A=b".to_string()]);
        assert_eq!(p.terminal(), Some(false));
        // Absent, not false: see build().
        assert_eq!(p.no_new_privileges(), None);
        assert!(linux.seccomp().is_none());
        let m = spec.mounts().as_ref().unwrap();
        assert!(m.iter().any(|m| m.destination() == &PathBuf::from("/dst")
            && m.options().as_ref().unwrap().contains(&"ro".to_string())));
    }

    #[test]
    fn cgroup_paths_follow_the_qos_class() {
        assert_eq!(
            pod_cgroup_path(QosClass::Guaranteed, "u1"),
            PathBuf::from("/kubepods/podu1")
        );
        assert_eq!(
            pod_cgroup_path(QosClass::Burstable, "u1"),
            PathBuf::from("/kubepods/burstable/podu1")
        );
        assert_eq!(
            pod_cgroup_path(QosClass::BestEffort, "u1"),
            PathBuf::from("/kubepods/besteffort/podu1")
        );
        let mut sb = sandbox();
        assert_eq!(
            cgroups_path(&sb, "c"),
            PathBuf::from("/kubepods/burstable/podpod1/c")
        );
        // A sandbox from before pod cgroups keeps the old layout.
        sb.cgroup_parent = None;
        assert_eq!(cgroups_path(&sb, "c"), PathBuf::from("/k3rs/pod1/c"));
    }

    #[test]
    fn host_network_drops_net_and_uts() {
        let mut sb = sandbox();
        sb.host_network = true;
        let spec = build(&sb, &config(Security::default())).unwrap();
        let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!nss.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(nss.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert!(spec.hostname().is_none());
    }

    #[test]
    fn host_pid_and_ipc_leave_out_their_namespaces() {
        let spec = build(
            &sandbox(),
            &config(Security {
                host_pid: true,
                host_ipc: true,
                ..Default::default()
            }),
        )
        .unwrap();
        let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!nss.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert!(!nss.iter().any(|n| n.typ() == LinuxNamespaceType::Ipc));
        assert!(nss.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    }

    fn capabilities_all(sec: &Security) -> BTreeSet<String> {
        capabilities(sec, u64::MAX)
    }

    #[test]
    fn capabilities_are_limited_to_the_nodes_bounding_set() {
        let privileged = Security {
            privileged: true,
            ..Default::default()
        };
        // Without CAP_SYS_RESOURCE (bit 24), as in some sandboxes.
        let caps = capabilities(&privileged, 0x1ff_feff_ffff);
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains("CAP_SYS_RESOURCE"));
    }

    #[test]
    fn capabilities_add_and_drop_like_containerd() {
        let sec = |add: &[&str], drop: &[&str]| Security {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let default: BTreeSet<String> =
            DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        assert_eq!(capabilities_all(&sec(&[], &[])), default);
        let added = capabilities_all(&sec(&["NET_ADMIN"], &["KILL", "cap_chown"]));
        assert!(added.contains("CAP_NET_ADMIN"));
        assert!(!added.contains("CAP_KILL") && !added.contains("CAP_CHOWN"));
        assert_eq!(added.len(), default.len() - 1);
        assert!(capabilities_all(&sec(&[], &["ALL"])).is_empty());
        assert_eq!(
            capabilities_all(&sec(&["NET_BIND_SERVICE"], &["all"])),
            BTreeSet::from(["CAP_NET_BIND_SERVICE".to_string()])
        );
        assert_eq!(
            capabilities_all(&sec(&["ALL"], &[])).len(),
            ALL_CAPABILITIES.len()
        );
        let privileged = Security {
            privileged: true,
            ..sec(&[], &["ALL"])
        };
        assert_eq!(capabilities_all(&privileged).len(), 41);
        // Every name is one oci-spec knows.
        let spec = build(&sandbox(), &config(privileged.clone())).unwrap();
        assert_eq!(
            spec_caps(&spec),
            capabilities(&privileged, crate::sys::bounding_set())
        );
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert_eq!(caps.inheritable().as_ref().map(|c| c.len()), Some(0));
        assert_eq!(caps.ambient().as_ref().map(|c| c.len()), Some(0));
    }

    #[test]
    fn runtime_default_seccomp_blocks_by_capability() {
        let spec = build(
            &sandbox(),
            &config(Security {
                seccomp: SeccompProfile::RuntimeDefault,
                no_new_privileges: true,
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        let blocked = |seccomp: &LinuxSeccomp, name: &str| {
            seccomp.syscalls().as_ref().unwrap().iter().any(|s| {
                s.names().iter().any(|n| n == name)
                    && s.action() == LinuxSeccompAction::ScmpActErrno
            })
        };
        for name in [
            "mount", "unshare", "keyctl", "ptrace", "reboot", "bpf", "clone3",
        ] {
            assert!(blocked(&seccomp, name), "{name} not blocked");
        }
        assert!(!blocked(&seccomp, "read"));
        // Holding CAP_SYS_ADMIN lifts the mount/namespace rows, not the keyring.
        let admin =
            runtime_default_seccomp(&BTreeSet::from(["CAP_SYS_ADMIN".to_string()])).unwrap();
        assert!(!blocked(&admin, "mount") && !blocked(&admin, "unshare"));
        assert!(blocked(&admin, "keyctl"));
    }

    #[test]
    fn privileged_gets_devices_writable_sys_and_no_seccomp() {
        let spec = build(
            &sandbox(),
            &config(Security {
                privileged: true,
                seccomp: SeccompProfile::RuntimeDefault,
                ..Default::default()
            }),
        )
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().is_none());
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(devices.iter().any(|d| d.allow() && d.typ().is_none()));
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()));
    }

    #[test]
    fn sysctls_and_readonly_root() {
        let mut cfg = config(Security {
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "0".into())],
            ..Default::default()
        });
        cfg.readonly_rootfs = true;
        let spec = build(&sandbox(), &cfg).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let sysctl = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(sysctl["net.ipv4.ip_unprivileged_port_start"], "0");
    }
}
