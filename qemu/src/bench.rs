//! `k3rs-appliance-bench [BOARD]`: image size, binary size, boot timings and idle memory of an
//! appliance image under QEMU (TCG here). BOARD is a name in `board-configs/` with a `[qemu]`
//! section: `x86_64-uefi` (default), `arm64-uefi` or `rpi3`. Needs the static k3rs of the
//! board's architecture (`bash tests/prepare-appliance.sh`).

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
    let board_name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "x86_64-uefi".into());
    let work = appliance::target_dir().join("appliance-bench");
    std::fs::create_dir_all(&work)?;
    let image = appliance::target_dir().join(format!("appliance/{board_name}.img"));
    std::fs::create_dir_all(image.parent().unwrap_or(&work))?;
    let options = appliance::options_for(&board_name, &image)?;
    let k3rs = options.k3rs_bin.clone();
    if !k3rs.exists() {
        bail!(
            "{} missing: run `bash tests/prepare-appliance.sh` (static release builds)",
            k3rs.display()
        );
    }
    let board = options.board.clone();
    let t = Instant::now();
    let built = k3rs_image::build(&options).context("building the image")?;
    let build_time = t.elapsed();
    let sd_card = board
        .qemu
        .as_ref()
        .is_some_and(|q| q.disk_bus == k3rs_image::board::DiskBus::Sd);
    let (disk, seed) = if sd_card {
        // No second drive on an SD-only board: the config goes on the boot partition.
        let disk = work.join("sd.img");
        appliance::rpi_sd_card(
            &built.disk,
            &disk,
            "role = \"server\"\ntoken = \"bench\"\nprint-kubeconfig = true\nextra-args = [\"--tls-san=127.0.0.1\"]\n",
        )?;
        (disk, None)
    } else {
        let disk = work.join("disk.qcow2");
        k3rs_qemu::overlay(&built.disk, &disk)?;
        let seed = work.join("seed.img");
        k3rs_qemu::make_nocloud_seed(
            &seed,
            &appliance::test_user_data(""),
            "instance-id: bench\n",
        )?;
        (disk, Some(seed))
    };
    let mut vm = appliance::boot_board(&board, &built, &disk, seed.as_deref(), "")?;
    let (pid1, pid1_line) = vm.wait_for_console_line("PID 1 started", Duration::from_secs(60))?;
    // The first byte on the serial console (loglevel=4 keeps the kernel quiet until then).
    let first_output = vm.console_lines().first().map(|(t, _)| *t).unwrap_or(pid1);
    let kernel_uptime = pid1_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let (ready, _) = vm.wait_for_console_line("API ready", Duration::from_secs(300))?;
    let node_ready = node_ready_at(&mut vm, &work);
    let (_, idle) = vm.wait_for_console_line("idle memory", Duration::from_secs(60))?;
    // Only the PC has an ACPI power button QEMU can press (raspi3b merely halts on power-off).
    let down = if board.arch == "x86_64" {
        let t = Instant::now();
        vm.system_powerdown()?;
        vm.wait_exit(Duration::from_secs(60))?;
        Some(t.elapsed())
    } else {
        vm.kill();
        None
    };
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let q = board.qemu.as_ref();
    println!(
        "k3rs appliance bench ({board_name}: {} {}, accel {:?}, {} vCPU, 1 GiB)",
        q.map(|q| q.system.as_str()).unwrap_or(""),
        q.map(|q| q.machine.as_str()).unwrap_or(""),
        vm.accel,
        q.and_then(|q| q.cpus).unwrap_or(2)
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
    if let Some(down) = down {
        println!("  ACPI power-off -> exit:   {}", secs(down));
    }
    Ok(())
}
