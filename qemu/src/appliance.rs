//! The x86_64 appliance as tests and the benchmark use it: build (or reuse) the image from this
//! workspace and boot it with a NoCloud seed under direct kernel boot.

use crate::{DirectBoot, DiskBus, QemuError, Vm};
use k3rs_image::board::Board;
use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `qemu/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
}

/// Where the static k3rs for the x86_64 image is expected.
pub fn static_k3rs() -> PathBuf {
    target_dir().join("x86_64-unknown-linux-gnu/release/k3rs")
}

/// Where the static k3rs for the arm64 image is expected (see tests/prepare-appliance-arm64.sh).
pub fn static_k3rs_arm64() -> PathBuf {
    target_dir().join("aarch64-unknown-linux-gnu/release/k3rs")
}

/// The image build options for the x86_64-uefi board with this workspace's inputs.
pub fn x86_64_options(
    out: &Path,
) -> Result<k3rs_image::BuildOptions, k3rs_image::board::BoardError> {
    board_options("x86_64-uefi", static_k3rs(), out)
}

/// The image build options for a Raspberry Pi board (`rpi3`, `rpi4`): the same static aarch64
/// k3rs as the arm64 UEFI board.
pub fn rpi_options(
    board: &str,
    out: &Path,
) -> Result<k3rs_image::BuildOptions, k3rs_image::board::BoardError> {
    board_options(board, static_k3rs_arm64(), out)
}

/// The image build options for the generic arm64 UEFI board.
pub fn arm64_options(
    out: &Path,
) -> Result<k3rs_image::BuildOptions, k3rs_image::board::BoardError> {
    board_options("arm64-uefi", static_k3rs_arm64(), out)
}

/// The image build options for any board in `board-configs/` by name, with the static k3rs of
/// its architecture.
pub fn options_for(
    board: &str,
    out: &Path,
) -> Result<k3rs_image::BuildOptions, k3rs_image::board::BoardError> {
    match board {
        "x86_64-uefi" => x86_64_options(out),
        _ => board_options(board, static_k3rs_arm64(), out),
    }
}

fn board_options(
    board: &str,
    k3rs_bin: PathBuf,
    out: &Path,
) -> Result<k3rs_image::BuildOptions, k3rs_image::board::BoardError> {
    let root = workspace_root();
    let board_file = root.join(format!("board-configs/{board}.toml"));
    Ok(k3rs_image::BuildOptions {
        board: k3rs_image::board::Board::load(&board_file)?,
        board_file,
        k3rs_bin,
        rootfs_dir: root.join("rootfs"),
        cache_dir: target_dir().join("appliance-cache"),
        out: out.to_path_buf(),
        source_date_epoch: 1_767_225_600,
        force: false,
        apt_sources: k3rs_image::DEFAULT_APT_SOURCES.to_string(),
    })
}

/// user-data for a single-node server reachable from the host through hostfwd, printing its
/// kubeconfig on the console.
pub fn test_user_data(extra: &str) -> String {
    format!(
        "#cloud-config\nhostname: k3rs-test\nk3rs:\n  role: server\n  token: appliance-test-token\n  print-kubeconfig: true\n  extra-args: [\"--tls-san=127.0.0.1\"]\n{extra}"
    )
}

/// Boots a built image of `board` the way its `[qemu]` section says: direct kernel boot (the
/// ELF `vmlinux` where the build extracted one, else the kernel image as packaged), the board's
/// machine, CPU, disk bus, NIC and console UART, 1 GiB, hostfwd for 6443.
pub fn boot_board(
    board: &Board,
    built: &k3rs_image::BuildOutput,
    disk: &Path,
    seed: Option<&Path>,
    extra_cmdline: &str,
) -> Result<Vm, QemuError> {
    let q = board.qemu.clone().ok_or_else(|| QemuError::NoQemuSection {
        board: board.name.clone(),
    })?;
    let cmdline = format!("{} {extra_cmdline}", built.cmdline)
        .trim()
        .to_string();
    let kernel = if built.vmlinux.exists() {
        built.vmlinux.clone()
    } else {
        built.vmlinuz.clone()
    };
    let mut b = Vm::builder()
        .qemu(&q.system)
        .machine(&q.machine)
        .disk(disk)
        .disk_bus(match q.disk_bus {
            k3rs_image::board::DiskBus::Virtio => DiskBus::Virtio,
            k3rs_image::board::DiskBus::Sd => DiskBus::Sd,
        })
        .console_serial(q.console_serial)
        .direct_boot(DirectBoot {
            kernel,
            initrd: built.initrd.clone(),
            cmdline,
            dtb: built.dtb.clone(),
        })
        .memory(1024)
        .hostfwd(6443);
    if board.arch != std::env::consts::ARCH {
        // KVM cannot run another architecture; skip the probe.
        b = b.accel(crate::Accel::Tcg);
    }
    if let Some(cpu) = &q.cpu {
        b = b.arg("-cpu").arg(cpu);
    }
    if let Some(n) = q.cpus {
        b = b.cpus(n);
    }
    if let Some(nic) = &q.nic {
        b = b.nic(nic);
    }
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.spawn()
}

/// Boots the x86_64 image the way a PC does: OVMF, then systemd-boot from the ESP picks the
/// slot (`loader.conf`, one-shot entries). The firmware vars live in `dir`, so starting again
/// in the same dir is a reboot of the same machine. `drives` are attached read-only after the
/// disk and the seed (virtio: `/dev/vdc`, … with a seed).
pub fn boot_uefi(
    disk: &Path,
    seed: Option<&Path>,
    dir: &Path,
    drives: &[&Path],
) -> Result<Vm, QemuError> {
    let board = load_board("x86_64-uefi")?;
    let q = board.qemu.clone().ok_or_else(|| QemuError::NoQemuSection {
        board: board.name.clone(),
    })?;
    let (Some(code), Some(vars)) = (q.firmware, q.firmware_vars) else {
        return Err(QemuError::Board(
            "x86_64-uefi has no [qemu] firmware/firmware-vars".into(),
        ));
    };
    let mut b = Vm::builder()
        .qemu(&q.system)
        .machine(&q.machine)
        .uefi(code, vars)
        .disk(disk)
        .dir(dir)
        .memory(1024)
        .hostfwd(6443);
    if let Some(n) = q.cpus {
        b = b.cpus(n);
    }
    if let Some(s) = seed {
        b = b.seed(s);
    }
    for d in drives {
        b = b.arg("-drive").arg(&format!(
            "file={},format=raw,if=virtio,readonly=on",
            d.display()
        ));
    }
    b.spawn()
}

fn load_board(name: &str) -> Result<Board, QemuError> {
    let path = workspace_root().join(format!("board-configs/{name}.toml"));
    Board::load(&path).map_err(|e| QemuError::Board(e.to_string()))
}

/// The arm64 image under `qemu-system-aarch64 -M virt -cpu cortex-a72` (TCG; `-cpu max` is
/// several times slower to boot).
pub fn boot_arm64(
    built: &k3rs_image::BuildOutput,
    disk: &Path,
    seed: Option<&Path>,
) -> Result<Vm, QemuError> {
    boot_board(&load_board("arm64-uefi")?, built, disk, seed, "")
}

/// The x86_64 image: direct kernel boot, 1 GiB, hostfwd for 6443.
pub fn boot(
    built: &k3rs_image::BuildOutput,
    disk: &Path,
    seed: Option<&Path>,
) -> Result<Vm, QemuError> {
    boot_with(built, disk, seed, "")
}

/// [`boot`] with extra kernel command-line words (e.g. `k3rs.slot=B`).
pub fn boot_with(
    built: &k3rs_image::BuildOutput,
    disk: &Path,
    seed: Option<&Path>,
    extra_cmdline: &str,
) -> Result<Vm, QemuError> {
    boot_board(
        &load_board("x86_64-uefi")?,
        built,
        disk,
        seed,
        extra_cmdline,
    )
}

/// An SD card for `-M raspi3b` from a built Raspberry Pi image: a sparse copy with `k3rs_toml`
/// written to the boot partition (as a user edits the card before first boot), grown to the next
/// power of two, which QEMU requires of SD cards (the data partition grows into it at boot).
pub fn rpi_sd_card(image: &Path, out: &Path, k3rs_toml: &str) -> Result<(), QemuError> {
    let _ = std::fs::remove_file(out);
    crate::run(
        std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(out),
    )?;
    let toml = out.with_extension("k3rs.toml");
    crate::io("writing k3rs.toml", std::fs::write(&toml, k3rs_toml))?;
    // The boot partition starts at 1 MiB on every board (image/src/build.rs assemble_gpt).
    let copied = crate::run(
        std::process::Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@1M", out.display()))
            .arg(&toml)
            .arg("::k3rs.toml"),
    );
    let _ = std::fs::remove_file(&toml);
    copied?;
    let len = crate::io("sizing the SD card", std::fs::metadata(out))?.len();
    let f = crate::io(
        "opening the SD card",
        std::fs::OpenOptions::new().write(true).open(out),
    )?;
    crate::io("growing the SD card", f.set_len(len.next_power_of_two()))
}
