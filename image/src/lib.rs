//! Builds bootable A/B disk images for the boards in `board-configs/`: Debian's kernel package,
//! an initramfs with the static `k3rs` as `/init`, erofs/squashfs root slots, a vfat ESP with
//! systemd-boot (or the Raspberry Pi firmware and a hybrid MBR), an empty data partition, in a
//! GPT laid out with sgdisk; kernel, tools and boot files from Debian packages of the board's
//! architecture. Reproducible: fixed
//! timestamps, GUIDs and entry order.

pub mod board;
mod build;
pub mod cpio;
mod debs;
mod tools;

pub use build::{
    allocated_bytes, build, bundle_path, convert_to_qcow2, inputs_digest, is_qcow2, BuildOptions,
    BuildOutput, ImageError,
};
pub use debs::DEFAULT_APT_SOURCES;
