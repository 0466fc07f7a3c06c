//! OCI runtime spec generation: a pure function of the container and sandbox configuration,
//! unit-testable without root.

use crate::{ContainerConfig, Error, Result, Sandbox};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::HashSet;
use std::path::PathBuf;

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

/// CFS period used for CPU limits (the kubelet's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The cgroups path of a container: `/k3rs/<pod>/<container>` on every controller.
pub fn cgroups_path(pod_uid: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/k3rs/{pod_uid}/{id}"))
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Spec(e.to_string())
}

/// Builds the OCI spec for `cfg` running inside `sandbox`.
pub fn build(sandbox: &Sandbox, cfg: &ContainerConfig) -> Result<Spec> {
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
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| serde_json::from_value(serde_json::Value::String(c.to_string())).map_err(spec_err))
        .collect::<Result<_>>()?;
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()
            .map_err(spec_err)?,
    ));
    process.set_oom_score_adj(cfg.oom_score_adj);
    process.set_no_new_privileges(Some(false));
    spec.set_process(Some(process));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
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
    linux.set_cgroups_path(Some(cgroups_path(&sandbox.pod_uid, &cfg.id)));
    let ns = |typ: LinuxNamespaceType, path: Option<&PathBuf>| -> Result<LinuxNamespace> {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p.clone());
        }
        b.build().map_err(spec_err)
    };
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid, None)?,
        ns(LinuxNamespaceType::Mount, None)?,
    ];
    if !sandbox.host_network {
        namespaces.push(ns(LinuxNamespaceType::Network, Some(&sandbox.net_ns()))?);
        namespaces.push(ns(LinuxNamespaceType::Uts, Some(&sandbox.uts_ns()))?);
    }
    namespaces.push(ns(LinuxNamespaceType::Ipc, Some(&sandbox.ipc_ns()))?);
    linux.set_namespaces(Some(namespaces));

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
            cpu = cpu
                .quota((m * CPU_PERIOD_US / 1000).max(1000) as i64)
                .period(CPU_PERIOD_US);
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
    // Keep the default device cgroup rules (deny all, allow the standard devices).
    if let Some(old) = linux.resources() {
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
        }
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
            Some("/k3rs/pod1/c1".as_ref())
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
        let m = spec.mounts().as_ref().unwrap();
        assert!(m.iter().any(|m| m.destination() == &PathBuf::from("/dst")
            && m.options().as_ref().unwrap().contains(&"ro".to_string())));
    }

    #[test]
    fn host_network_drops_net_and_uts() {
        let mut sb = sandbox();
        sb.host_network = true;
        let cfg = ContainerConfig {
            id: "c".into(),
            args: vec!["true".into()],
            ..Default::default()
        };
        let spec = build(&sb, &cfg).unwrap();
        let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!nss.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(spec.hostname().is_none());
    }
}
