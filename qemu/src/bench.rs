//! `k3rs-appliance-bench`: image size, binary size, boot timings and idle memory of the x86_64
//! appliance under QEMU (TCG here). Needs the static k3rs (see ARCHITECTURE.md).

use anyhow::{bail, Context, Result};
use k3rs_qemu::appliance;
use std::time::{Duration, Instant};

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Polls `kubectl get nodes` through the forwarded port until a node reports Ready.
fn node_ready_at(vm: &mut k3rs_qemu::Vm, work: &std::path::Path) -> Option<Duration> {
    vm.wait_for_console_line(k3rs_init::KUBECONFIG_END, Duration::from_secs(10))
        .ok()?;
    let kc = vm.console_block(k3rs_init::KUBECONFIG_BEGIN, k3rs_init::KUBECONFIG_END)?;
    let port = vm.host_port(6443)?;
    let path = work.join("kubeconfig.yaml");
    std::fs::write(
        &path,
        kc.replace(
            "https://127.0.0.1:6443",
            &format!("https://127.0.0.1:{port}"),
        ),
    )
    .ok()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .args([
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output()
            .ok()?;
        if String::from_utf8_lossy(&out.stdout).contains("True") {
            return Some(vm.since_start());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

fn main() -> Result<()> {
    let k3rs = appliance::static_k3rs();
    if !k3rs.exists() {
        bail!("{} missing: LIBSECCOMP_LINK_TYPE=static RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' cargo build --release -p k3rs --target x86_64-unknown-linux-gnu", k3rs.display());
    }
    let work = appliance::target_dir().join("appliance-bench");
    std::fs::create_dir_all(&work)?;
    let image = appliance::target_dir().join("appliance/x86_64-uefi.img");
    std::fs::create_dir_all(image.parent().unwrap_or(&work))?;
    let t = Instant::now();
    let built =
        k3rs_image::build(&appliance::x86_64_options(&image)?).context("building the image")?;
    let build_time = t.elapsed();
    let disk = work.join("disk.qcow2");
    k3rs_qemu::overlay(&built.disk, &disk)?;
    let seed = work.join("seed.img");
    k3rs_qemu::make_nocloud_seed(
        &seed,
        &appliance::test_user_data(""),
        "instance-id: bench\n",
    )?;
    let mut vm = appliance::boot(&built, &disk, Some(&seed))?;
    let (pid1, pid1_line) = vm.wait_for_console_line("PID 1 started", Duration::from_secs(60))?;
    // The first byte on the serial console (loglevel=4 keeps the kernel quiet until then).
    let first_output = vm.console_lines().first().map(|(t, _)| *t).unwrap_or(pid1);
    let kernel_uptime = pid1_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let (ready, _) = vm.wait_for_console_line("API ready", Duration::from_secs(120))?;
    let node_ready = node_ready_at(&mut vm, &work);
    let (_, idle) = vm.wait_for_console_line("idle memory", Duration::from_secs(60))?;
    let t = Instant::now();
    vm.system_powerdown()?;
    vm.wait_exit(Duration::from_secs(60))?;
    let down = t.elapsed();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    println!(
        "k3rs appliance bench (x86_64, accel {:?}, 2 vCPU, 1 GiB)",
        vm.accel
    );
    println!(
        "  k3rs static binary:       {}",
        mib(std::fs::metadata(&k3rs)?.len())
    );
    println!("  image (apparent):         {}", mib(built.disk_bytes));
    println!(
        "  image (allocated):        {}  (data partition is a hole until first boot)",
        mib(k3rs_image::allocated_bytes(&built.disk))
    );
    println!(
        "  image build:              {}{}",
        secs(build_time),
        if built.reused {
            " (reused, inputs unchanged)"
        } else {
            ""
        }
    );
    println!(
        "  QEMU start -> first console output: {}",
        secs(first_output)
    );
    println!("  kernel uptime at PID 1:   {kernel_uptime:.2}s (guest clock; QEMU start -> kernel entry is the rest)");
    println!("  QEMU start -> PID 1:      {}", secs(pid1));
    println!(
        "  QEMU start -> API ready:  {}  (PID 1 -> API ready {})",
        secs(ready),
        secs(ready - pid1)
    );
    match node_ready {
        Some(t) => println!("  QEMU start -> node Ready: {}", secs(t)),
        None => println!(
            "  QEMU start -> node Ready: not Ready within 60s of API ready (kubectl get nodes)"
        ),
    }
    println!(
        "  idle guest memory:        {}  (MemTotal - MemAvailable, 10s after API ready)",
        mib(field(&idle, "mem_used_kib=") * 1024)
    );
    println!("  ACPI power-off -> exit:   {}", secs(down));
    Ok(())
}
