//! The x86_64 appliance end to end: build the image (reused when its inputs are unchanged), boot
//! it under QEMU (TCG here), drive the API from the host with the real kubectl through hostfwd,
//! power off through ACPI, boot again and find the data kept. Needs the static k3rs and the host
//! tools: `bash tests/prepare-appliance.sh` (tests/run.sh calls it).

use anyhow::{bail, Context, Result};
use k3rs_qemu::{appliance, Vm};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// QEMU under TCG wants both cores: one VM at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static IMAGE: OnceLock<Result<k3rs_image::BuildOutput, String>> = OnceLock::new();

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn image() -> Result<k3rs_image::BuildOutput> {
    IMAGE
        .get_or_init(|| {
            (|| -> Result<k3rs_image::BuildOutput> {
                for tool in ["qemu-system-x86_64", "qemu-img", "sgdisk", "mkfs.erofs", "mksquashfs", "mkfs.vfat", "mcopy", "depmod", "xz"] {
                    if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| !o.status.success()).unwrap_or(true) {
                        bail!("{tool} is not installed: run `bash tests/prepare-appliance.sh`");
                    }
                }
                let k3rs = appliance::static_k3rs();
                if !k3rs.exists() {
                    bail!("{} is missing: run `bash tests/prepare-appliance.sh` (static release build)", k3rs.display());
                }
                let out = appliance::target_dir().join("appliance/x86_64-uefi.img");
                std::fs::create_dir_all(out.parent().expect("parent"))?;
                let t = Instant::now();
                let built = k3rs_image::build(&appliance::x86_64_options(&out)?)?;
                eprintln!(
                    "image: {} ({:.1} MiB allocated, {}) in {:.1}s",
                    built.disk.display(),
                    k3rs_image::allocated_bytes(&built.disk) as f64 / 1048576.0,
                    if built.reused { "reused" } else { "built" },
                    t.elapsed().as_secs_f64()
                );
                Ok(built)
            })()
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("kubectl {args:?} failed: {last}")
}

/// Waits for the API, takes the kubeconfig the guest printed and points it at the forwarded port.
fn api_kubeconfig(vm: &mut Vm, dir: &Path, from: usize) -> Result<(PathBuf, Duration)> {
    let (ready, _, _) =
        vm.wait_for_console_line_after("k3rs-init: API ready", from, BOOT_TIMEOUT)?;
    vm.wait_for_console_line_after(k3rs_init::KUBECONFIG_END, from, Duration::from_secs(10))?;
    let text = vm
        .console_block(k3rs_init::KUBECONFIG_BEGIN, k3rs_init::KUBECONFIG_END)
        .context("no kubeconfig on the console")?;
    let port = vm.host_port(6443).context("no hostfwd")?;
    let text = text.replace(
        "https://127.0.0.1:6443",
        &format!("https://127.0.0.1:{port}"),
    );
    let path = dir.join("kubeconfig.yaml");
    std::fs::write(&path, text)?;
    Ok((path, ready))
}

fn power_off(vm: &mut Vm) -> Result<()> {
    let t = Instant::now();
    let from = vm.console_lines().len();
    vm.system_powerdown()?;
    vm.wait_for_console_line("filesystems unmounted cleanly", Duration::from_secs(60))?;
    let status = vm.wait_exit(Duration::from_secs(30))?;
    if !status.success() {
        bail!("QEMU exited with {status} after power-off");
    }
    eprintln!(
        "ACPI power-off to QEMU exit: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    for (at, line) in &vm.console_lines()[from..] {
        eprintln!("  [{:.1}s] {line}", at.as_secs_f64());
    }
    Ok(())
}

#[test]
fn boots_serves_kubectl_powers_off_and_keeps_data() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let built = image()?;
    let dir = tempfile::Builder::new()
        .prefix("k3rs-appliance-")
        .tempdir()?;
    let disk = dir.path().join("disk.qcow2");
    k3rs_qemu::overlay(&built.disk, &disk)?;
    let seed = dir.path().join("seed.img");
    k3rs_qemu::make_nocloud_seed(
        &seed,
        &appliance::test_user_data(""),
        "instance-id: appliance-test\n",
    )?;

    // Boot 1: first boot formats the data partition; the API comes up; kubectl works.
    let mut vm = appliance::boot(&built, &disk, Some(&seed))?;
    let (pid1, _) = vm.wait_for_console_line("k3rs-init: PID 1 started", BOOT_TIMEOUT)?;
    let (kc, ready) = api_kubeconfig(&mut vm, dir.path(), 0)?;
    eprintln!(
        "boot 1 ({:?}): PID 1 at {:.1}s, API ready at {:.1}s",
        vm.accel,
        pid1.as_secs_f64(),
        ready.as_secs_f64()
    );
    assert!(
        vm.console().contains("first boot: creating ext4"),
        "boot 1 should format the blank data partition"
    );
    assert!(vm.console().contains("config from NoCloud seed"));
    assert!(
        vm.console().contains("switching to root slot slot=A"),
        "boot 1 should run from slot A"
    );
    let ns = kubectl(&kc, &["get", "ns", "-o", "name"])?;
    assert!(
        ns.contains("namespace/default") && ns.contains("namespace/kube-system"),
        "kubectl get ns: {ns}"
    );
    kubectl(
        &kc,
        &[
            "create",
            "configmap",
            "appliance-test",
            "--from-literal=boot=1",
        ],
    )?;
    power_off(&mut vm)?;
    drop(vm);

    // Boot 2: same disk; the data partition is reused and the ConfigMap is still there.
    let mut vm = appliance::boot(&built, &disk, Some(&seed))?;
    let (kc, ready) = api_kubeconfig(&mut vm, dir.path(), 0)?;
    eprintln!("boot 2: API ready at {:.1}s", ready.as_secs_f64());
    assert!(
        !vm.console().contains("first boot: creating ext4"),
        "boot 2 must not format again"
    );
    let v = kubectl(
        &kc,
        &[
            "get",
            "configmap",
            "appliance-test",
            "-o",
            "jsonpath={.data.boot}",
        ],
    )?;
    assert_eq!(v.trim(), "1");
    power_off(&mut vm)?;
    eprintln!(
        "appliance scenario took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Also boots slot B (squashfs) instead of A (erofs).
#[test]
fn broken_user_data_is_reported_and_the_node_still_boots() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let built = image()?;
    let dir = tempfile::Builder::new()
        .prefix("k3rs-appliance-")
        .tempdir()?;
    let disk = dir.path().join("disk.qcow2");
    k3rs_qemu::overlay(&built.disk, &disk)?;
    let seed = dir.path().join("seed.img");
    k3rs_qemu::make_nocloud_seed(
        &seed,
        "#cloud-config\nk3rs:\n  role: [unclosed\n",
        "instance-id: broken\n",
    )?;
    let mut vm = appliance::boot_with(&built, &disk, Some(&seed), "k3rs.slot=B")?;
    vm.wait_for_console_line("switching to root slot slot=B", BOOT_TIMEOUT)?;
    let (_, line) = vm.wait_for_console_line("CONFIG ERROR", BOOT_TIMEOUT)?;
    assert!(line.contains("user-data"), "{line}");
    // Defaults: a single-node server, no kubeconfig printed.
    vm.wait_for_console_line("k3rs-init: API ready", BOOT_TIMEOUT)?;
    assert!(!vm.console().contains(k3rs_init::KUBECONFIG_BEGIN));
    power_off(&mut vm)
}
