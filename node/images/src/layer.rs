//! Layer unpacking (with whiteouts converted to overlayfs form) and overlay mounts.

use crate::{io_err, Error, ImageStore, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Unpacks a layer blob into `layers/<hex>` unless that exists already. Concurrent callers
/// each unpack into a private temp dir and the first rename wins.
pub fn unpack_once(store: &ImageStore, digest: &str, media_type: &str) -> Result<()> {
    let dest = store.layer_dir(digest)?;
    if dest.exists() {
        return Ok(());
    }
    if media_type.contains("zstd") {
        return Err(Error::UnsupportedLayer(media_type.into()));
    }
    let tmp = store.tmp_path("layer");
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let blob = store.blob_path(digest)?;
    let res = (|| {
        let f = fs::File::open(&blob).map_err(io_err(format!("opening {}", blob.display())))?;
        let mut r = BufReader::new(f);
        let mut magic = [0u8; 4];
        let n = read_full(&mut r, &mut magic)?;
        let head = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
        if n >= 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(Error::UnsupportedLayer(format!("{media_type} (zstd)")));
        }
        if n >= 2 && magic[..2] == [0x1f, 0x8b] {
            unpack(flate2::read::GzDecoder::new(head), &tmp)
        } else {
            unpack(head, &tmp)
        }
    })();
    if let Err(e) = res {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if fs::rename(&tmp, &dest).is_err() {
        // Someone else finished first.
        let _ = fs::remove_dir_all(&tmp);
        if !dest.exists() {
            return Err(Error::InvalidImage(format!(
                "could not store layer {digest}"
            )));
        }
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).map_err(io_err("reading layer"))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Unpacks a layer tar into `dest`, turning `.wh.NAME` into an overlay whiteout (a 0/0 char
/// device) and `.wh..wh..opq` into the `trusted.overlay.opaque` xattr on its directory.
pub fn unpack(reader: impl Read, dest: &Path) -> Result<()> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    ar.set_unpack_xattrs(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(io_err("reading layer tar"))? {
        let mut entry = entry.map_err(io_err("reading layer tar entry"))?;
        let path = entry
            .path()
            .map_err(io_err("layer entry path"))?
            .into_owned();
        let Some(rel) = safe_relative(&path) else {
            continue;
        };
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name == OPAQUE {
            let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
            xattr::set(&dir, "trusted.overlay.opaque", b"y")
                .map_err(io_err(format!("marking {} opaque", dir.display())))?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
            let target = dir.join(hidden);
            if target.symlink_metadata().is_ok() {
                if target.is_dir() {
                    let _ = fs::remove_dir_all(&target);
                } else {
                    let _ = fs::remove_file(&target);
                }
            }
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                Error::Io {
                    context: format!("creating whiteout {}", target.display()),
                    source: e.into(),
                }
            })?;
        } else {
            entry
                .unpack_in(dest)
                .map_err(io_err(format!("unpacking {}", rel.display())))?;
        }
    }
    Ok(())
}

/// `path` without `/`, `.` and with no `..` (entries that escape are skipped).
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(p.as_str()))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Mounts overlayfs at `merged`; `lowers` are top-most first.
pub fn mount_overlay(
    lowers: &[String],
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> Result<(), String> {
    if lowers.is_empty() {
        return Err("the image has no layers".into());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(format!(
            "overlay options are {} bytes, over the kernel's page-size limit",
            opts.len()
        ));
    }
    mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mount overlay: {e}"))
}

pub fn unmount(path: &Path) -> Result<(), String> {
    umount2(path, MntFlags::MNT_DETACH).map_err(|e| format!("umount {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_sanitized() {
        assert_eq!(
            safe_relative(Path::new("./a/b")),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(safe_relative(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(safe_relative(Path::new("a/../../b")), None);
        assert_eq!(safe_relative(Path::new("./")), None);
    }
}
