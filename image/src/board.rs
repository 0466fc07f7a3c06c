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
    pub qemu: Option<Qemu>,
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
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all_fields = "kebab-case", tag = "method", deny_unknown_fields)]
pub enum Boot {
    #[serde(rename = "systemd-boot")]
    SystemdBoot {
        efi_binary: String,
        efi_name: String,
    },
    #[serde(rename = "rpi-firmware")]
    RpiFirmware {
        firmware_package: String,
        firmware_files: Vec<String>,
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
    pub firmware: Option<String>,
    pub firmware_vars: Option<String>,
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
