//! The x86_64 appliance end to end: build the image (reused when its inputs are unchanged), boot
//! it under QEMU (TCG here), drive the API from the host with the real kubectl through hostfwd:
//! a Deployment from an image imported through the airgap path (the seed's `images/`), the node
//! daemon killed inside the guest and restarted by PID 1, the clock checked against an SNTP
//! responder on the host; power off through ACPI, grow the disk, boot again and find the data
//! kept and the data partition grown. A second test boots the qcow2 output with broken
//! user-data and a static network-config. Needs the static k3rs and the host tools:
//! `bash tests/prepare-appliance.sh` (tests/run.sh calls it).

use anyhow::{bail, Context, Result};
use k3rs_qemu::{appliance, Vm};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// An SNTP server on the host's loopback, which the guest reaches as 10.0.2.2 (QEMU user
/// networking): answers with the host clock and counts requests. Stops when dropped.
struct SntpResponder {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl SntpResponder {
    fn start() -> Result<Self> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let port = sock.local_addr()?.port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 48 || buf[0] & 7 != 3 {
                    continue;
                }
                r.fetch_add(1, Ordering::Relaxed);
                let now = k3rs_init::sntp::NtpTimestamp::from_system(std::time::SystemTime::now());
                let mut reply = [0u8; 48];
                reply[0] = 4 << 3 | 4; // version 4, server
                reply[1] = 1; // stratum 1
                reply[12..16].copy_from_slice(b"LOCL");
                reply[24..32].copy_from_slice(&buf[40..48]); // originate = their transmit
                for at in [16, 32, 40] {
                    reply[at..at + 4].copy_from_slice(&now.secs.to_be_bytes());
                    reply[at + 4..at + 8].copy_from_slice(&now.frac.to_be_bytes());
                }
                let _ = sock.send_to(&reply, peer);
            }
        });
        Ok(SntpResponder {
            port,
            requests,
            stop,
        })
    }
}

impl Drop for SntpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Polls a jsonpath until it prints `want`.
fn wait_jsonpath(kc: &Path, args: &[&str], want: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(out) = kubectl(kc, args) {
            if out.trim() == want {
                return Ok(());
            }
            last = out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("kubectl {args:?}: wanted {want:?}, last saw {last:?}")
}

const AIRGAP_PHASE: &[&str] = &[
    "get",
    "pods",
    "-l",
    "app=airgap",
    "-o",
    "jsonpath={.items[*].status.phase}",
];

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
    let sntp = SntpResponder::start()?;
    let busybox = dir.path().join("busybox.tar");
    k3rs_e2e::images::write_busybox_archive(&busybox, "appliance")?;
    let seed = dir.path().join("seed.img");
    k3rs_qemu::make_nocloud_seed_with(
        &seed,
        &k3rs_qemu::Seed {
            images: vec![busybox],
            ..k3rs_qemu::Seed::new(
                &appliance::test_user_data(&format!(
                    "  ntp-servers: [\"10.0.2.2:{}\"]\n",
                    sntp.port
                )),
                "instance-id: appliance-test\n",
            )
        },
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
    assert!(
        vm.console().contains("airgap images from the NoCloud seed"),
        "the seed's images/ should be copied to the airgap directory"
    );
    let sntp_line = vm
        .console_lines()
        .into_iter()
        .map(|(_, l)| l)
        .find(|l| l.contains("k3rs-init: SNTP: clock"))
        .context("no SNTP line on the console")?;
    assert!(
        sntp_line.contains(&format!("server=10.0.2.2:{}", sntp.port)),
        "{sntp_line}"
    );
    assert!(sntp.requests.load(Ordering::Relaxed) >= 1);
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

    // A Deployment from the airgap image (never pulled: the guest has no registry to reach).
    kubectl(
        &kc,
        &[
            "create",
            "deployment",
            "airgap",
            "--image=busybox:appliance",
            "--",
            "sleep",
            "100000",
        ],
    )?;
    let t = Instant::now();
    wait_jsonpath(&kc, AIRGAP_PHASE, "Running", Duration::from_secs(180))?;
    eprintln!(
        "airgap Deployment pod Running {:.1}s after create",
        t.elapsed().as_secs_f64()
    );

    // Kill the node daemon from inside the guest: a hostPID pod SIGKILLs the pid PID 1 wrote.
    let from = vm.console_lines().len();
    let killer = dir.path().join("killer.yaml");
    std::fs::write(
        &killer,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: killer\nspec:\n  hostPID: true\n  restartPolicy: Never\n  containers:\n  - name: kill\n    image: busybox:appliance\n    command: [\"sh\", \"-c\", \"kill -9 $(cat /host-run/node.pid)\"]\n    volumeMounts:\n    - {name: run, mountPath: /host-run}\n  volumes:\n  - name: run\n    hostPath: {path: /run/k3rs}\n",
    )?;
    kubectl(&kc, &["apply", "-f", killer.to_str().context("path")?])?;
    let (died_at, died, died_idx) = vm.wait_for_console_line_after(
        "node daemon exited; restarting",
        from,
        Duration::from_secs(120),
    )?;
    assert!(died.contains("SIGKILL"), "{died}");
    let (back_at, _, _) =
        vm.wait_for_console_line_after("k3rs-init: API ready", died_idx, BOOT_TIMEOUT)?;
    eprintln!(
        "node daemon killed at {:.1}s, API back at {:.1}s",
        died_at.as_secs_f64(),
        back_at.as_secs_f64()
    );
    // The restarted daemon serves the same cluster; the pod kept running through it.
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
    wait_jsonpath(&kc, AIRGAP_PHASE, "Running", Duration::from_secs(60))?;
    power_off(&mut vm)?;
    drop(vm);

    // The disk grows by 1 GiB while powered off, as `qemu-img resize` users do.
    let grown = built.disk_bytes + (1 << 30);
    k3rs_qemu::resize(&disk, grown)?;

    // Boot 2: same disk; the data partition is reused (and grown), the ConfigMap is still
    // there, the airgap image is still in the store.
    let mut vm = appliance::boot(&built, &disk, Some(&seed))?;
    let (kc, ready) = api_kubeconfig(&mut vm, dir.path(), 0)?;
    eprintln!("boot 2: API ready at {:.1}s", ready.as_secs_f64());
    assert!(
        !vm.console().contains("first boot: creating ext4"),
        "boot 2 must not format again"
    );
    assert!(
        vm.console()
            .contains("k3rs-init: data partition grown to fill the disk"),
        "boot 2 should grow the data partition into the resized disk"
    );
    assert!(
        vm.console()
            .contains("k3rs-init: data filesystem grown online"),
        "boot 2 should grow the ext4 on the data partition"
    );
    assert!(
        !vm.console().contains("airgap images from the NoCloud seed"),
        "archives already copied are not copied again"
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
    wait_jsonpath(&kc, AIRGAP_PHASE, "Running", Duration::from_secs(180))?;
    power_off(&mut vm)?;
    eprintln!(
        "appliance scenario took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sha256_hex(p: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(p).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Boots the qcow2 output (checked reproducible: two conversions, same bytes) from slot B
/// (squashfs) with broken user-data and a static network-config (QEMU user networking's
/// addresses): the error is reported, the node boots with defaults, reachable over the static
/// address.
#[test]
fn broken_user_data_is_reported_and_the_node_still_boots() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let built = image()?;
    let dir = tempfile::Builder::new()
        .prefix("k3rs-appliance-")
        .tempdir()?;
    let disk = dir.path().join("disk.qcow2");
    let again = dir.path().join("again.qcow2");
    k3rs_image::convert_to_qcow2(&built.disk, &disk)?;
    k3rs_image::convert_to_qcow2(&built.disk, &again)?;
    assert_eq!(
        sha256_hex(&disk)?,
        sha256_hex(&again)?,
        "qcow2 output is not reproducible"
    );
    eprintln!(
        "qcow2: {:.1} MiB (raw {:.1} MiB allocated)",
        std::fs::metadata(&disk)?.len() as f64 / 1048576.0,
        k3rs_image::allocated_bytes(&built.disk) as f64 / 1048576.0
    );
    std::fs::remove_file(&again)?;
    let seed = dir.path().join("seed.img");
    k3rs_qemu::make_nocloud_seed_with(
        &seed,
        &k3rs_qemu::Seed {
            network_config: Some(
                "version: 2\nethernets:\n  eth0:\n    addresses: [10.0.2.15/24]\n    gateway4: 10.0.2.2\n    nameservers:\n      addresses: [10.0.2.3]\n".into(),
            ),
            ..k3rs_qemu::Seed::new(
                "#cloud-config\nk3rs:\n  role: [unclosed\n",
                "instance-id: broken\n",
            )
        },
    )?;
    let mut vm = appliance::boot_with(&built, &disk, Some(&seed), "k3rs.slot=B")?;
    vm.wait_for_console_line("switching to root slot slot=B", BOOT_TIMEOUT)?;
    let (_, line) = vm.wait_for_console_line("CONFIG ERROR", BOOT_TIMEOUT)?;
    assert!(line.contains("user-data"), "{line}");
    let (_, line) = vm.wait_for_console_line("k3rs-init: static network", BOOT_TIMEOUT)?;
    assert!(line.contains("address=10.0.2.15"), "{line}");
    assert!(!vm.console().contains("DHCP lease"));
    // Defaults: a single-node server, no kubeconfig printed.
    vm.wait_for_console_line("k3rs-init: API ready", BOOT_TIMEOUT)?;
    assert!(!vm.console().contains(k3rs_init::KUBECONFIG_BEGIN));
    // Reachable through the statically configured interface (hostfwd goes to 10.0.2.15).
    let port = vm.host_port(6443).context("no hostfwd")?;
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{out:?}");
    power_off(&mut vm)
}

/// The generic arm64 UEFI image under `qemu-system-aarch64 -M virt` (TCG): builds from the
/// cross-built static k3rs and waits for the API. Opt-in (`K3RS_TEST_ARM64=1`; the cross build
/// of k3rs takes longer than the rest of CI): `K3RS_APPLIANCE_ARM64=1 bash
/// tests/prepare-appliance.sh` builds the binary. Skips with a message when it is missing.
#[test]
fn arm64_image_boots_under_qemu_virt() -> Result<()> {
    if std::env::var_os("K3RS_TEST_ARM64").is_none() {
        eprintln!("skipped: set K3RS_TEST_ARM64=1 (after K3RS_APPLIANCE_ARM64=1 bash tests/prepare-appliance.sh)");
        return Ok(());
    }
    let k3rs = appliance::static_k3rs_arm64();
    if !k3rs.exists() {
        eprintln!(
            "skipped: {} is missing (K3RS_APPLIANCE_ARM64=1 bash tests/prepare-appliance.sh could not build it?)",
            k3rs.display()
        );
        return Ok(());
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = appliance::target_dir().join("appliance/arm64-uefi.img");
    std::fs::create_dir_all(out.parent().expect("parent"))?;
    let t = Instant::now();
    let built = k3rs_image::build(&appliance::arm64_options(&out)?)?;
    eprintln!(
        "arm64 image: {:.1} MiB allocated, {} in {:.1}s",
        k3rs_image::allocated_bytes(&built.disk) as f64 / 1048576.0,
        if built.reused { "reused" } else { "built" },
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::Builder::new()
        .prefix("k3rs-appliance-arm64-")
        .tempdir()?;
    let disk = dir.path().join("disk.qcow2");
    k3rs_qemu::overlay(&built.disk, &disk)?;
    let seed = dir.path().join("seed.img");
    k3rs_qemu::make_nocloud_seed(
        &seed,
        &appliance::test_user_data(""),
        "instance-id: arm64\n",
    )?;
    let mut vm = appliance::boot_arm64(&built, &disk, Some(&seed))?;
    let (pid1, _) = vm.wait_for_console_line("k3rs-init: PID 1 started", BOOT_TIMEOUT)?;
    vm.wait_for_console_line("switching to root slot slot=A", BOOT_TIMEOUT)?;
    let (kc, ready) = api_kubeconfig(&mut vm, dir.path(), 0)?;
    eprintln!(
        "arm64 boot: PID 1 at {:.1}s, API ready at {:.1}s",
        pid1.as_secs_f64(),
        ready.as_secs_f64()
    );
    let nodes = kubectl(
        &kc,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.nodeInfo.architecture}",
        ],
    )?;
    assert_eq!(nodes.trim(), "arm64", "{nodes}");
    vm.kill();
    Ok(())
}
