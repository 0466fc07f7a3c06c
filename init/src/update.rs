//! A/B updates on UEFI boards (systemd-boot).
//!
//! `k3rs update apply BUNDLE` writes the bundle's root filesystem into the slot that is not
//! running, its kernel and initramfs into the EFI system partition (`/k3rs/<slot>/`), points that
//! slot's loader entry at them and asks systemd-boot to boot it once (`LoaderEntryOneShot`).
//! `loader.conf` keeps naming the running slot as the default, so a trial boot that goes wrong in
//! any way — a kernel panic (`panic=-1` reboots), a slot stage 1 cannot use, an API server that
//! does not answer within the trial timeout — ends in a reboot into the old slot. PID 1 commits a
//! trial boot (makes its entry the default) once the API answers; the outcome of the last update
//! is kept on the data partition for `k3rs update status`.

use crate::blockdev::{self, Probe};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The bundle's first member: what it holds and how to check it.
pub const MANIFEST_NAME: &str = "k3rs-update.toml";
pub const BUNDLE_FORMAT: u32 = 1;
/// The members after the manifest, in this order.
pub const ROOT_NAME: &str = "root.img";
pub const KERNEL_NAME: &str = "vmlinuz";
pub const INITRD_NAME: &str = "initrd.img";
/// systemd-boot's vendor GUID for its EFI variables.
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Where the update tool mounts the ESP read-write (PID 1 uses `/run/k3rs/esp` read-only).
const ESP_RW_MOUNT: &str = "/run/k3rs/esp-update";
const ESP_RO_MOUNT: &str = "/run/k3rs/esp-slot";
/// Under the data dir: the update waiting for its trial boot, and the outcome of the last one.
const PENDING_FILE: &str = "update/pending.toml";
const LAST_FILE: &str = "update/last.toml";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("not an A/B appliance boot: the kernel command line has no k3rs.slot=A|B")]
    NoSlot,
    #[error("no partition named {0}")]
    NoPartition(String),
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("bundle manifest: {0}")]
    Manifest(#[source] toml::de::Error),
    #[error("{name}: sha256 {got} does not match the manifest's {want}")]
    Checksum {
        name: String,
        got: String,
        want: String,
    },
    #[error("no EFI runtime variables here ({0}): this board has no one-shot boot (Raspberry Pi tryboot is not supported yet)")]
    NoEfi(String),
    #[error("loader.conf on the ESP names no k3rs slot as its default")]
    NoDefault,
    #[error("the ESP has no loader/loader.conf: this board does not boot through systemd-boot (Raspberry Pi tryboot is not supported yet)")]
    NoBootloader,
    #[error("slot {running} is on its trial boot (the default is still slot {default}): wait until it is committed or rolled back before applying another update")]
    OnTrial { running: String, default: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.into();
    move |e| UpdateError::Io(what, e)
}

/// `k3rs-update.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The board config's name the bundle was built for.
    pub board: String,
    pub version: String,
    /// The kernel command line, without `k3rs.slot=`.
    pub cmdline: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ManifestFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, UpdateError> {
        let m: Manifest = toml::from_str(text).map_err(UpdateError::Manifest)?;
        if m.format != BUNDLE_FORMAT {
            return Err(UpdateError::Bundle(format!(
                "format {} (this k3rs reads format {BUNDLE_FORMAT})",
                m.format
            )));
        }
        for want in [ROOT_NAME, KERNEL_NAME, INITRD_NAME] {
            if !m.files.iter().any(|f| f.name == want) {
                return Err(UpdateError::Bundle(format!("the manifest lists no {want}")));
            }
        }
        if m.cmdline
            .split_whitespace()
            .any(|w| w.starts_with("k3rs.slot="))
        {
            return Err(UpdateError::Bundle(
                "the manifest's cmdline must not name a slot".into(),
            ));
        }
        Ok(m)
    }

    fn file(&self, name: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.name == name)
    }

    fn member(&self, name: &str) -> Result<ManifestFile, UpdateError> {
        self.file(name)
            .cloned()
            .ok_or_else(|| UpdateError::Bundle(format!("the manifest lists no {name}")))
    }
}

/// The other slot.
pub fn other_slot(slot: &str) -> &'static str {
    if slot == "A" {
        "B"
    } else {
        "A"
    }
}

/// The loader entry's file name (its systemd-boot id) for a slot.
pub fn entry_id(slot: &str) -> String {
    format!("k3rs-{}.conf", slot.to_ascii_lowercase())
}

/// The slot `loader.conf`'s `default` line names.
pub fn default_slot(loader_conf: &str) -> Option<String> {
    let id = loader_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("default")).then(|| w.next()).flatten()
    })?;
    let slot = id.strip_prefix("k3rs-")?.strip_suffix(".conf")?;
    matches!(slot, "a" | "b").then(|| slot.to_ascii_uppercase())
}

/// `loader.conf` with its default set to `slot`'s entry, other lines kept.
pub fn with_default(loader_conf: &str, slot: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for l in loader_conf.lines() {
        if l.split_whitespace().next() == Some("default") {
            if !replaced {
                out.push_str(&format!("default {}\n", entry_id(slot)));
                replaced = true;
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !replaced {
        out.insert_str(0, &format!("default {}\n", entry_id(slot)));
    }
    out
}

/// A loader entry booting `slot` with the slot's own kernel and initramfs.
pub fn entry_text(slot: &str, version: &str, cmdline: &str) -> String {
    let dir = slot.to_ascii_lowercase();
    format!(
        "title k3rs {version} (slot {slot})\nlinux /k3rs/{dir}/{KERNEL_NAME}\ninitrd /k3rs/{dir}/{INITRD_NAME}\noptions {cmdline} k3rs.slot={slot}\n"
    )
}

/// `LoaderEntryOneShot`'s efivarfs contents: attributes (non-volatile, boot and runtime
/// access), then the entry id in UTF-16LE with its terminating NUL.
pub fn efi_string_var(value: &str) -> Vec<u8> {
    let mut v = 7u32.to_le_bytes().to_vec();
    for u in value.encode_utf16().chain(std::iter::once(0)) {
        v.extend_from_slice(&u.to_le_bytes());
    }
    v
}

/// The slot this system runs from (`k3rs.slot=` on the kernel command line).
pub fn running_slot() -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline_slot(&cmdline)
}

pub fn cmdline_slot(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("k3rs.slot="))
        .filter(|s| matches!(*s, "A" | "B"))
        .map(str::to_string)
}

fn partition(name: &str) -> Result<blockdev::BlockDev, UpdateError> {
    blockdev::list()
        .into_iter()
        .find(|d| d.partname.as_deref() == Some(name))
        .ok_or_else(|| UpdateError::NoPartition(name.into()))
}

/// The ESP mounted at `dir` for as long as this lives.
struct EspMount {
    dir: PathBuf,
}

impl EspMount {
    fn mount(dir: &str, read_only: bool) -> Result<EspMount, UpdateError> {
        use nix::mount::MsFlags;
        let esp = partition("ESP")?;
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(
            Some(esp.dev.as_path()),
            &dir,
            Some("vfat"),
            flags,
            None::<&str>,
        )
        .map_err(|e| {
            UpdateError::Io(
                format!("mounting the ESP ({})", esp.dev.display()),
                e.into(),
            )
        })?;
        Ok(EspMount { dir })
    }
}

impl Drop for EspMount {
    fn drop(&mut self) {
        nix::unistd::sync();
        let _ = nix::mount::umount(&self.dir);
    }
}

/// The slot the ESP's `loader.conf` boots by default (mounted read-only for the read).
pub fn esp_default_slot() -> Result<String, UpdateError> {
    let esp = EspMount::mount(ESP_RO_MOUNT, true)?;
    let conf = match std::fs::read_to_string(esp.dir.join("loader/loader.conf")) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UpdateError::NoBootloader)
        }
        Err(e) => return Err(UpdateError::Io("reading loader/loader.conf".into(), e)),
    };
    default_slot(&conf).ok_or(UpdateError::NoDefault)
}

/// The update waiting for its trial boot, or the outcome of the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UpdateRecord {
    pub version: String,
    pub slot: String,
    /// `pending`, `committed` or `rolled-back`.
    pub state: String,
    #[serde(default)]
    pub detail: String,
}

fn read_record(path: &Path) -> Option<UpdateRecord> {
    toml::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_record(path: &Path, r: &UpdateRecord) -> Result<(), UpdateError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let text = toml::to_string(r).map_err(|e| UpdateError::Bundle(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

pub fn pending(data_dir: &Path) -> Option<UpdateRecord> {
    read_record(&data_dir.join(PENDING_FILE))
}

pub fn last(data_dir: &Path) -> Option<UpdateRecord> {
    read_record(&data_dir.join(LAST_FILE))
}

/// Moves the pending update to `last.toml` with its outcome.
pub fn finish(data_dir: &Path, state: &str, detail: &str) -> Result<(), UpdateError> {
    let Some(mut r) = pending(data_dir) else {
        return Ok(());
    };
    r.state = state.into();
    r.detail = detail.into();
    write_record(&data_dir.join(LAST_FILE), &r)?;
    std::fs::remove_file(data_dir.join(PENDING_FILE)).map_err(io("removing pending.toml"))
}

/// Makes `slot` the default boot entry: the trial boot succeeded.
pub fn commit(slot: &str) -> Result<(), UpdateError> {
    let esp = EspMount::mount(ESP_RW_MOUNT, false)?;
    let path = esp.dir.join("loader/loader.conf");
    let conf = std::fs::read_to_string(&path).map_err(io("reading loader/loader.conf"))?;
    let tmp = esp.dir.join("loader/loader.new");
    std::fs::write(&tmp, with_default(&conf, slot)).map_err(io("writing loader/loader.new"))?;
    std::fs::rename(&tmp, &path).map_err(io("replacing loader/loader.conf"))
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    pub version: String,
    pub slot: String,
    pub root_bytes: u64,
}

/// Hashes what passes through to `inner`.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn check(name: &str, want: &ManifestFile, got: &str, bytes: u64) -> Result<(), UpdateError> {
    if bytes != want.size {
        return Err(UpdateError::Bundle(format!(
            "{name}: {bytes} bytes, the manifest says {}",
            want.size
        )));
    }
    if got != want.sha256 {
        return Err(UpdateError::Checksum {
            name: name.into(),
            got: got.into(),
            want: want.sha256.clone(),
        });
    }
    Ok(())
}

fn partition_bytes(dev: &blockdev::BlockDev) -> u64 {
    std::fs::read_to_string(format!("/sys/class/block/{}/size", dev.name))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .unwrap_or(0)
}

/// Writes `bundle` (a tar file, or a block device holding one) into the slot not running and
/// arms a one-shot trial boot of it. Nothing the running system boots from is touched until
/// every member has been written and checked.
pub fn apply(bundle: &Path, data_dir: &Path, board: Option<&str>) -> Result<Applied, UpdateError> {
    let running = running_slot().ok_or(UpdateError::NoSlot)?;
    let target = other_slot(&running);
    let efi = Path::new("/sys/firmware/efi");
    if !efi.exists() {
        return Err(UpdateError::NoEfi(efi.display().to_string()));
    }
    // On a trial boot the other slot is the way back: it must not be overwritten.
    let default = esp_default_slot()?;
    if default != running {
        return Err(UpdateError::OnTrial { running, default });
    }
    let file = std::fs::File::open(bundle).map_err(io(format!("opening {}", bundle.display())))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut entries = archive
        .entries()
        .map_err(io(format!("reading {}", bundle.display())))?;
    let mut first = next_member(&mut entries, MANIFEST_NAME)?;
    let mut text = String::new();
    first
        .read_to_string(&mut text)
        .map_err(io("reading the manifest"))?;
    drop(first);
    let manifest = Manifest::parse(&text)?;
    if let Some(b) = board {
        if manifest.board != b {
            return Err(UpdateError::Bundle(format!(
                "built for board {}, this node is {b}",
                manifest.board
            )));
        }
    }

    // The root filesystem goes straight onto the inactive slot's partition.
    let mut root = next_member(&mut entries, ROOT_NAME)?;
    let want = manifest.member(ROOT_NAME)?;
    let part = partition(&format!("root{target}"))?;
    let room = partition_bytes(&part);
    if want.size > room {
        return Err(UpdateError::Bundle(format!(
            "{ROOT_NAME} is {} bytes; slot {target} ({}) holds {room}",
            want.size,
            part.dev.display()
        )));
    }
    let mut head = vec![0u8; 4096.min(want.size as usize)];
    root.read_exact(&mut head)
        .map_err(io(format!("reading {ROOT_NAME}")))?;
    let mut probe_buf = head.clone();
    probe_buf.resize(4096, 0);
    if !matches!(blockdev::probe(&probe_buf), Probe::Erofs | Probe::Squashfs) {
        return Err(UpdateError::Bundle(format!(
            "{ROOT_NAME} is neither erofs nor squashfs"
        )));
    }
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(&part.dev)
        .map_err(io(format!("opening {}", part.dev.display())))?;
    let mut w = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, dev),
        hash: Sha256::new(),
        bytes: 0,
    };
    let what = format!("writing slot {target} ({})", part.dev.display());
    w.write_all(&head).map_err(io(what.clone()))?;
    std::io::copy(&mut root, &mut w).map_err(io(what.clone()))?;
    w.flush().map_err(io(what.clone()))?;
    let got = hex(w.hash.clone().finalize());
    let bytes = w.bytes;
    let dev = w
        .inner
        .into_inner()
        .map_err(|e| UpdateError::Io(what.clone(), e.into_error()))?;
    dev.sync_all().map_err(io(what))?;
    drop(root);
    check(ROOT_NAME, &want, &got, bytes)?;

    // Kernel and initramfs: staged as *.new on the ESP, renamed once both are whole.
    let esp = EspMount::mount(ESP_RW_MOUNT, false)?;
    let dir = esp.dir.join("k3rs").join(target.to_ascii_lowercase());
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    // Room first: the target slot's old kernel, and the image's shared pair once the running
    // slot no longer boots from it.
    for name in [KERNEL_NAME, INITRD_NAME] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let running_entry =
        std::fs::read_to_string(esp.dir.join("loader/entries").join(entry_id(&running)))
            .unwrap_or_default();
    if !running_entry.contains(&format!("/k3rs/{KERNEL_NAME}")) {
        for name in [KERNEL_NAME, INITRD_NAME] {
            let _ = std::fs::remove_file(esp.dir.join("k3rs").join(name));
        }
    }
    for name in [KERNEL_NAME, INITRD_NAME] {
        let mut member = next_member(&mut entries, name)?;
        let want = manifest.member(name)?;
        let staged = dir.join(format!("{name}.new"));
        let f =
            std::fs::File::create(&staged).map_err(io(format!("creating {}", staged.display())))?;
        let mut w = HashingWriter {
            inner: f,
            hash: Sha256::new(),
            bytes: 0,
        };
        std::io::copy(&mut member, &mut w).map_err(io(format!(
            "writing {} (is the ESP full?)",
            staged.display()
        )))?;
        w.inner
            .sync_all()
            .map_err(io(format!("writing {}", staged.display())))?;
        check(name, &want, &hex(w.hash.finalize()), w.bytes)?;
    }
    for name in [KERNEL_NAME, INITRD_NAME] {
        std::fs::rename(dir.join(format!("{name}.new")), dir.join(name))
            .map_err(io(format!("installing {name}")))?;
    }
    let entry = esp.dir.join("loader/entries").join(entry_id(target));
    std::fs::write(
        &entry,
        entry_text(target, &manifest.version, &manifest.cmdline),
    )
    .map_err(io(format!("writing {}", entry.display())))?;
    drop(esp);

    write_record(
        &data_dir.join(PENDING_FILE),
        &UpdateRecord {
            version: manifest.version.clone(),
            slot: target.into(),
            state: "pending".into(),
            detail: format!("applied while running slot {running}"),
        },
    )?;
    set_oneshot(&entry_id(target))?;
    Ok(Applied {
        version: manifest.version,
        slot: target.into(),
        root_bytes: bytes,
    })
}

fn next_member<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
    what: &str,
) -> Result<tar::Entry<'a, R>, UpdateError> {
    let entry = match entries.next() {
        Some(e) => e.map_err(io(format!("reading the bundle's {what}")))?,
        None => {
            return Err(UpdateError::Bundle(format!(
                "ends before its {what} (not a k3rs update bundle?)"
            )))
        }
    };
    let name = entry
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if name != what {
        return Err(UpdateError::Bundle(format!(
            "member {name:?} where {what} was expected (not a k3rs update bundle?)"
        )));
    }
    Ok(entry)
}

/// Asks systemd-boot to boot `entry` once, at the next boot only.
fn set_oneshot(entry: &str) -> Result<(), UpdateError> {
    let vars = Path::new(EFIVARS);
    let mounted = std::fs::read_dir(vars).is_ok_and(|mut d| d.next().is_some());
    if !mounted {
        std::fs::create_dir_all(vars).map_err(|e| UpdateError::NoEfi(e.to_string()))?;
        nix::mount::mount(
            Some("efivarfs"),
            vars,
            Some("efivarfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| UpdateError::NoEfi(format!("mounting efivarfs: {e}")))?;
    }
    let var = vars.join(format!("LoaderEntryOneShot-{LOADER_GUID}"));
    if var.exists() {
        // efivarfs marks existing variables immutable; a stale one-shot is replaced.
        clear_immutable(&var);
        let _ = std::fs::remove_file(&var);
    }
    // efivarfs takes a variable in one write(2).
    let data = efi_string_var(entry);
    let mut f = std::fs::File::create(&var).map_err(io(format!("creating {}", var.display())))?;
    let n = f
        .write(&data)
        .map_err(io(format!("writing {}", var.display())))?;
    if n != data.len() {
        return Err(UpdateError::NoEfi(format!(
            "short write to {} ({n} of {} bytes)",
            var.display(),
            data.len()
        )));
    }
    Ok(())
}

fn clear_immutable(path: &Path) {
    use std::os::fd::AsRawFd;
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;
    nix::ioctl_read!(fs_ioc_getflags, b'f', 1, libc::c_long);
    nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, libc::c_long);
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS on an open efivarfs file with a valid, live flags word;
    // the kernel reads or writes an int through it, which fits in the c_long.
    unsafe {
        if fs_ioc_getflags(f.as_raw_fd(), &mut flags).is_ok() {
            flags &= !(FS_IMMUTABLE_FL as libc::c_long);
            let _ = fs_ioc_setflags(f.as_raw_fd(), &flags);
        }
    }
}

/// What a bundle is made of.
pub struct BundleInputs<'a> {
    pub board: &'a str,
    pub version: &'a str,
    pub cmdline: &'a str,
    pub root: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The members' mtime (the build's SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

/// Writes a bundle: the manifest, then root filesystem, kernel and initramfs, with fixed
/// ownership and mtime so the same inputs give the same bytes.
pub fn write_bundle(out: &Path, inputs: &BundleInputs) -> Result<Manifest, UpdateError> {
    let members = [
        (ROOT_NAME, inputs.root),
        (KERNEL_NAME, inputs.kernel),
        (INITRD_NAME, inputs.initrd),
    ];
    let mtime = inputs.mtime;
    let mut files = Vec::new();
    for (name, path) in members {
        let mut f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let mut h = Sha256::new();
        let size =
            std::io::copy(&mut f, &mut h).map_err(io(format!("hashing {}", path.display())))?;
        files.push(ManifestFile {
            name: name.into(),
            size,
            sha256: hex(h.finalize()),
        });
    }
    let manifest = Manifest {
        format: BUNDLE_FORMAT,
        board: inputs.board.into(),
        version: inputs.version.into(),
        cmdline: inputs.cmdline.into(),
        files,
    };
    let text = toml::to_string(&manifest).map_err(|e| UpdateError::Bundle(e.to_string()))?;
    let tmp = out.with_extension("partial");
    let f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let header = |size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let what = format!("writing {}", tmp.display());
    b.append_data(
        &mut header(text.len() as u64),
        MANIFEST_NAME,
        text.as_bytes(),
    )
    .map_err(io(what.clone()))?;
    for (name, path) in members {
        let f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let size = f.metadata().map_err(io(what.clone()))?.len();
        b.append_data(&mut header(size), name, f)
            .map_err(io(what.clone()))?;
    }
    let w = b.into_inner().map_err(io(what.clone()))?;
    w.into_inner()
        .map_err(|e| UpdateError::Io(what.clone(), e.into_error()))?
        .sync_all()
        .map_err(io(what))?;
    std::fs::rename(&tmp, out).map_err(io(format!("writing {}", out.display())))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_conf_default_round_trip() {
        let conf = "default k3rs-a.conf\ntimeout 0\nconsole-mode keep\n";
        assert_eq!(default_slot(conf).as_deref(), Some("A"));
        let b = with_default(conf, "B");
        assert_eq!(b, "default k3rs-b.conf\ntimeout 0\nconsole-mode keep\n");
        assert_eq!(default_slot(&b).as_deref(), Some("B"));
        assert_eq!(default_slot("timeout 0\n"), None);
        assert_eq!(default_slot("default other.conf\n"), None);
        assert_eq!(
            with_default("timeout 0\n", "A"),
            "default k3rs-a.conf\ntimeout 0\n"
        );
    }

    #[test]
    fn slots_and_entries() {
        assert_eq!(
            cmdline_slot("console=ttyS0 k3rs.slot=B quiet").as_deref(),
            Some("B")
        );
        assert_eq!(cmdline_slot("k3rs.slot=none"), None);
        assert_eq!(other_slot("A"), "B");
        assert_eq!(other_slot("B"), "A");
        assert_eq!(
            entry_text("B", "1.2", "console=ttyS0 panic=-1"),
            "title k3rs 1.2 (slot B)\nlinux /k3rs/b/vmlinuz\ninitrd /k3rs/b/initrd.img\noptions console=ttyS0 panic=-1 k3rs.slot=B\n"
        );
    }

    #[test]
    fn efi_variable_layout() {
        let v = efi_string_var("k3rs-b.conf");
        assert_eq!(&v[..4], &[7, 0, 0, 0]);
        assert_eq!(&v[4..8], &[b'k', 0, b'3', 0]);
        assert_eq!(v.len(), 4 + 2 * ("k3rs-b.conf".len() + 1));
        assert_eq!(&v[v.len() - 2..], &[0, 0]);
    }

    #[test]
    fn bundle_round_trip_and_bad_manifests() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let mut erofs = vec![0u8; 8192];
        erofs[1024..1028].copy_from_slice(&[0xE2, 0xE1, 0xF5, 0xE0]);
        std::fs::write(&root, &erofs).unwrap();
        std::fs::write(d.path().join("k"), b"kernel").unwrap();
        std::fs::write(d.path().join("i"), b"initrd").unwrap();
        let out = d.path().join("u.k3rsupdate");
        let (k, i) = (d.path().join("k"), d.path().join("i"));
        let inputs = BundleInputs {
            board: "x86_64-uefi",
            version: "0.1+abc",
            cmdline: "console=ttyS0",
            root: &root,
            kernel: &k,
            initrd: &i,
            mtime: 1,
        };
        let m = write_bundle(&out, &inputs).unwrap();
        let again = d.path().join("again");
        write_bundle(&again, &inputs).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [MANIFEST_NAME, ROOT_NAME, KERNEL_NAME, INITRD_NAME]);
        let text = toml::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        assert_eq!(m.file(ROOT_NAME).unwrap().size, 8192);

        let mut future = m.clone();
        future.format = 2;
        let err = Manifest::parse(&toml::to_string(&future).unwrap()).unwrap_err();
        assert!(err.to_string().contains("format 2"), "{err}");
        let mut no_initrd = m.clone();
        no_initrd.files.retain(|f| f.name != INITRD_NAME);
        let err = Manifest::parse(&toml::to_string(&no_initrd).unwrap()).unwrap_err();
        assert!(err.to_string().contains("initrd.img"), "{err}");
        let mut slotted = m;
        slotted.cmdline.push_str(" k3rs.slot=A");
        assert!(Manifest::parse(&toml::to_string(&slotted).unwrap()).is_err());
    }

    #[test]
    fn records_move_from_pending_to_last() {
        let d = tempfile::tempdir().unwrap();
        write_record(
            &d.path().join(PENDING_FILE),
            &UpdateRecord {
                version: "2".into(),
                slot: "B".into(),
                state: "pending".into(),
                detail: String::new(),
            },
        )
        .unwrap();
        assert_eq!(pending(d.path()).unwrap().slot, "B");
        finish(d.path(), "rolled-back", "slot B never came up").unwrap();
        assert!(pending(d.path()).is_none());
        let l = last(d.path()).unwrap();
        assert_eq!((l.state.as_str(), l.version.as_str()), ("rolled-back", "2"));
        // Nothing pending: nothing to finish.
        finish(d.path(), "committed", "").unwrap();
        assert_eq!(last(d.path()).unwrap().state, "rolled-back");
    }
}
