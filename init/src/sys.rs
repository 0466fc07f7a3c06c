//! The narrow syscall surface PID 1 uses, behind a trait so the ordering logic (mounts, module
//! loading, sysctls) is unit-testable without root. `RealSys` calls the kernel; `FakeSys` records.

use std::io;
use std::path::Path;

/// Flags for [`Sys::mount`]; a subset of `MS_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub rdonly: bool,
    pub noatime: bool,
}

impl MountFlags {
    pub const NONE: MountFlags = MountFlags {
        nosuid: false,
        nodev: false,
        noexec: false,
        rdonly: false,
        noatime: false,
    };
    pub const SECURE: MountFlags = MountFlags {
        nosuid: true,
        nodev: true,
        noexec: true,
        rdonly: false,
        noatime: false,
    };

    fn to_nix(self) -> nix::mount::MsFlags {
        use nix::mount::MsFlags;
        let mut f = MsFlags::empty();
        f.set(MsFlags::MS_NOSUID, self.nosuid);
        f.set(MsFlags::MS_NODEV, self.nodev);
        f.set(MsFlags::MS_NOEXEC, self.noexec);
        f.set(MsFlags::MS_RDONLY, self.rdonly);
        f.set(MsFlags::MS_NOATIME, self.noatime);
        f
    }
}

/// What PID 1 asks of the kernel while bringing the system up.
pub trait Sys {
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// Loads one module file with `finit_module(2)`.
    fn load_module(&self, path: &Path) -> io::Result<()>;
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
}

/// The real kernel.
pub struct RealSys;

impl Sys for RealSys {
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(Some(source), target, Some(fstype), flags.to_nix(), data)
            .map_err(io::Error::from)
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount(target).map_err(io::Error::from)
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty())
            .map_err(io::Error::from)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        std::fs::write(path, contents)
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }
}

/// A recording fake: every call is appended to `calls` as one line; files live in a map;
/// `fail` makes calls whose line starts with a prefix fail with the given errno.
#[derive(Default)]
pub struct FakeSys {
    pub calls: std::cell::RefCell<Vec<String>>,
    pub files: std::cell::RefCell<std::collections::BTreeMap<String, Vec<u8>>>,
    pub fail: Vec<(String, i32)>,
}

impl FakeSys {
    pub fn with_file(self, path: &str, contents: &str) -> Self {
        self.files
            .borrow_mut()
            .insert(path.to_string(), contents.as_bytes().to_vec());
        self
    }

    pub fn failing(mut self, prefix: &str, errno: i32) -> Self {
        self.fail.push((prefix.to_string(), errno));
        self
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn record(&self, line: String) -> io::Result<()> {
        let failure = self
            .fail
            .iter()
            .find(|(p, _)| line.starts_with(p.as_str()))
            .map(|(_, e)| *e);
        self.calls.borrow_mut().push(line);
        match failure {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

impl Sys for FakeSys {
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record(format!("mkdir {}", path.display()))
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        _flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(format!(
            "mount {source} {} {fstype} {}",
            target.display(),
            data.unwrap_or("-")
        ))
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        self.record(format!("umount {}", target.display()))
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        self.record(format!("insmod {}", path.display()))
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .borrow()
            .get(&path.display().to_string())
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.record(format!(
            "write {} {}",
            path.display(),
            String::from_utf8_lossy(contents).trim_end()
        ))?;
        self.files
            .borrow_mut()
            .insert(path.display().to_string(), contents.to_vec());
        Ok(())
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("hostname {name}"))
    }
}
