//! Kernel modules without kmod: parse `modules.dep`, order dependencies first, `finit_module`.

use crate::sys::Sys;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("module {0:?} is not in modules.dep")]
    Unknown(String),
    #[error("modules.dep line {line}: no ':' separator")]
    Syntax { line: usize },
}

/// The name the kernel uses for a module file: `kernel/fs/ext4/ext4.ko` → `ext4`, dashes as
/// underscores (`crc32c-intel.ko` → `crc32c_intel`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module name → (path relative to the modules dir, direct dependencies' names).
#[derive(Debug, Default, Clone)]
pub struct ModuleDb {
    entries: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

impl ModuleDb {
    pub fn parse(modules_dep: &str) -> Result<ModuleDb, ModuleError> {
        let mut entries = BTreeMap::new();
        for (i, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, deps) = line
                .split_once(':')
                .ok_or(ModuleError::Syntax { line: i + 1 })?;
            let deps = deps.split_whitespace().map(module_name).collect();
            entries.insert(module_name(module), (module.trim().to_string(), deps));
        }
        Ok(ModuleDb {
            entries,
            builtin: BTreeSet::new(),
        })
    }

    /// Adds `modules.builtin` (one path per line): names that need no loading.
    pub fn with_builtin(mut self, modules_builtin: &str) -> ModuleDb {
        self.builtin = modules_builtin.lines().map(module_name).collect();
        self
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(|(p, _)| p.as_str())
    }

    /// Every module to load for `wanted`, dependencies before their users, each once. Built-in
    /// names are skipped. `libcrc32c` finds its algorithm through the usermode modprobe, which
    /// does not exist here, so `crc32c_generic` (when present) goes first.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        if self.entries.contains_key("crc32c_generic") {
            self.visit("crc32c_generic", &mut seen, &mut order)?;
        }
        for w in wanted {
            let name = w.replace('-', "_");
            if self.builtin.contains(&name) && !self.entries.contains_key(&name) {
                continue;
            }
            self.visit(&name, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (_, deps) = self
            .entries
            .get(name)
            .ok_or_else(|| ModuleError::Unknown(name.to_string()))?;
        // modules.dep lists the deepest dependency last; modprobe loads from the end.
        for d in deps.iter().rev() {
            self.visit(d, seen, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
}

/// Loads `wanted` (and dependencies) from `dir` (`/lib/modules/<release>`). `EEXIST` is
/// success; other failures are logged and loading goes on. Returns the names that failed.
pub fn load_modules(sys: &dyn Sys, dir: &Path, wanted: &[&str]) -> Vec<String> {
    let db = match sys.read_file(&dir.join("modules.dep")) {
        Ok(b) => match ModuleDb::parse(&String::from_utf8_lossy(&b)) {
            Ok(db) => db,
            Err(e) => {
                warn!(error = %e, "modules.dep unreadable; no modules loaded");
                return wanted.iter().map(|s| s.to_string()).collect();
            }
        },
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "no modules.dep; no modules loaded");
            return wanted.iter().map(|s| s.to_string()).collect();
        }
    };
    let db = match sys.read_file(&dir.join("modules.builtin")) {
        Ok(b) => db.with_builtin(&String::from_utf8_lossy(&b)),
        Err(_) => db,
    };
    let mut failed = Vec::new();
    let mut order = Vec::new();
    // Resolve each wanted module on its own so that one unknown name does not drop the rest.
    for w in wanted {
        match db.load_order(&[w]) {
            Ok(o) => {
                for m in o {
                    if !order.contains(&m) {
                        order.push(m);
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "skipping module");
                failed.push(w.to_string());
            }
        }
    }
    let mut loaded = 0;
    for name in &order {
        let Some(rel) = db.path_of(name) else {
            continue;
        };
        let path: PathBuf = dir.join(rel);
        match sys.load_module(&path) {
            Ok(()) => {
                loaded += 1;
                debug!(module = %name, "loaded");
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                warn!(module = %name, error = %e, "loading module failed");
                failed.push(name.clone());
            }
        }
    }
    info!(loaded, failed = failed.len(), "kernel modules loaded");
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::FakeSys;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/lib/libcrc32c.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
";

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
    }

    #[test]
    fn dependencies_first_each_once_crc32c_generic_leading() {
        let db = ModuleDb::parse(DEP).unwrap();
        let order = db.load_order(&["br_netfilter", "ext4", "bridge"]).unwrap();
        assert_eq!(
            order,
            vec![
                "crc32c_generic",
                "llc",
                "stp",
                "bridge",
                "br_netfilter",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
    }

    #[test]
    fn unknown_and_builtin() {
        let db = ModuleDb::parse(DEP)
            .unwrap()
            .with_builtin("kernel/drivers/net/loop.ko\n");
        assert_eq!(db.load_order(&["loop"]).unwrap(), vec!["crc32c_generic"]);
        assert_eq!(
            db.load_order(&["nope"]),
            Err(ModuleError::Unknown("nope".into()))
        );
        assert!(ModuleDb::parse("garbage").is_err());
    }

    #[test]
    fn loading_skips_eexist_and_reports_failures() {
        let sys = FakeSys::default()
            .with_file("/m/modules.dep", DEP)
            .failing("insmod /m/kernel/fs/mbcache.ko", libc::EEXIST)
            .failing("insmod /m/kernel/lib/crc16.ko", libc::ENOEXEC);
        let failed = load_modules(&sys, Path::new("/m"), &["ext4", "virtio_blk", "missing"]);
        assert_eq!(failed, vec!["missing".to_string(), "crc16".to_string()]);
        let calls = sys.calls();
        assert_eq!(calls[0], "insmod /m/kernel/crypto/crc32c_generic.ko");
        assert_eq!(
            calls.last().unwrap(),
            "insmod /m/kernel/drivers/block/virtio_blk.ko"
        );
        assert!(calls.contains(&"insmod /m/kernel/fs/ext4/ext4.ko".to_string()));
    }
}
