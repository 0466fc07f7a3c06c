//! The x86_64 appliance as tests and the benchmark use it: build (or reuse) the image from this
//! workspace and boot it with a NoCloud seed under direct kernel boot.

use crate::{DirectBoot, QemuError, Vm};
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

/// The image build options for the generic arm64 UEFI board.
pub fn arm64_options(
    out: &Path,
) -> Result<k3rs_image::BuildOptions, k3rs_image::board::BoardError> {
    board_options("arm64-uefi", static_k3rs_arm64(), out)
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
    })
}

/// user-data for a single-node server reachable from the host through hostfwd, printing its
/// kubeconfig on the console.
pub fn test_user_data(extra: &str) -> String {
    format!(
        "#cloud-config\nhostname: k3rs-test\nk3rs:\n  role: server\n  token: appliance-test-token\n  print-kubeconfig: true\n  extra-args: [\"--tls-san=127.0.0.1\"]\n{extra}"
    )
}

/// The arm64 image under `qemu-system-aarch64 -M virt -cpu cortex-a72` (TCG; `-cpu max` is
/// several times slower to boot), direct boot of the kernel's uncompressed `Image`.
pub fn boot_arm64(
    built: &k3rs_image::BuildOutput,
    disk: &Path,
    seed: Option<&Path>,
) -> Result<Vm, QemuError> {
    let mut b = Vm::builder()
        .qemu("qemu-system-aarch64")
        .machine("virt")
        .accel(crate::Accel::Tcg)
        .arg("-cpu")
        .arg("cortex-a72")
        .disk(disk)
        .direct_boot(DirectBoot {
            kernel: built.vmlinuz.clone(),
            initrd: built.initrd.clone(),
            cmdline: built.cmdline.clone(),
        })
        .memory(1024)
        .hostfwd(6443);
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.spawn()
}

/// A VM builder for the built image: direct kernel boot, 1 GiB, hostfwd for 6443.
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
    let cmdline = format!("{} {extra_cmdline}", built.cmdline)
        .trim()
        .to_string();
    let mut b = Vm::builder()
        .disk(disk)
        .direct_boot(DirectBoot {
            kernel: built.vmlinux.clone(),
            initrd: built.initrd.clone(),
            cmdline,
        })
        .memory(1024)
        .hostfwd(6443);
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.spawn()
}
