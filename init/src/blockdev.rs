//! Finding block devices by what is on them: GPT partition names (from sysfs), FAT and ISO 9660
//! volume labels and the ext2/3/4 magic (read from the first bytes of the device).

use std::io::Read;
use std::path::{Path, PathBuf};

/// What the first 36 KiB of a device say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Vfat {
        label: String,
    },
    Iso9660 {
        label: String,
    },
    Ext4,
    Erofs,
    Squashfs,
    /// All zero: safe to format.
    Blank,
    Unknown,
}

/// Bytes [`probe`] needs.
pub const PROBE_LEN: usize = 0x8800;

pub fn probe(head: &[u8]) -> Probe {
    let label = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    if head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
        return Probe::Ext4;
    }
    if head.len() >= 1028 && head[1024..1028] == [0xE2, 0xE1, 0xF5, 0xE0] {
        return Probe::Erofs;
    }
    if head.len() >= 4 && &head[0..4] == b"hsqs" {
        return Probe::Squashfs;
    }
    if head.len() >= 0x8028 + 32 && &head[0x8001..0x8006] == b"CD001" {
        return Probe::Iso9660 {
            label: label(&head[0x8028..0x8028 + 32]),
        };
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        if &head[0x52..0x57] == b"FAT32" {
            return Probe::Vfat {
                label: label(&head[0x47..0x47 + 11]),
            };
        }
        if &head[0x36..0x39] == b"FAT" {
            return Probe::Vfat {
                label: label(&head[0x2B..0x2B + 11]),
            };
        }
    }
    if head.iter().all(|b| *b == 0) {
        return Probe::Blank;
    }
    Probe::Unknown
}

pub fn read_head(dev: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; PROBE_LEN];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// A block device as sysfs shows it.
#[derive(Debug, Clone)]
pub struct BlockDev {
    pub name: String,
    pub dev: PathBuf,
    /// GPT partition name (`PARTNAME=` in uevent), if a partition.
    pub partname: Option<String>,
}

/// Every block device under `/sys/class/block`, sorted by name; loop/ram devices skipped.
pub fn list() -> Vec<BlockDev> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        let partname = uevent
            .lines()
            .find_map(|l| l.strip_prefix("PARTNAME="))
            .map(str::to_string);
        out.push(BlockDev {
            dev: PathBuf::from(format!("/dev/{name}")),
            name,
            partname,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes() {
        let mut fat = vec![0u8; PROBE_LEN];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[0x36..0x3E].copy_from_slice(b"FAT12   ");
        fat[0x2B..0x36].copy_from_slice(b"CIDATA     ");
        assert_eq!(
            probe(&fat),
            Probe::Vfat {
                label: "CIDATA".into()
            }
        );
        let mut iso = vec![0u8; PROBE_LEN];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[0x8028..0x802E].copy_from_slice(b"cidata");
        assert_eq!(
            probe(&iso),
            Probe::Iso9660 {
                label: "cidata".into()
            }
        );
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        assert_eq!(probe(&ext), Probe::Ext4);
        let mut erofs = vec![0u8; 2048];
        erofs[1024..1028].copy_from_slice(&[0xE2, 0xE1, 0xF5, 0xE0]);
        assert_eq!(probe(&erofs), Probe::Erofs);
        assert_eq!(probe(b"hsqs\0\0\0\0"), Probe::Squashfs);
        assert_eq!(probe(&[0u8; 4096]), Probe::Blank);
        assert_eq!(probe(&[1u8; 4096]), Probe::Unknown);
    }
}
