//! Userland tools in the image (`nft`, `mke2fs`), taken from the board architecture's Debian
//! packages with the shared libraries their ELF headers name. No host `ldd`: that only works for
//! the host's own architecture, and the arm64 boards need arm64 libraries.

use crate::build::{io, ImageError};
use crate::cpio::{Archive, Entry};
use goblin::elf::Elf;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed per path before giving up (a loop in a package would be a bug there).
const MAX_LINKS: usize = 32;

/// Adds each of `binaries` (absolute paths as installed) from the unpacked `sysroot`, plus its
/// program interpreter and the transitive closure of its `DT_NEEDED` libraries, each at the path
/// the dynamic loader looks in.
pub fn add_binaries(
    tree: &mut Archive,
    sysroot: &Path,
    triplet: &str,
    binaries: &[String],
) -> Result<(), ImageError> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = Vec::new();
    for b in binaries {
        let (real, data) = read_in(sysroot, b)?;
        let elf = parse(&real, &data)?;
        if let Some(interp) = elf.interpreter {
            if done.insert(interp.to_string()) {
                let (_, ld) = read_in(sysroot, interp)?;
                tree.add(
                    interp,
                    Entry::File {
                        mode: 0o755,
                        data: ld,
                    },
                );
            }
        }
        queue.extend(elf.libraries.iter().map(|s| s.to_string()));
        tree.add(b, Entry::File { mode: 0o755, data });
    }
    let dirs = [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib".to_string(),
        "/usr/lib".to_string(),
    ];
    while let Some(soname) = queue.pop() {
        if !done.insert(soname.clone()) {
            continue;
        }
        let found = dirs.iter().map(|d| format!("{d}/{soname}")).find_map(|p| {
            read_in(sysroot, &p)
                .ok()
                .map(|(real, data)| (p, real, data))
        });
        let Some((path, real, data)) = found else {
            return Err(ImageError::MissingLibrary {
                library: soname,
                sysroot: sysroot.display().to_string(),
            });
        };
        let elf = parse(&real, &data)?;
        queue.extend(elf.libraries.iter().map(|s| s.to_string()));
        tree.add(&path, Entry::File { mode: 0o755, data });
    }
    Ok(())
}

fn parse<'a>(path: &Path, data: &'a [u8]) -> Result<Elf<'a>, ImageError> {
    Elf::parse(data).map_err(|e| ImageError::Elf {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads `path` as the target system would see it inside `sysroot`: symlinks are resolved
/// against the sysroot, never the host, and a path missing because the packages predate the
/// merged `/usr` (`/sbin/x` shipped as `/usr/sbin/x`, or the other way) is tried both ways.
fn read_in(sysroot: &Path, path: &str) -> Result<(PathBuf, Vec<u8>), ImageError> {
    let candidates = [
        path.to_string(),
        match path.strip_prefix("/usr") {
            Some(rest) => rest.to_string(),
            None => format!("/usr{path}"),
        },
    ];
    for c in &candidates {
        if let Some(real) = resolve(sysroot, c) {
            let data = io(format!("reading {}", real.display()), std::fs::read(&real))?;
            return Ok((real, data));
        }
    }
    Err(ImageError::Io {
        what: format!(
            "{path} is in none of the tool packages ({})",
            sysroot.display()
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// The host path of `path` inside `sysroot` after following symlinks there; None if missing.
fn resolve(sysroot: &Path, path: &str) -> Option<PathBuf> {
    let mut rel = normalize(Path::new(path));
    for _ in 0..MAX_LINKS {
        let host = sysroot.join(&rel);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(host);
        }
        let target = std::fs::read_link(&host).ok()?;
        rel = if target.is_absolute() {
            normalize(&target)
        } else {
            normalize(&rel.parent().unwrap_or(Path::new("")).join(target))
        };
    }
    None
}

/// `path` relative to the sysroot with `.` and `..` applied (never climbing out of it).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_sysroot() {
        let d = std::env::temp_dir().join(format!("k3rs-tools-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("lib/aarch64-linux-gnu")).unwrap();
        std::fs::write(d.join("lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"), b"ld").unwrap();
        // Debian's libc6:arm64 ships the interpreter as a relative link; an absolute one must
        // not escape to the host's /lib.
        std::os::unix::fs::symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            d.join("lib/ld-linux-aarch64.so.1"),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("usr/sbin")).unwrap();
        std::fs::write(d.join("usr/sbin/nft"), b"nft").unwrap();
        std::os::unix::fs::symlink("/usr/sbin/nft", d.join("usr/sbin/nft-abs")).unwrap();

        let (real, data) = read_in(&d, "/lib/ld-linux-aarch64.so.1").unwrap();
        assert_eq!(data, b"ld");
        assert!(real.starts_with(&d));
        // Merged /usr: asked for /sbin/nft, shipped as /usr/sbin/nft.
        assert_eq!(read_in(&d, "/sbin/nft").unwrap().1, b"nft");
        assert_eq!(read_in(&d, "/usr/sbin/nft-abs").unwrap().1, b"nft");
        assert!(read_in(&d, "/usr/sbin/missing").is_err());
        assert_eq!(normalize(Path::new("/a/../../b/./c")), PathBuf::from("b/c"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
