//! Container start latency of k3rs-runtime (shim + libcontainer) against `runc run` and
//! `crun run` (Debian's) on the same bundle, and the shim's memory. `k3rs-pod-bench` runs this
//! binary for its runtime comparison. Needs root and /bin/busybox (busybox-static).
//!
//! `cargo run --release -p k3rs-runtime --bin runtime-bench -- [N]` (with `K3RS_BIN=path/to/k3rs` the
//! containers run under that binary's `k3rs shim`, as on a node)

use anyhow::{bail, Context, Result};
use k3rs_runtime::{ContainerConfig, ContainerState, Runtime, SandboxConfig, ShimCommand};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // This binary is also its own shim, so `cargo run --bin runtime-bench` needs nothing else.
    if args.get(1).map(String::as_str) == Some("shim") {
        std::process::exit(k3rs_runtime::shim::main(&args[2..]));
    }
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    if !nix::unistd::geteuid().is_root() {
        bail!("runtime-bench needs root");
    }
    let tmp = tempfile_dir()?;
    let res = run(&tmp, n);
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("k3rs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

fn rootfs(dir: &Path) -> Result<std::path::PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (install busybox-static)")?;
    for a in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    Ok(root)
}

/// `program` in a private mount namespace where /sys/fs/cgroup/unified is unmounted.
fn hybrid_wrapper(program: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "umount /sys/fs/cgroup/unified && exec \"$0\" \"$@\"",
        program,
    ]);
    cmd
}

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "{name:<44} n={:<4} median {:>7.2} ms  p99 {:>7.2} ms  min {:>7.2} ms",
        v.len(),
        ms(p(0.5)),
        ms(p(0.99)),
        ms(v[0])
    );
}

fn kib(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_exit(rt: &Runtime, id: &str) -> Result<ContainerState> {
    loop {
        let s = rt.status(id)?;
        if matches!(s, ContainerState::Exited { .. }) {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn run(dir: &Path, n: usize) -> Result<()> {
    let rootfs = rootfs(dir)?;
    // The shim the node really runs (`k3rs shim`) when K3RS_BIN names the k3rs binary; this
    // binary's own shim mode otherwise.
    let shim = match std::env::var_os("K3RS_BIN") {
        Some(k3rs) => ShimCommand {
            program: k3rs.into(),
            args: vec!["shim".into()],
        },
        None => ShimCommand::current_exe()?,
    };
    println!("shim: {}", shim.program.display());
    let shim_program = shim.program.clone();
    let rt = Runtime::with_shim(dir.join("rt"), shim)?;
    let pod = format!("bench-{}", std::process::id());
    let sb = rt.create_sandbox(
        &pod,
        &SandboxConfig {
            hostname: "bench".into(),
            ..Default::default()
        },
    )?;
    let cfg = |id: String, args: &[&str]| ContainerConfig {
        id,
        rootfs: rootfs.clone(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/bin".into())],
        log_path: dir.join("logs/bench.log"),
        ..Default::default()
    };

    println!("k3rs runtime-bench: {n} runs of /bin/true per runtime, busybox rootfs, 2 namespaces joined");
    let (mut to_running, mut to_exited, mut to_removed) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("k3rs-{i}");
        let t = Instant::now();
        rt.run_container(&sb, &cfg(id.clone(), &["/bin/true"]))?;
        to_running.push(t.elapsed());
        let s = wait_exit(&rt, &id)?;
        to_exited.push(t.elapsed());
        rt.remove(&id)?;
        to_removed.push(t.elapsed());
        if !matches!(s, ContainerState::Exited { code: 0, .. }) {
            bail!("{id}: {s:?}");
        }
    }
    stats("k3rs: run_container returned (started)", to_running);
    stats("k3rs: create -> exited (state file)", to_exited);
    stats("k3rs: create -> exited -> removed", to_removed);

    // runc and crun on the same bundle (same spec: sandbox namespaces, cgroups path).
    for (name, bin) in [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")] {
        if !Path::new(bin).exists() {
            println!("{name}: not installed (tests/install-runtime-deps.sh), skipped");
            continue;
        }
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let version = version
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_string();
        let state_root = dir.join(format!("{name}-state"));
        let mut times = Vec::new();
        // crun refuses cgroup v1 hybrid hosts whose v2 hierarchy has a controller (CI machines:
        // hugetlb): there it runs in a private mount namespace without the v2 mount, so it
        // manages v1 cgroups like runc. The wrapper's own cost is measured and printed.
        let mut wrapped = false;
        let mut i = 0;
        while i < n {
            let id = format!("{name}-{i}-{wrapped}");
            let bundle = dir.join("bundles").join(&id);
            std::fs::create_dir_all(&bundle)?;
            k3rs_runtime::spec::build(&sb, &cfg(id.clone(), &["/bin/true"]))?
                .save(bundle.join("config.json"))?;
            let mut cmd = if wrapped {
                hybrid_wrapper(bin)
            } else {
                Command::new(bin)
            };
            cmd.arg("--root")
                .arg(&state_root)
                .args(["run", "-b"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let t = Instant::now();
            let out = cmd.output()?;
            let elapsed = t.elapsed();
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if name == "crun" && i == 0 && !wrapped && stderr.contains("hybrid") {
                    wrapped = true;
                    continue;
                }
                bail!("{name} run {id}: {}: {stderr}", out.status);
            }
            times.push(elapsed);
            i += 1;
        }
        let label = format!("{name} {version} `{name} run` (create -> exited -> deleted)");
        if wrapped {
            stats(&format!("{label} incl. wrapper"), times);
            let mut overhead = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                hybrid_wrapper("/bin/true").status()?;
                overhead.push(t.elapsed());
            }
            stats("  (of which the unshare -m wrapper alone)", overhead);
        } else {
            stats(&label, times);
        }
    }

    // Memory of one shim supervising a sleeping container.
    let id = "mem".to_string();
    rt.run_container(&sb, &cfg(id.clone(), &["/bin/sleep", "1000"]))?;
    if let Some(pid) = rt.shim_pid(&id)? {
        println!(
            "shim memory (one container): VmRSS {} KiB (anon {} KiB, file {} KiB), Pss {} KiB (binary {})",
            kib(pid, "status", "VmRSS:"),
            kib(pid, "status", "RssAnon:"),
            kib(pid, "status", "RssFile:"),
            kib(pid, "smaps_rollup", "Pss:"),
            shim_program.display()
        );
    }
    // Marginal cost: ten more shims of the same binary share its file pages.
    let mut pss = 0;
    let ids: Vec<String> = (0..10).map(|i| format!("mem-{i}")).collect();
    for id in &ids {
        rt.run_container(&sb, &cfg(id.clone(), &["/bin/sleep", "1000"]))?;
    }
    for id in &ids {
        if let Some(pid) = rt.shim_pid(id)? {
            pss += kib(pid, "smaps_rollup", "Pss:");
        }
    }
    println!(
        "shim memory with 11 containers running: Pss {} KiB per shim",
        (pss + rt
            .shim_pid(&id)?
            .map_or(0, |p| kib(p, "smaps_rollup", "Pss:")))
            / 11
    );
    for id in ids.iter().chain([&id]) {
        rt.stop(id, Duration::ZERO)?;
        rt.remove(id)?;
    }
    rt.remove_sandbox(&pod)?;
    Ok(())
}
