//! Board definitions: plain TOML in `board-configs/`.

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid board config")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub arch: String,
    pub rust_target: String,
    pub deb_arch: String,
    pub kernel: Kernel,
    pub boot: Boot,
    pub disk: Disk,
    #[serde(default)]
    pub tools: Tools,
    pub qemu: Option<Qemu>,
}

/// Userland binaries the node runs (`nft`, `mke2fs`), from the board architecture's Debian
/// packages; their shared libraries come along through the ELF `DT_NEEDED` closure, so
/// `packages` must hold the libraries' packages too (the build names any that is missing).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tools {
    pub packages: Vec<String>,
    /// Paths as installed (`/usr/sbin/nft`).
    pub binaries: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Kernel {
    pub package: String,
    pub release: String,
    /// Path of the kernel image inside the package.
    pub image: String,
    pub cmdline: String,
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all_fields = "kebab-case", tag = "method", deny_unknown_fields)]
pub enum Boot {
    #[serde(rename = "systemd-boot")]
    SystemdBoot {
        /// Debian package holding the boot manager (`systemd-boot-efi`), for the board's arch.
        efi_package: String,
        /// Path of the EFI binary inside that package.
        efi_binary: String,
        /// Name under `EFI/BOOT/` on the ESP (the removable-media path firmware falls back to).
        efi_name: String,
    },
    /// The Raspberry Pi's GPU firmware reads `config.txt` from the first MBR partition (FAT)
    /// and loads the kernel, initramfs and device tree named there; no UEFI.
    #[serde(rename = "rpi-firmware")]
    RpiFirmware {
        firmware_package: String,
        /// Paths inside the firmware package, copied to the boot partition's root.
        firmware_files: Vec<String>,
        /// Paths inside the kernel package, copied to the boot partition's root.
        device_trees: Vec<String>,
        config_txt: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Disk {
    pub esp_mib: u64,
    pub root_mib: u64,
    pub data_mib: u64,
    pub root_a: SlotFs,
    pub root_b: SlotFs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotFs {
    Erofs,
    Squashfs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Qemu {
    pub system: String,
    pub machine: String,
    pub cpu: Option<String>,
    /// vCPUs when the machine fixes them (`raspi3b`: 4).
    pub cpus: Option<u32>,
    /// Where the boot disk goes: `virtio` (default) or `sd`.
    #[serde(default)]
    pub disk_bus: DiskBus,
    /// Network device model (default `virtio-net-pci`).
    pub nic: Option<String>,
    /// Index of the UART that carries the console (default 0).
    #[serde(default)]
    pub console_serial: usize,
    pub firmware: Option<String>,
    pub firmware_vars: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Sd,
}

impl Board {
    pub fn load(path: &Path) -> Result<Board, BoardError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: p.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| BoardError::Parse { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let b = Board::load(&p).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
                assert!(!b.kernel.modules.is_empty());
                n += 1;
            }
        }
        assert_eq!(n, 4);
    }
}
