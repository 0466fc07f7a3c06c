//! Builds bootable A/B disk images for the boards in `board-configs/`: Debian's kernel package,
//! an initramfs with the static `k3rs` as `/init`, erofs/squashfs root slots, a vfat ESP with
//! systemd-boot, an empty data partition, in a GPT laid out with sgdisk. Reproducible: fixed
//! timestamps, GUIDs and entry order.

pub mod board;
mod build;
pub mod cpio;

pub use build::{
    allocated_bytes, build, convert_to_qcow2, inputs_digest, is_qcow2, BuildOptions, BuildOutput,
    ImageError,
};
