//! `k3rs-qemu run disk.img`: boot an image for a person, console on this terminal.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use k3rs_qemu::{DirectBoot, Vm};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "k3rs-qemu", about = "Boot k3rs images under QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a disk image built by k3rs-image. The API is forwarded to 127.0.0.1:<printed port>.
    Run {
        disk: PathBuf,
        /// NoCloud seed image (vfat labelled CIDATA), or a user-data file to make one from.
        #[arg(long)]
        seed: Option<PathBuf>,
        /// Boot through OVMF + systemd-boot instead of direct kernel boot (slower under TCG).
        #[arg(long)]
        uefi: bool,
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// The board config the image was built from: its [qemu] section picks the machine, CPU,
        /// disk bus, NIC and console (e.g. board-configs/rpi3.toml for `-M raspi3b`, whose SD
        /// card must be a power of two in size: `qemu-img resize`). Default: x86_64 direct boot.
        #[arg(long, conflicts_with = "uefi")]
        board: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Cli {
        command:
            Cmd::Run {
                disk,
                seed,
                uefi,
                memory,
                board,
            },
    } = Cli::parse();
    let dir = tempfile::tempdir()?;
    let mut b = Vm::builder().disk(&disk).memory(memory).hostfwd(6443);
    if uefi {
        b = b.uefi(
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        );
    } else {
        let mut boot = disk.clone().into_os_string();
        boot.push(".boot");
        let boot = PathBuf::from(boot);
        let cmdline = std::fs::read_to_string(boot.join("cmdline"))
            .context("reading <disk>.boot/cmdline (or use --uefi)")?;
        b = b.direct_boot(DirectBoot {
            kernel: boot.join("vmlinux"),
            initrd: boot.join("initrd.img"),
            cmdline: cmdline.trim().to_string(),
            dtb: None,
        });
    }
    let mut seed_img = None;
    if let Some(s) = seed {
        let is_user_data = std::fs::read(&s)
            .map(|d| d.starts_with(b"#cloud-config"))
            .unwrap_or(false);
        if is_user_data {
            let img = dir.path().join("seed.img");
            k3rs_qemu::make_nocloud_seed(
                &img,
                &std::fs::read_to_string(&s)?,
                "instance-id: k3rs\n",
            )?;
            b = b.seed(&img);
            seed_img = Some(img);
        } else {
            b = b.seed(&s);
            seed_img = Some(s);
        }
    }
    let mut vm = match board {
        Some(board) => {
            let board = k3rs_image::board::Board::load(&board)?;
            let built = built_from_boot_dir(&disk)?;
            k3rs_qemu::appliance::boot_board(&board, &built, &disk, seed_img.as_deref(), "")?
        }
        None => b.spawn()?,
    };
    eprintln!(
        "k3rs-qemu: API forwarded to https://127.0.0.1:{} (accel {:?}); Ctrl-C stops QEMU",
        vm.host_port(6443).unwrap_or(0),
        vm.accel
    );
    let mut shown = 0;
    loop {
        let lines = vm.console_lines();
        for (_, l) in &lines[shown..] {
            println!("{l}");
        }
        shown = lines.len();
        if let Ok(s) = vm.wait_exit(Duration::from_millis(100)) {
            for (_, l) in &vm.console_lines()[shown..] {
                println!("{l}");
            }
            eprintln!("k3rs-qemu: QEMU exited: {s}");
            return Ok(());
        }
    }
}

/// What `k3rs-image build` left next to the disk (`<disk>.boot/`), for a board's direct boot.
fn built_from_boot_dir(disk: &std::path::Path) -> Result<k3rs_image::BuildOutput> {
    let mut boot = disk.to_path_buf().into_os_string();
    boot.push(".boot");
    let boot = PathBuf::from(boot);
    let cmdline = std::fs::read_to_string(boot.join("cmdline"))
        .with_context(|| format!("reading {}/cmdline", boot.display()))?;
    let dtb = std::fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dtb"));
    Ok(k3rs_image::BuildOutput {
        disk: disk.to_path_buf(),
        vmlinux: boot.join("vmlinux"),
        vmlinuz: boot.join("vmlinuz"),
        initrd: boot.join("initrd.img"),
        dtb,
        cmdline: cmdline.trim().to_string(),
        boot_dir: boot,
        disk_bytes: std::fs::metadata(disk).map(|m| m.len()).unwrap_or(0),
        bundle: Some(k3rs_image::bundle_path(disk)).filter(|p| p.exists()),
        reused: true,
    })
}
