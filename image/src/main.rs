//! `k3rs-image build --board board-configs/x86_64-uefi.toml --out disk.img`

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "k3rs-image", about = "Build bootable k3rs disk images")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a GPT disk image: raw, or qcow2 when `--out` ends in `.qcow2` (converted with
    /// `qemu-img convert`).
    Build {
        #[arg(long)]
        board: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The static k3rs binary (default: target/<rust-target>/release/k3rs).
        #[arg(long)]
        k3rs: Option<PathBuf>,
        /// Download/unpack cache (default: target/appliance-cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        #[arg(long, default_value = "rootfs")]
        rootfs: PathBuf,
        /// Timestamp for every file in the image.
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_767_225_600)]
        source_date_epoch: u64,
        /// Rebuild even if the inputs are unchanged.
        #[arg(long)]
        force: bool,
        /// apt sources (one-line format) for the kernel, tool and firmware packages; default:
        /// deb.debian.org bookworm main + non-free-firmware, updates and security.
        #[arg(long)]
        apt_sources: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .without_time()
        .init();
    let Cli {
        command:
            Cmd::Build {
                board,
                out,
                k3rs,
                cache,
                rootfs,
                source_date_epoch,
                force,
                apt_sources,
            },
    } = Cli::parse();
    let apt_sources = match apt_sources {
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| format!("reading the apt sources {}", p.display()))?,
        None => k3rs_image::DEFAULT_APT_SOURCES.to_string(),
    };
    let b = k3rs_image::board::Board::load(&board)?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    let opts = k3rs_image::BuildOptions {
        k3rs_bin: k3rs.unwrap_or_else(|| target.join(&b.rust_target).join("release/k3rs")),
        cache_dir: cache.unwrap_or_else(|| target.join("appliance-cache")),
        board: b,
        board_file: board,
        rootfs_dir: rootfs,
        out,
        source_date_epoch,
        force,
        apt_sources,
    };
    let built = k3rs_image::build(&opts).context("building the image")?;
    println!(
        "disk: {} ({} bytes)",
        built.disk.display(),
        built.disk_bytes
    );
    println!(
        "direct boot: -kernel {} -initrd {} -append '{}'",
        // x86: the ELF extracted from the bzImage; arm64: the Image itself.
        if built.vmlinux.exists() {
            built.vmlinux.display()
        } else {
            built.vmlinuz.display()
        },
        built.initrd.display(),
        built.cmdline
    );
    Ok(())
}
