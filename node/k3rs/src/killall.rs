//! `k3rs killall`: what K3s's `k3s-killall.sh` does. Stops the node daemon and every container
//! it started, removes their sandboxes and overlay mounts, and takes out of the host everything
//! the node put into it: the `cni0` bridge and pod veths, the nftables tables (`k3rs`,
//! `k3rs-net`, `k3rs-policy`) and the DNS interface. Pod IP allocations go too; the datastore,
//! certificates and images stay, so the next `k3rs server` starts the same cluster again.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub fn run(data_dir: &Path, cluster_dns: std::net::IpAddr) -> Result<()> {
    let mut failures: Vec<String> = Vec::new();
    let mut step = |what: &str, r: Result<()>| match r {
        Ok(()) => info!("{what}: done"),
        Err(e) => {
            warn!("{what}: {e:#}");
            failures.push(format!("{what}: {e:#}"));
        }
    };
    step("stopping k3rs server processes", stop_servers(data_dir));
    let agent = data_dir.join("agent");
    step(
        "removing containers and sandboxes",
        remove_containers(&agent),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    step(
        "removing the pod network",
        k3rs_network::cleanup(
            k3rs_network::BRIDGE,
            &[&agent.join("ipam"), &agent.join("network")],
        )
        .map_err(Into::into),
    );
    step(
        "removing the Services table",
        k3rs_proxy::cleanup(&k3rs_proxy::nft::Nft::new()).map_err(Into::into),
    );
    step(
        "removing the NetworkPolicy table",
        rt.block_on(k3rs_netpol::cleanup()).map_err(Into::into),
    );
    step(
        "removing the DNS interface",
        rt.block_on(k3rs_dns::iface::remove_interface(
            k3rs_dns::iface::INTERFACE,
            cluster_dns,
        ))
        .map_err(Into::into),
    );
    if !failures.is_empty() {
        bail!("killall left things behind:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// SIGTERM to every `k3rs server` of this data dir, SIGKILL to those still there after 10 s.
fn stop_servers(data_dir: &Path) -> Result<()> {
    let me = std::process::id();
    let want = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let servers = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid as u32 != me)
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.first().is_some_and(|p| p.ends_with("k3rs"))
                    && args.get(1).is_some_and(|a| a == "server")
                    && server_data_dir(&args[2..]) == want
            })
            .collect()
    };
    let signal = |pid: i32, sig: rustix::process::Signal| {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    let pids = servers();
    for pid in &pids {
        info!(pid, "stopping k3rs server");
        signal(*pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in servers() {
        warn!(pid, "k3rs server ignored SIGTERM; killing it");
        signal(pid, rustix::process::Signal::KILL);
    }
    Ok(())
}

/// The data dir a `k3rs server` command line uses (flag forms as clap accepts them).
fn server_data_dir(args: &[String]) -> std::path::PathBuf {
    let mut dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--data-dir=") {
            dir = Some(v.to_string());
        } else if a == "--data-dir" || a == "-d" {
            dir = it.next().cloned();
        } else if let Some(v) = a.strip_prefix("-d").filter(|v| !v.is_empty()) {
            dir = Some(v.trim_start_matches('=').to_string());
        }
    }
    let dir = std::path::PathBuf::from(dir.unwrap_or_else(|| "/var/lib/k3rs".into()));
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn remove_containers(agent: &Path) -> Result<()> {
    let containers = agent.join("containers");
    if !containers.exists() {
        return Ok(());
    }
    let runtime = k3rs_runtime::Runtime::new(&containers)
        .with_context(|| format!("opening {}", containers.display()))?;
    let images = k3rs_images::ImageStore::open(agent.join("images-store")).ok();
    let list = runtime.list().context("listing containers")?;
    std::thread::scope(|s| {
        for c in &list {
            let runtime = &runtime;
            s.spawn(move || {
                if let Err(e) = runtime.stop(&c.id, Duration::ZERO) {
                    warn!(id = %c.id, error = %e, "stopping container");
                }
            });
        }
    });
    let mut left = 0;
    for c in &list {
        if let Err(e) = runtime.remove(&c.id) {
            warn!(id = %c.id, error = %e, "removing container");
            left += 1;
        }
        if let Some(images) = &images {
            let _ = images.release_rootfs(&c.id);
        }
    }
    for sb in runtime.list_sandboxes().context("listing sandboxes")? {
        if let Err(e) = runtime.remove_sandbox(&sb.pod_uid) {
            warn!(pod_uid = %sb.pod_uid, error = %e, "removing sandbox");
            left += 1;
        }
    }
    if left > 0 {
        bail!("{left} containers or sandboxes could not be removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_from_a_server_command_line() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = |v: &[&str]| server_data_dir(&args(v));
        assert_eq!(d(&[]), std::path::PathBuf::from("/var/lib/k3rs"));
        assert_eq!(d(&["--data-dir=/x/y"]), std::path::PathBuf::from("/x/y"));
        assert_eq!(
            d(&["--node-ip", "1.2.3.4", "--data-dir", "/x/z"]),
            std::path::PathBuf::from("/x/z")
        );
        assert_eq!(d(&["-d", "/q"]), std::path::PathBuf::from("/q"));
        assert_eq!(d(&["-d/r"]), std::path::PathBuf::from("/r"));
    }
}
