//! Debian packages for the image, fetched through a private apt configuration.
//!
//! The builder keeps its own apt lists, sources and architecture list under the cache dir, so it
//! needs no `dpkg --add-architecture` on the host, and it can reach `non-free-firmware` (the
//! Raspberry Pi boot firmware lives there) without touching the host's `/etc/apt`.

use crate::build::{io, run, ImageError};
use std::path::{Path, PathBuf};
use std::process::Command;
use tracing::info;

/// Bookworm main (kernels, nftables, e2fsprogs), its updates and security suites, and
/// non-free-firmware (raspi-firmware), as one-line apt sources.
pub const DEFAULT_APT_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm bookworm-updates main non-free-firmware
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main non-free-firmware
";

/// A private apt: lists, sources and downloaded `.deb`s under `<cache>/apt` and `<cache>/debs`.
pub struct Apt {
    root: PathBuf,
    debs: PathBuf,
    sources: String,
    updated: bool,
}

impl Apt {
    pub fn new(cache_dir: &Path, sources: &str) -> Apt {
        // apt resolves relative directories against its own (/etc/apt, /var/lib/apt …).
        let cache_dir = std::path::absolute(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf());
        Apt {
            root: cache_dir.join("apt"),
            debs: cache_dir.join("debs"),
            sources: sources.to_string(),
            updated: false,
        }
    }

    /// apt-get with the private configuration, knowing the host's architectures and `arch`.
    fn command(&self, arch: &str) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-q")
            .arg(format!(
                "-oDir::Etc::SourceList={}",
                self.root.join("sources.list").display()
            ))
            .arg(format!(
                "-oDir::Etc::SourceParts={}",
                self.root.join("sources.list.d").display()
            ))
            .arg(format!(
                "-oDir::State::Lists={}",
                self.root.join("lists").display()
            ))
            .arg(format!(
                "-oDir::Cache={}",
                self.root.join("cache").display()
            ))
            .arg(format!(
                "-oDir::State::Status={}",
                self.root.join("status").display()
            ))
            // The host's `_apt` user cannot write into the cache dir; downloads are verified
            // against the signed Release files all the same.
            .arg("-oAPT::Sandbox::User=root");
        let mut arches = vec!["amd64", "arm64"];
        if !arches.contains(&arch) {
            arches.push(arch);
        }
        for (i, a) in arches.iter().enumerate() {
            cmd.arg(format!("-oAPT::Architectures::{i}={a}"));
        }
        cmd
    }

    /// `apt-get update` once per build for the architectures asked for (the lists are small;
    /// refreshing them keeps package versions current, as the host's apt would).
    fn update(&mut self, arch: &str) -> Result<(), ImageError> {
        if self.updated {
            return Ok(());
        }
        for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            io(
                "creating the apt dirs",
                std::fs::create_dir_all(self.root.join(d)),
            )?;
        }
        io(
            "writing the apt sources",
            std::fs::write(self.root.join("sources.list"), &self.sources),
        )?;
        io(
            "writing the apt status",
            std::fs::write(self.root.join("status"), ""),
        )?;
        info!("      apt-get update (private lists, {arch})");
        run(self.command(arch).arg("update"))?;
        self.updated = true;
        Ok(())
    }

    fn cached(&self, package: &str, arch: &str) -> Option<PathBuf> {
        std::fs::read_dir(&self.debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{package}_"))
                        && (n.ends_with(&format!("_{arch}.deb")) || n.ends_with("_all.deb"))
                })
            })
    }

    /// The `.deb` of `package` for `arch` (or `all`), downloaded unless already cached.
    pub fn download(&mut self, package: &str, arch: &str) -> Result<PathBuf, ImageError> {
        if let Some(p) = self.cached(package, arch) {
            return Ok(p);
        }
        io(
            "creating the deb cache",
            std::fs::create_dir_all(&self.debs),
        )?;
        self.update(arch)?;
        info!("      apt-get download {package}:{arch}");
        let download = |qualifier: &str| {
            run(self
                .command(arch)
                .arg("download")
                .arg(format!("{package}:{qualifier}"))
                .current_dir(&self.debs))
        };
        // Architecture-independent packages (firmware) answer only to `:all`.
        if let Err(e) = download(arch) {
            download("all").map_err(|_| e)?;
        }
        self.cached(package, arch).ok_or_else(|| ImageError::Tool {
            cmd: format!("apt-get download {package}:{arch}"),
            stderr: "no .deb appeared".into(),
        })
    }
}

/// Unpacks `packages` (for `arch`) into `dir` once; the set of packages names the directory, so
/// a changed list unpacks afresh.
pub fn unpacked(
    apt: &mut Apt,
    cache_dir: &Path,
    kind: &str,
    packages: &[String],
    arch: &str,
) -> Result<PathBuf, ImageError> {
    let mut key = packages.to_vec();
    key.sort();
    let name = format!("{kind}-{arch}-{}", short_digest(&key.join(" ")));
    let root = cache_dir.join("unpacked").join(&name);
    let done = root.join(".k3rs-unpacked");
    if done.exists() {
        info!("      cached at {}", root.display());
        return Ok(root);
    }
    let tmp = cache_dir.join("unpacked").join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    io("creating the unpack dir", std::fs::create_dir_all(&tmp))?;
    for p in packages {
        let deb = apt.download(p, arch)?;
        info!("      dpkg-deb -x {}", deb.display());
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    }
    io(
        "marking the unpack done",
        std::fs::write(tmp.join(".k3rs-unpacked"), ""),
    )?;
    let _ = std::fs::remove_dir_all(&root);
    io("placing the unpacked tree", std::fs::rename(&tmp, &root))?;
    Ok(root)
}

fn short_digest(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
