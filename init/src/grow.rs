//! Growing the data partition into a disk that is larger than the image (a VM disk resized with
//! `qemu-img resize`, an image written to a bigger SD card or SSD): the GPT's last partition is
//! extended to the end of the disk, the backup GPT moved there, the kernel told with
//! `BLKPG_RESIZE_PARTITION` (works while other partitions of the disk are mounted, unlike a
//! re-read), and a mounted ext4 grown online with `EXT4_IOC_RESIZE_FS` (what resize2fs does for
//! a mounted filesystem) — no e2fsprogs needed at runtime.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no valid GPT header at LBA 1 ({0})")]
    BadHeader(&'static str),
    #[error("GPT partition entries fail their CRC")]
    BadEntries,
    #[error("no GPT partition named {0:?}")]
    NoPartition(String),
    #[error("sector size {0} is not supported")]
    SectorSize(u64),
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, GrowError> {
    r.map_err(|source| GrowError::Io {
        what: what.into(),
        source,
    })
}

/// Growth smaller than this is not worth a GPT rewrite (images leave ~1 MiB of alignment slack).
pub const MIN_GROWTH_BYTES: u64 = 1 << 20;

/// What [`grow_gpt_partition`] changed (LBAs in the disk's sector size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// 1-based partition number.
    pub number: u32,
    pub first_lba: u64,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn header_crc(h: &[u8], size: usize) -> u32 {
    let mut copy = h[..size].to_vec();
    put_u32(&mut copy, 16, 0);
    crc32fast::hash(&copy)
}

fn entry_name(e: &[u8]) -> String {
    let units: Vec<u16> = e[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn read_at(
    disk: &mut (impl Read + Seek),
    off: u64,
    len: usize,
    what: &str,
) -> Result<Vec<u8>, GrowError> {
    io(what, disk.seek(SeekFrom::Start(off)))?;
    let mut b = vec![0u8; len];
    io(what, disk.read_exact(&mut b))?;
    Ok(b)
}

fn write_at(
    disk: &mut (impl Write + Seek),
    off: u64,
    data: &[u8],
    what: &str,
) -> Result<(), GrowError> {
    io(what, disk.seek(SeekFrom::Start(off)))?;
    io(what, disk.write_all(data))
}

/// Extends the partition named `name` to the end of a disk of `disk_lbas` sectors when it is
/// the last partition and the disk has at least [`MIN_GROWTH_BYTES`] more room, rewriting the
/// primary and backup GPT (headers, entries, CRCs). `Ok(None)`: nothing to do.
pub fn grow_gpt_partition(
    disk: &mut (impl Read + Write + Seek),
    sector: u64,
    disk_lbas: u64,
    name: &str,
) -> Result<Option<Growth>, GrowError> {
    if !(512..=4096).contains(&sector) || !sector.is_power_of_two() {
        return Err(GrowError::SectorSize(sector));
    }
    let s = sector as usize;
    let mut hdr = read_at(disk, sector, s, "reading the GPT header")?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(GrowError::BadHeader("signature"));
    }
    let hsize = u32_at(&hdr, 12) as usize;
    if !(92..=s).contains(&hsize) {
        return Err(GrowError::BadHeader("header size"));
    }
    if header_crc(&hdr, hsize) != u32_at(&hdr, 16) {
        return Err(GrowError::BadHeader("CRC"));
    }
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80) as usize;
    let esize = u32_at(&hdr, 84) as usize;
    if esize < 128 || count == 0 || count * esize > 1 << 20 {
        return Err(GrowError::BadHeader("entry array"));
    }
    let table_bytes = count * esize;
    let table_lbas = table_bytes.div_ceil(s) as u64;
    let mut entries = read_at(
        disk,
        entries_lba * sector,
        table_bytes,
        "reading GPT entries",
    )?;
    if crc32fast::hash(&entries) != u32_at(&hdr, 88) {
        return Err(GrowError::BadEntries);
    }
    let used = |e: &[u8]| e[0..16].iter().any(|b| *b != 0);
    let index = (0..count)
        .find(|i| {
            let e = &entries[i * esize..(i + 1) * esize];
            used(e) && entry_name(e) == name
        })
        .ok_or_else(|| GrowError::NoPartition(name.to_string()))?;
    let e = &entries[index * esize..(index + 1) * esize];
    let (first, last) = (u64_at(e, 32), u64_at(e, 40));
    let later_partition = (0..count).any(|i| {
        let o = &entries[i * esize..(i + 1) * esize];
        i != index && used(o) && u64_at(o, 32) > last
    });
    let backup_header_lba = disk_lbas - 1;
    let backup_entries_lba = backup_header_lba - table_lbas;
    let new_last_usable = backup_entries_lba - 1;
    if later_partition
        || new_last_usable <= last
        || (new_last_usable - last) * sector < MIN_GROWTH_BYTES
    {
        return Ok(None);
    }
    put_u64(&mut entries[index * esize..], 40, new_last_usable);
    let entries_crc = crc32fast::hash(&entries);

    let old_backup = u64_at(&hdr, 32);
    put_u64(&mut hdr, 32, backup_header_lba);
    put_u64(&mut hdr, 48, new_last_usable);
    put_u32(&mut hdr, 88, entries_crc);
    let crc = header_crc(&hdr, hsize);
    put_u32(&mut hdr, 16, crc);

    let mut backup = hdr.clone();
    put_u64(&mut backup, 24, backup_header_lba);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_entries_lba);
    let crc = header_crc(&backup, hsize);
    put_u32(&mut backup, 16, crc);

    // Backup first: until the primary is rewritten the old layout stays the valid one.
    write_at(
        disk,
        backup_entries_lba * sector,
        &entries,
        "writing backup GPT entries",
    )?;
    write_at(
        disk,
        backup_header_lba * sector,
        &backup,
        "writing the backup GPT header",
    )?;
    write_at(disk, entries_lba * sector, &entries, "writing GPT entries")?;
    write_at(disk, sector, &hdr, "writing the GPT header")?;
    // The old backup header now sits inside the grown partition: wipe it so no tool finds a
    // stale GPT there.
    if old_backup > last && old_backup < backup_entries_lba {
        write_at(
            disk,
            old_backup * sector,
            &vec![0u8; s],
            "wiping the old backup GPT header",
        )?;
    }
    io("flushing the disk", disk.flush())?;
    Ok(Some(Growth {
        number: index as u32 + 1,
        first_lba: first,
        old_last_lba: last,
        new_last_lba: new_last_usable,
    }))
}

/// An ext4 superblock's block size and block count (from a device's first 2 KiB or more).
pub fn ext4_geometry(head: &[u8]) -> Option<(u64, u64)> {
    let sb = head.get(1024..1024 + 0x160)?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return None;
    }
    let block_size = 1024u64 << u32_at(sb, 0x18).min(6);
    let incompat_64bit = u32_at(sb, 0x60) & 0x80 != 0;
    let hi = if incompat_64bit {
        u64::from(u32_at(sb, 0x150))
    } else {
        0
    };
    Some((block_size, hi << 32 | u64::from(u32_at(sb, 4))))
}

/// `BLKPG_RESIZE_PARTITION`: tells the kernel partition `number` of `disk` now has `bytes`.
pub fn kernel_resize_partition(
    disk: &Path,
    number: u32,
    start_bytes: u64,
    bytes: u64,
) -> Result<(), GrowError> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct BlkpgPartition {
        start: libc::c_longlong,
        length: libc::c_longlong,
        pno: libc::c_int,
        devname: [libc::c_char; 64],
        volname: [libc::c_char; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: libc::c_int,
        flags: libc::c_int,
        datalen: libc::c_int,
        data: *mut libc::c_void,
    }
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
    let f = io(
        format!("opening {}", disk.display()),
        std::fs::File::open(disk),
    )?;
    let mut part = BlkpgPartition {
        start: start_bytes as libc::c_longlong,
        length: bytes as libc::c_longlong,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG takes a pointer to a blkpg_ioctl_arg whose data points to a
    // blkpg_partition; both are repr(C) locals that outlive the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &mut arg) };
    if r != 0 {
        return Err(GrowError::Io {
            what: format!("BLKPG_RESIZE_PARTITION on {}", disk.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `EXT4_IOC_RESIZE_FS`: grows the ext4 mounted at `mountpoint` to `blocks` blocks, online.
pub fn ext4_resize_online(mountpoint: &Path, blocks: u64) -> Result<(), GrowError> {
    use std::os::fd::AsRawFd;
    // _IOW('f', 16, __u64)
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let f = io(
        format!("opening {}", mountpoint.display()),
        std::fs::File::open(mountpoint),
    )?;
    let count: u64 = blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 through the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &count) };
    if r != 0 {
        return Err(GrowError::Io {
            what: format!("EXT4_IOC_RESIZE_FS on {}", mountpoint.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A GPT made by sgdisk (the tool the image builder uses), grown, then checked by sgdisk.
    #[test]
    fn grows_the_last_partition_and_sgdisk_agrees() {
        if !have("sgdisk") {
            eprintln!("skipped: sgdisk not installed (tests/install-appliance-deps.sh)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mib = 1u64 << 20;
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 * mib)
            .unwrap();
        let out = Command::new("sgdisk")
            .args(["-n1:2048:4095", "-c1:ESP", "-n2:4096:0", "-c2:data"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut bytes = std::fs::read(&img).unwrap();
        // Not grown: the disk has no room beyond the 1 MiB slack rule.
        let mut c = Cursor::new(bytes.clone());
        assert_eq!(
            grow_gpt_partition(&mut c, 512, 8 * mib / 512, "data").unwrap(),
            None
        );
        // The disk grows to 24 MiB.
        bytes.resize((24 * mib) as usize, 0);
        let mut c = Cursor::new(bytes);
        let g = grow_gpt_partition(&mut c, 512, 24 * mib / 512, "data")
            .unwrap()
            .unwrap();
        assert_eq!(g.number, 2);
        assert_eq!(g.first_lba, 4096);
        assert_eq!(g.old_last_lba, 8 * mib / 512 - 34);
        assert_eq!(g.new_last_lba, 24 * mib / 512 - 34);
        std::fs::write(&img, c.into_inner()).unwrap();
        let v = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "{text}");
        let p = Command::new("sgdisk")
            .arg("-i2")
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&p.stdout);
        assert!(
            text.contains(&format!("Last sector: {}", 24 * mib / 512 - 34)),
            "{text}"
        );
        // A second run has nothing to do; asking for a partition that is not last neither.
        let mut c = Cursor::new(std::fs::read(&img).unwrap());
        assert_eq!(
            grow_gpt_partition(&mut c, 512, 24 * mib / 512, "data").unwrap(),
            None
        );
        assert!(matches!(
            grow_gpt_partition(&mut c, 512, 24 * mib / 512, "nope"),
            Err(GrowError::NoPartition(_))
        ));
    }

    #[test]
    fn refuses_a_broken_gpt() {
        let mut c = Cursor::new(vec![0u8; 64 * 1024]);
        assert!(matches!(
            grow_gpt_partition(&mut c, 512, 128, "data"),
            Err(GrowError::BadHeader("signature"))
        ));
        assert!(matches!(
            grow_gpt_partition(&mut c, 500, 128, "data"),
            Err(GrowError::SectorSize(500))
        ));
    }

    #[test]
    fn ext4_superblock_geometry() {
        let mut head = vec![0u8; 4096];
        let sb = 1024;
        head[sb + 0x38] = 0x53;
        head[sb + 0x39] = 0xEF;
        head[sb + 4..sb + 8].copy_from_slice(&262_144u32.to_le_bytes());
        head[sb + 0x18..sb + 0x1C].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB
        assert_eq!(ext4_geometry(&head), Some((4096, 262_144)));
        head[sb + 0x60] = 0x80; // 64bit
        head[sb + 0x150..sb + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext4_geometry(&head), Some((4096, (1 << 32) + 262_144)));
        assert_eq!(ext4_geometry(&head[..1300]), None);
        head[sb + 0x38] = 0;
        assert_eq!(ext4_geometry(&head), None);

        // What mke2fs (the tool PID 1 formats the data partition with) writes.
        if !have("mke2fs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let out = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let head = std::fs::read(&img).unwrap();
        assert_eq!(ext4_geometry(&head[..4096]), Some((4096, 16384)));
    }
}
