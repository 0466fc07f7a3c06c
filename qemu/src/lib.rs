//! Boots k3rs images under QEMU for people and tests: a builder for the command line (disk,
//! NoCloud seed, user networking with hostfwd, direct kernel boot or UEFI), the serial console
//! captured line by line with arrival times, and QMP for a clean ACPI power-off.
#![forbid(unsafe_code)]

pub mod appliance;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("starting {bin} (run tests/install-appliance-deps.sh)")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no console line containing {pattern:?} within {secs}s; last console lines:\n{tail}")]
    Timeout {
        pattern: String,
        secs: u64,
        tail: String,
    },
    #[error("QEMU exited ({status}) before {pattern:?} appeared; last console lines:\n{tail}")]
    Exited {
        status: String,
        pattern: String,
        tail: String,
    },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("`{cmd}` failed: {stderr}")]
    Tool { cmd: String, stderr: String },
    #[error("board {board} has no [qemu] section")]
    NoQemuSection { board: String },
    #[error("board config: {0}")]
    Board(String),
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, QemuError> {
    r.map_err(|source| QemuError::Io {
        what: what.into(),
        source,
    })
}

/// Accelerator choice. `K3RS_QEMU_ACCEL=kvm|tcg` overrides the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Direct kernel boot: the fastest under TCG (no firmware, no decompression for an ELF vmlinux).
#[derive(Debug, Clone)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// Device tree for boards QEMU has no firmware to supply one (`-M raspi3b`).
    pub dtb: Option<PathBuf>,
}

/// How the boot disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk (/dev/vda): PCs and `-M virt`.
    Virtio,
    /// The board's SD card slot (/dev/mmcblk0): `-M raspi3b`. QEMU wants a power-of-two size.
    Sd,
}

#[derive(Debug, Clone)]
pub struct VmBuilder {
    qemu: String,
    machine: String,
    disk: Option<PathBuf>,
    seed: Option<PathBuf>,
    direct: Option<DirectBoot>,
    uefi: Option<(PathBuf, PathBuf)>,
    memory_mib: u32,
    cpus: u32,
    hostfwd: Vec<u16>,
    accel: Option<Accel>,
    dir: Option<PathBuf>,
    extra: Vec<String>,
    disk_bus: DiskBus,
    nic: String,
    console_serial: usize,
}

impl Default for VmBuilder {
    fn default() -> Self {
        VmBuilder {
            qemu: "qemu-system-x86_64".into(),
            machine: "q35".into(),
            disk: None,
            seed: None,
            direct: None,
            uefi: None,
            memory_mib: 1024,
            cpus: 2,
            hostfwd: Vec::new(),
            accel: None,
            dir: None,
            extra: Vec::new(),
            disk_bus: DiskBus::Virtio,
            nic: "virtio-net-pci".into(),
            console_serial: 0,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(16443)
}

impl VmBuilder {
    pub fn qemu(mut self, bin: &str) -> Self {
        self.qemu = bin.into();
        self
    }
    pub fn machine(mut self, m: &str) -> Self {
        self.machine = m.into();
        self
    }
    /// The boot disk (virtio, /dev/vda).
    pub fn disk(mut self, p: impl Into<PathBuf>) -> Self {
        self.disk = Some(p.into());
        self
    }
    /// A NoCloud seed image (virtio, read-only, /dev/vdb).
    pub fn seed(mut self, p: impl Into<PathBuf>) -> Self {
        self.seed = Some(p.into());
        self
    }
    pub fn direct_boot(mut self, d: DirectBoot) -> Self {
        self.direct = Some(d);
        self
    }
    /// UEFI: firmware code (read-only) and a vars template (copied into the VM dir unless a
    /// copy is already there).
    pub fn uefi(mut self, code: impl Into<PathBuf>, vars_template: impl Into<PathBuf>) -> Self {
        self.uefi = Some((code.into(), vars_template.into()));
        self
    }
    pub fn memory(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }
    /// Forward a free host port on 127.0.0.1 to this guest TCP port; see [`Vm::host_port`].
    pub fn hostfwd(mut self, guest_port: u16) -> Self {
        self.hostfwd.push(guest_port);
        self
    }
    pub fn accel(mut self, a: Accel) -> Self {
        self.accel = Some(a);
        self
    }
    /// Where the console log, QMP socket and firmware vars go (default: a new temp dir).
    pub fn dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.dir = Some(d.into());
        self
    }
    pub fn disk_bus(mut self, b: DiskBus) -> Self {
        self.disk_bus = b;
        self
    }
    /// The network device model (`virtio-net-pci`; `usb-net` on boards without PCI).
    pub fn nic(mut self, model: &str) -> Self {
        self.nic = model.into();
        self
    }
    /// Which of the machine's UARTs is the captured console (0: the first). The Raspberry Pi's
    /// GPIO console is the mini UART, QEMU's second serial port there.
    pub fn console_serial(mut self, index: usize) -> Self {
        self.console_serial = index;
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    fn pick_accel(&self) -> Accel {
        if let Some(a) = self.accel {
            return a;
        }
        match std::env::var("K3RS_QEMU_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        match &self.direct {
            Some(d) if probe_kvm(&self.qemu, &d.kernel) => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }

    pub fn spawn(self) -> Result<Vm, QemuError> {
        let accel = self.pick_accel();
        let (dir, tmp) = match &self.dir {
            Some(d) => {
                io("creating the VM dir", std::fs::create_dir_all(d))?;
                (d.clone(), None)
            }
            None => {
                let t = io(
                    "temp dir",
                    tempfile::Builder::new().prefix("k3rs-vm-").tempdir(),
                )?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let qmp = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let console_path = dir.join("console.log");
        let mut cmd = Command::new(&self.qemu);
        cmd.arg("-machine").arg(format!(
            "{},accel={}",
            self.machine,
            if accel == Accel::Kvm { "kvm" } else { "tcg" }
        ));
        if accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        cmd.args([
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        cmd.args([
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-monitor",
            "none",
        ]);
        for _ in 0..self.console_serial {
            cmd.args(["-serial", "null"]);
        }
        cmd.args([
            "-chardev",
            "stdio,id=con0,signal=off",
            "-serial",
            "chardev:con0",
        ]);
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Some(d) = &self.direct {
            cmd.arg("-kernel")
                .arg(&d.kernel)
                .arg("-initrd")
                .arg(&d.initrd)
                .arg("-append")
                .arg(&d.cmdline);
            if let Some(dtb) = &d.dtb {
                cmd.arg("-dtb").arg(dtb);
            }
        }
        if let Some((code, vars)) = &self.uefi {
            // Like a machine's NVRAM, the vars outlive a boot: a VM started again in the same
            // dir keeps them (boot entries, one-shot boots).
            let v = dir.join("efivars.fd");
            if !v.exists() {
                io("copying the UEFI vars", std::fs::copy(vars, &v))?;
            }
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            ));
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", v.display()));
        }
        if let Some(d) = &self.disk {
            let fmt = if d.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            let bus = match self.disk_bus {
                DiskBus::Virtio => "virtio",
                DiskBus::Sd => "sd",
            };
            cmd.arg("-drive").arg(format!(
                "file={},format={fmt},if={bus},cache=unsafe",
                d.display()
            ));
        }
        if let Some(s) = &self.seed {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                s.display()
            ));
        }
        let mut ports = Vec::new();
        let mut netdev = "user,id=n0".to_string();
        for g in &self.hostfwd {
            let h = free_port();
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
            ports.push((*g, h));
        }
        cmd.arg("-netdev")
            .arg(netdev)
            .arg("-device")
            .arg(format!("{},netdev=n0", self.nic));
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        info!(accel = ?accel, cmd = ?cmd, "starting QEMU");
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            bin: self.qemu.clone(),
            source,
        })?;
        let lines: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
        let log = io(
            "creating the console log",
            std::fs::File::create(&console_path),
        )?;
        let stdout = child.stdout.take().expect("piped stdout");
        let l2 = lines.clone();
        std::thread::spawn(move || capture(stdout, log, l2, started));
        let stderr = child.stderr.take().expect("piped stderr");
        let errlines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                errlines
                    .lock()
                    .expect("lock")
                    .push((started.elapsed(), format!("[qemu stderr] {line}")));
            }
        });
        Ok(Vm {
            child,
            started,
            lines,
            console_path,
            qmp,
            ports,
            accel,
            _tmp: tmp,
            exit: None,
        })
    }
}

fn capture(
    mut out: impl Read,
    mut log: std::fs::File,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    started: Instant,
) {
    let mut buf = [0u8; 4096];
    let mut partial = Vec::new();
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = log.write_all(&buf[..n]);
        for &b in &buf[..n] {
            if b == b'\n' {
                let s = String::from_utf8_lossy(&partial)
                    .trim_end_matches('\r')
                    .to_string();
                lines.lock().expect("lock").push((started.elapsed(), s));
                partial.clear();
            } else {
                partial.push(b);
            }
        }
    }
    if !partial.is_empty() {
        lines.lock().expect("lock").push((
            started.elapsed(),
            String::from_utf8_lossy(&partial).into_owned(),
        ));
    }
}

/// Whether KVM actually runs a guest here: boots the kernel for a few seconds and looks for its
/// banner (on these machines `/dev/kvm` exists but KVM aborts or hangs).
pub fn probe_kvm(qemu: &str, kernel: &Path) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let vm = VmBuilder::default()
        .qemu(qemu)
        .accel(Accel::Kvm)
        .memory(256)
        .cpus(1)
        .direct_boot(DirectBoot {
            kernel: kernel.into(),
            initrd: PathBuf::from("/dev/null"),
            cmdline: "console=ttyS0 panic=-1".into(),
            dtb: None,
        })
        .spawn();
    let ok = match vm {
        Ok(mut vm) => {
            let r = vm
                .wait_for_console_line("Run /init", Duration::from_secs(4))
                .is_ok()
                || vm.console().contains("Kernel panic");
            vm.kill();
            r
        }
        Err(_) => false,
    };
    debug!(ok, "KVM probe");
    ok
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    started: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    console_path: PathBuf,
    qmp: PathBuf,
    ports: Vec<(u16, u16)>,
    pub accel: Accel,
    _tmp: Option<tempfile::TempDir>,
    exit: Option<ExitStatus>,
}

impl Vm {
    pub fn builder() -> VmBuilder {
        VmBuilder::default()
    }

    /// The host port forwarded to `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
    }

    pub fn console_path(&self) -> &Path {
        &self.console_path
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }

    /// Console lines with the time since QEMU started when each arrived.
    pub fn console_lines(&self) -> Vec<(Duration, String)> {
        self.lines.lock().expect("lock").clone()
    }

    /// The last 25 console lines, for failure messages.
    pub fn tail(&self) -> String {
        let l = self.lines.lock().expect("lock");
        l.iter()
            .rev()
            .take(25)
            .rev()
            .map(|(_, s)| format!("  {s}\n"))
            .collect()
    }

    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a console line containing `pattern` (searching from the start of the boot);
    /// returns it and when it arrived (since QEMU started).
    pub fn wait_for_console_line(
        &mut self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<(Duration, String), QemuError> {
        self.wait_for_console_line_after(pattern, 0, timeout)
            .map(|(t, l, _)| (t, l))
    }

    /// Like [`Vm::wait_for_console_line`] but only from line index `from`; also returns the index.
    pub fn wait_for_console_line_after(
        &mut self,
        pattern: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<(Duration, String, usize), QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let l = self.lines.lock().expect("lock");
                if let Some((i, (t, s))) = l
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, (_, s))| s.contains(pattern))
                {
                    return Ok((*t, s.clone(), i));
                }
            }
            if let Some(status) = self.try_exit() {
                std::thread::sleep(Duration::from_millis(200));
                let l = self.lines.lock().expect("lock");
                if let Some((i, (t, s))) = l
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, (_, s))| s.contains(pattern))
                {
                    return Ok((*t, s.clone(), i));
                }
                drop(l);
                return Err(QemuError::Exited {
                    status: status.to_string(),
                    pattern: pattern.into(),
                    tail: self.tail(),
                });
            }
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    pattern: pattern.into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lines strictly between two marker lines (e.g. a kubeconfig the guest prints).
    pub fn console_block(&self, begin: &str, end: &str) -> Option<String> {
        let l = self.lines.lock().expect("lock");
        let b = l.iter().position(|(_, s)| s.contains(begin))?;
        let e = b + l.iter().skip(b).position(|(_, s)| s.contains(end))?;
        Some(l[b + 1..e].iter().map(|(_, s)| format!("{s}\n")).collect())
    }

    fn qmp(&self, command: &str) -> Result<serde_json::Value, QemuError> {
        let s = io("connecting to QMP", UnixStream::connect(&self.qmp))?;
        io(
            "QMP timeout",
            s.set_read_timeout(Some(Duration::from_secs(10))),
        )?;
        let mut r = BufReader::new(io("QMP", s.try_clone())?);
        let mut w = s;
        let read = |r: &mut BufReader<UnixStream>| -> Result<serde_json::Value, QemuError> {
            loop {
                let mut line = String::new();
                io("reading QMP", r.read_line(&mut line))?;
                if line.is_empty() {
                    return Err(QemuError::Qmp("connection closed".into()));
                }
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| QemuError::Qmp(e.to_string()))?;
                if v.get("event").is_none() {
                    return Ok(v);
                }
            }
        };
        read(&mut r)?; // greeting
        io("QMP", w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n"))?;
        read(&mut r)?;
        io(
            "QMP",
            w.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes()),
        )?;
        let v = read(&mut r)?;
        if let Some(e) = v.get("error") {
            return Err(QemuError::Qmp(e.to_string()));
        }
        Ok(v)
    }

    /// ACPI power button (the guest's PID 1 shuts down cleanly and powers off).
    pub fn system_powerdown(&self) -> Result<(), QemuError> {
        self.qmp("system_powerdown").map(|_| ())
    }

    /// Stops QEMU at once.
    pub fn quit(&self) -> Result<(), QemuError> {
        self.qmp("quit").map(|_| ())
    }

    /// QEMU's exit status if it has exited (a guest reboot ends it: it runs with -no-reboot).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for QEMU to exit (e.g. after the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    pattern: "<QEMU exit>".into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run(cmd: &mut Command) -> Result<(), QemuError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| QemuError::Spawn {
        bin: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(QemuError::Tool {
            cmd: shown,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Writes a NoCloud seed: a small vfat volume labelled CIDATA with `user-data` and `meta-data`.
pub fn make_nocloud_seed(out: &Path, user_data: &str, meta_data: &str) -> Result<(), QemuError> {
    make_nocloud_seed_with(out, &Seed::new(user_data, meta_data))
}

/// What goes on a NoCloud seed volume.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub user_data: String,
    pub meta_data: String,
    /// `network-config` (v2), if any.
    pub network_config: Option<String>,
    /// Image archives (`docker save`/OCI tar) put under `images/`: PID 1 copies them to the
    /// node's airgap directory.
    pub images: Vec<PathBuf>,
}

impl Seed {
    pub fn new(user_data: &str, meta_data: &str) -> Self {
        Seed {
            user_data: user_data.into(),
            meta_data: meta_data.into(),
            ..Seed::default()
        }
    }
}

/// Writes a NoCloud seed (vfat, label CIDATA) sized to hold everything in `seed`.
pub fn make_nocloud_seed_with(out: &Path, seed: &Seed) -> Result<(), QemuError> {
    let dir = out.with_extension("seed-files");
    io("seed dir", std::fs::create_dir_all(&dir))?;
    let mut files = vec![
        ("user-data", seed.user_data.as_str()),
        ("meta-data", seed.meta_data.as_str()),
    ];
    if let Some(nc) = &seed.network_config {
        files.push(("network-config", nc.as_str()));
    }
    for (name, text) in &files {
        io(name.to_string(), std::fs::write(dir.join(name), text))?;
    }
    let image_bytes: u64 = seed
        .images
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    // FAT overhead and cluster slack: a quarter extra plus 1 MiB.
    let kib = 1024 + (image_bytes + image_bytes / 4) / 1024;
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "CIDATA"])
        .arg(out)
        .arg(kib.to_string()))?;
    for (name, _) in &files {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(out)
            .arg(dir.join(name))
            .arg(format!("::{name}")))?;
    }
    if !seed.images.is_empty() {
        run(Command::new("mmd").arg("-i").arg(out).arg("::images"))?;
        for img in &seed.images {
            let name = img
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            run(Command::new("mcopy")
                .arg("-i")
                .arg(out)
                .arg(img)
                .arg(format!("::images/{name}")))?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Grows a disk image (raw or qcow2) to `bytes` with `qemu-img resize`, as a user would.
pub fn resize(disk: &Path, bytes: u64) -> Result<(), QemuError> {
    run(Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(disk)
        .arg(bytes.to_string()))
}

/// A copy-on-write qcow2 overlay over a raw base image, so a test never dirties the cached build.
pub fn overlay(base: &Path, out: &Path) -> Result<(), QemuError> {
    let _ = std::fs::remove_file(out);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(out))
}
