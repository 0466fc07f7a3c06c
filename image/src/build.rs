//! The image recipe: kernel package → modules closure → initramfs → root slots → ESP → GPT disk.

use crate::board::{Board, Boot, SlotFs};
use crate::cpio::{Archive, Entry};
use crate::debs::{self, Apt};
use k3rs_init::modules::ModuleDb;
use sha2::{Digest, Sha256};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Tool { cmd: String, stderr: String },
    #[error("`{cmd}` could not be started (is it installed? run tests/install-appliance-deps.sh)")]
    Missing {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("modules.dep of the kernel package")]
    Modules(#[source] k3rs_init::modules::ModuleError),
    #[error("writing the update bundle")]
    Update(#[source] k3rs_init::update::UpdateError),
    #[error("no xz stream in the kernel image {0}")]
    NoXz(String),
    #[error("board {board}: {what} is not supported by this builder yet")]
    Unsupported { board: String, what: String },
    #[error("{library} is needed by a tool but in none of the [tools] packages (unpacked at {sysroot}); add its Debian package to the board config")]
    MissingLibrary { library: String, sysroot: String },
    #[error("{path} is not a readable ELF file: {message}")]
    Elf { path: String, message: String },
}

pub(crate) fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, ImageError> {
    r.map_err(|source| ImageError::Io {
        what: what.into(),
        source,
    })
}

pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| ImageError::Missing {
        cmd: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            cmd: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub board: Board,
    /// The board file (hashed into the input digest).
    pub board_file: PathBuf,
    /// The static `k3rs` binary for the board's target.
    pub k3rs_bin: PathBuf,
    /// `rootfs/`: files copied into the image as they are.
    pub rootfs_dir: PathBuf,
    /// Downloads and unpacked kernels are kept here between builds.
    pub cache_dir: PathBuf,
    pub out: PathBuf,
    /// Timestamps inside the image (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// Rebuild even when the inputs digest matches the last build.
    pub force: bool,
    /// One-line apt sources the packages are fetched from ([`debs::DEFAULT_APT_SOURCES`]).
    pub apt_sources: String,
}

/// What was built. Direct-boot files sit in `<out>.boot/`.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub disk: PathBuf,
    pub boot_dir: PathBuf,
    pub vmlinux: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    /// The board's first device tree (Raspberry Pi boards), for direct boots.
    pub dtb: Option<PathBuf>,
    pub cmdline: String,
    pub disk_bytes: u64,
    /// The A/B update bundle (UEFI boards).
    pub bundle: Option<PathBuf>,
    pub reused: bool,
}

const MIB: u64 = 1024 * 1024;
/// Bump when the recipe changes, so cached images are rebuilt.
const RECIPE_VERSION: &str = "k3rs-image/7";

/// The A/B update bundle built with a UEFI image: `<out>.update.tar`.
pub fn bundle_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".update.tar");
    PathBuf::from(s)
}

/// What the image calls itself (`/etc/k3rs/version`, the update bundle's version): the
/// package version and the start of the inputs digest, so every distinct build differs.
fn image_version(digest: &str) -> String {
    format!(
        "{}+{}",
        env!("CARGO_PKG_VERSION"),
        digest.get(..12).unwrap_or(digest)
    )
}

fn boot_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".boot");
    PathBuf::from(s)
}

fn hash_tree(h: &mut Sha256, dir: &Path) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    for f in files {
        h.update(
            f.strip_prefix(dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(std::fs::read(&f).unwrap_or_default());
    }
}

/// Digest of every input: recipe version, board file, k3rs binary, rootfs/, epoch.
pub fn inputs_digest(o: &BuildOptions) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    h.update(RECIPE_VERSION);
    h.update(io(
        format!("reading {}", o.board_file.display()),
        std::fs::read(&o.board_file),
    )?);
    h.update(io(
        format!("reading {}", o.k3rs_bin.display()),
        std::fs::read(&o.k3rs_bin),
    )?);
    hash_tree(&mut h, &o.rootfs_dir);
    h.update(o.source_date_epoch.to_le_bytes());
    h.update(&o.apt_sources);
    Ok(format!("{:x}", h.finalize()))
}

fn output_of(o: &BuildOptions, reused: bool) -> BuildOutput {
    let bd = boot_dir(&o.out);
    BuildOutput {
        disk: o.out.clone(),
        vmlinux: bd.join("vmlinux"),
        vmlinuz: bd.join("vmlinuz"),
        initrd: bd.join("initrd.img"),
        dtb: match &o.board.boot {
            Boot::RpiFirmware { device_trees, .. } => device_trees
                .first()
                .map(|d| bd.join(Path::new(d).file_name().unwrap_or_default())),
            Boot::SystemdBoot { .. } => None,
        },
        cmdline: std::fs::read_to_string(bd.join("cmdline"))
            .unwrap_or_default()
            .trim()
            .to_string(),
        boot_dir: bd,
        disk_bytes: std::fs::metadata(&o.out).map(|m| m.len()).unwrap_or(0),
        bundle: Some(bundle_path(&o.out)).filter(|p| p.exists()),
        reused,
    }
}

/// Builds the disk image (or reuses the last one when the inputs are unchanged).
pub fn build(o: &BuildOptions) -> Result<BuildOutput, ImageError> {
    let started = Instant::now();
    let b = &o.board;
    let digest = inputs_digest(o)?;
    let stamp = {
        let mut s = o.out.as_os_str().to_owned();
        s.push(".inputs");
        PathBuf::from(s)
    };
    let wants_bundle = matches!(b.boot, Boot::SystemdBoot { .. });
    if !o.force
        && o.out.exists()
        && (!wants_bundle || bundle_path(&o.out).exists())
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(digest.as_str())
    {
        info!(disk = %o.out.display(), "inputs unchanged; reusing the image");
        return Ok(output_of(o, true));
    }
    let triplet = match b.arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => {
            return Err(ImageError::Unsupported {
                board: b.name.clone(),
                what: format!("arch {other}"),
            })
        }
    };
    let mut apt = Apt::new(&o.cache_dir, &o.apt_sources);
    let _ = std::fs::remove_file(&stamp);
    let work = o.cache_dir.join(format!("work-{}", b.name));
    let _ = std::fs::remove_dir_all(&work);
    io("creating the work dir", std::fs::create_dir_all(&work))?;
    let bd = boot_dir(&o.out);
    io("creating the boot dir", std::fs::create_dir_all(&bd))?;

    info!("[1/7] kernel package {}", b.kernel.package);
    let kroot = kernel_tree(o, &mut apt)?;
    let moddir_rel = format!("lib/modules/{}", b.kernel.release);
    let moddir = kroot.join(&moddir_rel);

    info!("[2/7] kernel modules: {} wanted", b.kernel.modules.len());
    let dep = io(
        "reading modules.dep",
        std::fs::read_to_string(moddir.join("modules.dep")),
    )?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let db = ModuleDb::parse(&dep)
        .map_err(ImageError::Modules)?
        .with_builtin(&builtin);
    let mut closure: Vec<String> = Vec::new();
    for m in &b.kernel.modules {
        match db.load_order(&[m.as_str()]) {
            Ok(order) => {
                for n in order {
                    if !closure.contains(&n) {
                        closure.push(n);
                    }
                }
            }
            Err(e) => warn!(module = %m, error = %e, "module not in the kernel package; skipped"),
        }
    }
    let mut tree = Archive::default();
    let mut trimmed_dep = String::new();
    let mut sorted = closure.clone();
    sorted.sort();
    for name in &sorted {
        let rel = db.path_of(name).unwrap_or_default().to_string();
        let data = io(
            format!("reading module {rel}"),
            std::fs::read(moddir.join(&rel)),
        )?;
        tree.add(
            &format!("{moddir_rel}/{rel}"),
            Entry::File { mode: 0o644, data },
        );
    }
    for line in dep.lines() {
        let Some((m, _)) = line.split_once(':') else {
            continue;
        };
        if closure.contains(&k3rs_init::modules::module_name(m)) {
            trimmed_dep.push_str(line);
            trimmed_dep.push('\n');
        }
    }
    tree.add(
        &format!("{moddir_rel}/modules.dep"),
        Entry::File {
            mode: 0o644,
            data: trimmed_dep.into_bytes(),
        },
    );
    tree.add(
        &format!("{moddir_rel}/modules.builtin"),
        Entry::File {
            mode: 0o644,
            data: builtin.into_bytes(),
        },
    );
    info!("      {} modules with dependencies", closure.len());

    info!("[3/7] root tree: k3rs, tools, rootfs/");
    let k3rs = io(
        format!("reading {}", o.k3rs_bin.display()),
        std::fs::read(&o.k3rs_bin),
    )?;
    info!(
        "      k3rs binary {:.1} MiB",
        k3rs.len() as f64 / MIB as f64
    );
    tree.add(
        "init",
        Entry::File {
            mode: 0o755,
            data: k3rs,
        },
    );
    tree.add(
        "bin/k3rs",
        Entry::Symlink {
            target: "/init".into(),
        },
    );
    tree.add(
        "sbin/init",
        Entry::Symlink {
            target: "/init".into(),
        },
    );
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "var/lib/k3rs",
        "etc/k3rs",
        "mnt",
        "sysroot",
    ] {
        tree.add(d, Entry::Dir { mode: 0o755 });
    }
    tree.add("tmp", Entry::Dir { mode: 0o1777 });
    tree.add("root", Entry::Dir { mode: 0o700 });
    if !b.tools.binaries.is_empty() {
        let sysroot = debs::unpacked(
            &mut apt,
            &o.cache_dir,
            "tools",
            &b.tools.packages,
            &b.deb_arch,
        )?;
        crate::tools::add_binaries(&mut tree, &sysroot, triplet, &b.tools.binaries)?;
    }
    tree.add(
        "etc/k3rs/modules",
        Entry::File {
            mode: 0o644,
            data: b.kernel.modules.join("\n").into_bytes(),
        },
    );
    let version = image_version(&digest);
    for (path, text) in [("etc/k3rs/board", &b.name), ("etc/k3rs/version", &version)] {
        tree.add(
            path,
            Entry::File {
                mode: 0o644,
                data: format!("{text}\n").into_bytes(),
            },
        );
    }
    tree.add(
        "etc/k3rs/build-epoch",
        Entry::File {
            mode: 0o644,
            data: format!("{}\n", o.source_date_epoch).into_bytes(),
        },
    );
    add_rootfs(&mut tree, &o.rootfs_dir, &o.rootfs_dir)?;
    let mut initramfs = tree.clone();
    initramfs.add(
        "dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    // Tells PID 1 it runs from the initramfs and should switch to the root slot.
    initramfs.add(
        "etc/k3rs/initramfs",
        Entry::File {
            mode: 0o644,
            data: Vec::new(),
        },
    );

    info!("[4/7] initramfs (cpio newc, uncompressed) and kernel");
    let initrd = initramfs.to_newc(o.source_date_epoch as u32);
    io(
        "writing initrd.img",
        std::fs::write(bd.join("initrd.img"), &initrd),
    )?;
    let vmlinuz = kroot.join(&b.kernel.image);
    io(
        "copying the kernel",
        std::fs::copy(&vmlinuz, bd.join("vmlinuz")),
    )?;
    if b.arch == "x86_64" {
        extract_vmlinux(&vmlinuz, &bd.join("vmlinux"))?;
    }
    io(
        "writing cmdline",
        std::fs::write(bd.join("cmdline"), format!("{}\n", b.kernel.cmdline)),
    )?;
    info!("      initrd {:.1} MiB", initrd.len() as f64 / MIB as f64);

    info!(
        "[5/7] root slots A ({:?}) and B ({:?})",
        b.disk.root_a, b.disk.root_b
    );
    let staging = work.join("rootfs");
    materialize(&tree, &staging)?;
    let slot_a = work.join("root-a.img");
    let slot_b = work.join("root-b.img");
    make_slot(b.disk.root_a, &staging, &slot_a, o.source_date_epoch)?;
    make_slot(b.disk.root_b, &staging, &slot_b, o.source_date_epoch)?;

    if let Boot::SystemdBoot { .. } = b.boot {
        let bundle = bundle_path(&o.out);
        info!(
            "      update bundle {} (slot A's root, kernel, initramfs)",
            bundle.display()
        );
        k3rs_init::update::write_bundle(
            &bundle,
            &k3rs_init::update::BundleInputs {
                board: &b.name,
                version: &version,
                cmdline: &b.kernel.cmdline,
                root: &slot_a,
                kernel: &bd.join("vmlinuz"),
                initrd: &bd.join("initrd.img"),
                mtime: o.source_date_epoch,
            },
        )
        .map_err(ImageError::Update)?;
    }

    let esp = work.join("esp.img");
    let esp_type = match &b.boot {
        Boot::SystemdBoot { .. } => {
            info!("[6/7] EFI system partition (vfat, systemd-boot)");
            make_esp(o, &mut apt, &bd, &esp)?;
            "ef00"
        }
        Boot::RpiFirmware { .. } => {
            info!("[6/7] firmware partition (vfat, Raspberry Pi firmware)");
            make_rpi_boot(o, &mut apt, &kroot, &bd, &esp)?;
            "0700"
        }
    };

    let qcow2 = is_qcow2(&o.out);
    // qcow2: the raw disk is assembled in the work dir and converted at the end.
    let raw = if qcow2 {
        work.join("disk.raw")
    } else {
        o.out.clone()
    };
    info!("[7/7] GPT disk {}", raw.display());
    // The boot partition keeps the GPT name "ESP" on every board: PID 1 finds k3rs.toml there.
    let parts = [
        ("ESP", esp_type, b.disk.esp_mib, Some(esp)),
        ("rootA", "8300", b.disk.root_mib, Some(slot_a)),
        ("rootB", "8300", b.disk.root_mib, Some(slot_b)),
        ("data", "8300", b.disk.data_mib, None),
    ];
    assemble_gpt(&raw, &parts)?;
    if let Boot::RpiFirmware { .. } = b.boot {
        write_hybrid_mbr(&raw, MIB / 512, b.disk.esp_mib * MIB / 512)?;
    }
    if qcow2 {
        info!("      qemu-img convert -O qcow2 {}", o.out.display());
        convert_to_qcow2(&raw, &o.out)?;
    }
    io("writing the inputs stamp", std::fs::write(&stamp, &digest))?;
    let _ = std::fs::remove_dir_all(&work);
    let out = output_of(o, false);
    let allocated = allocated_bytes(&o.out);
    info!(
        "built {} in {:.1}s: {:.1} MiB apparent, {:.1} MiB allocated",
        o.out.display(),
        started.elapsed().as_secs_f64(),
        out.disk_bytes as f64 / MIB as f64,
        allocated as f64 / MIB as f64
    );
    Ok(out)
}

/// Whether `--out` asks for qcow2 (by extension).
pub fn is_qcow2(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("qcow2"))
}

/// Converts a raw disk to qcow2 with `qemu-img convert` (zero clusters, such as the blank data
/// partition, are left unallocated). The output is a function of the raw bytes only: qcow2
/// headers carry no timestamps or random ids, so reproducible in, reproducible out.
pub fn convert_to_qcow2(raw: &Path, out: &Path) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out))?;
    Ok(())
}

/// Bytes actually allocated on disk (the data partition is a hole until first boot).
pub fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn kernel_tree(o: &BuildOptions, apt: &mut Apt) -> Result<PathBuf, ImageError> {
    let k = &o.board.kernel;
    let root = o.cache_dir.join("kernels").join(&k.package);
    if root
        .join("lib/modules")
        .join(&k.release)
        .join("modules.dep")
        .exists()
    {
        info!("      cached at {}", root.display());
        return Ok(root);
    }
    let deb = apt.download(&k.package, &o.board.deb_arch)?;
    let tmp = o
        .cache_dir
        .join("kernels")
        .join(format!(".{}.tmp", k.package));
    let _ = std::fs::remove_dir_all(&tmp);
    io("creating the kernel dir", std::fs::create_dir_all(&tmp))?;
    info!("      dpkg-deb -x {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    run(Command::new("depmod").arg("-b").arg(&tmp).arg(&k.release))?;
    let _ = std::fs::remove_dir_all(&root);
    io("placing the kernel tree", std::fs::rename(&tmp, &root))?;
    Ok(root)
}

fn add_rootfs(tree: &mut Archive, base: &Path, dir: &Path) -> Result<(), ImageError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p
            .strip_prefix(base)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if rel == "README.md" {
            continue;
        }
        if p.is_dir() {
            tree.add(&rel, Entry::Dir { mode: 0o755 });
            add_rootfs(tree, base, &p)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let mode = if e
                .metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
            {
                0o755
            } else {
                0o644
            };
            tree.add(
                &rel,
                Entry::File {
                    mode,
                    data: io(format!("reading {}", p.display()), std::fs::read(&p))?,
                },
            );
        }
    }
    Ok(())
}

fn materialize(tree: &Archive, dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    io("creating the staging dir", std::fs::create_dir_all(dir))?;
    for (path, e) in tree.entries() {
        let p = dir.join(path);
        match e {
            Entry::Dir { mode } => {
                io(
                    format!("mkdir {}", p.display()),
                    std::fs::create_dir_all(&p),
                )?;
                io(
                    "chmod",
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)),
                )?;
            }
            Entry::File { mode, data } => {
                io(format!("writing {}", p.display()), std::fs::write(&p, data))?;
                io(
                    "chmod",
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)),
                )?;
            }
            Entry::Symlink { target } => io("symlink", std::os::unix::fs::symlink(target, &p))?,
            Entry::CharDev { .. } => {}
        }
    }
    Ok(())
}

fn make_slot(fs: SlotFs, dir: &Path, out: &Path, epoch: u64) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    match fs {
        SlotFs::Erofs => run(Command::new("mkfs.erofs")
            .args([
                "-zlz4hc",
                "--all-root",
                "-U",
                "6b337273-0000-4000-8000-00000000000a",
            ])
            .arg(format!("-T{epoch}"))
            .arg(out)
            .arg(dir))?,
        SlotFs::Squashfs => run(Command::new("mksquashfs")
            .arg(dir)
            .arg(out)
            .args([
                "-comp",
                "zstd",
                "-all-root",
                "-noappend",
                "-no-progress",
                "-quiet",
                "-mkfs-time",
            ])
            .arg(epoch.to_string())
            .arg("-all-time")
            .arg(epoch.to_string()))?,
    };
    info!(
        "      {} {:.1} MiB",
        out.display(),
        std::fs::metadata(out).map(|m| m.len()).unwrap_or(0) as f64 / MIB as f64
    );
    Ok(())
}

fn make_esp(o: &BuildOptions, apt: &mut Apt, bd: &Path, esp: &Path) -> Result<(), ImageError> {
    let Boot::SystemdBoot {
        efi_package,
        efi_binary,
        efi_name,
    } = &o.board.boot
    else {
        unreachable!("make_esp is called for systemd-boot boards only");
    };
    let efi_root = debs::unpacked(
        apt,
        &o.cache_dir,
        "efi",
        std::slice::from_ref(efi_package),
        &o.board.deb_arch,
    )?;
    let cmdline = &o.board.kernel.cmdline;
    let entry = |slot: &str| {
        format!("title k3rs (slot {slot})\nlinux /k3rs/vmlinuz\ninitrd /k3rs/initrd.img\noptions {cmdline} k3rs.slot={slot}\n")
    };
    let files = vec![
        (
            format!("EFI/BOOT/{efi_name}"),
            read(&efi_root.join(efi_binary))?,
        ),
        (
            "loader/loader.conf".to_string(),
            b"default k3rs-a.conf\ntimeout 0\nconsole-mode keep\n".to_vec(),
        ),
        ("loader/entries/k3rs-a.conf".into(), entry("A").into_bytes()),
        ("loader/entries/k3rs-b.conf".into(), entry("B").into_bytes()),
        ("k3rs/vmlinuz".into(), read(&bd.join("vmlinuz"))?),
        ("k3rs/initrd.img".into(), read(&bd.join("initrd.img"))?),
    ];
    make_vfat(
        esp,
        o.board.disk.esp_mib,
        "ESP",
        &files,
        o.source_date_epoch,
    )
}

/// The Raspberry Pi boot partition: the GPU firmware, `config.txt` and `cmdline.txt` (slot A),
/// the kernel, initramfs and device trees, all at the partition's root where the firmware looks.
fn make_rpi_boot(
    o: &BuildOptions,
    apt: &mut Apt,
    kroot: &Path,
    bd: &Path,
    out: &Path,
) -> Result<(), ImageError> {
    let Boot::RpiFirmware {
        firmware_package,
        firmware_files,
        device_trees,
        config_txt,
    } = &o.board.boot
    else {
        unreachable!("make_rpi_boot is called for rpi-firmware boards only");
    };
    let fw_root = debs::unpacked(
        apt,
        &o.cache_dir,
        "firmware",
        std::slice::from_ref(firmware_package),
        &o.board.deb_arch,
    )?;
    let base = |p: &str| {
        Path::new(p)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let mut files = Vec::new();
    for f in firmware_files {
        files.push((base(f), read(&fw_root.join(f))?));
    }
    for d in device_trees {
        let data = read(&kroot.join(d))?;
        // Direct boots (QEMU's raspi3b has no GPU firmware) take the dtb from the boot dir.
        io(
            "writing the device tree",
            std::fs::write(bd.join(base(d)), &data),
        )?;
        files.push((base(d), data));
    }
    files.push((
        "config.txt".into(),
        format!("{}\n", config_txt.trim()).into_bytes(),
    ));
    files.push((
        "cmdline.txt".into(),
        format!("{} k3rs.slot=A\n", o.board.kernel.cmdline).into_bytes(),
    ));
    files.push(("vmlinuz".into(), read(&bd.join("vmlinuz"))?));
    files.push(("initrd.img".into(), read(&bd.join("initrd.img"))?));
    make_vfat(
        out,
        o.board.disk.esp_mib,
        "BOOT",
        &files,
        o.source_date_epoch,
    )
}

fn read(p: &Path) -> Result<Vec<u8>, ImageError> {
    io(format!("reading {}", p.display()), std::fs::read(p))
}

/// A FAT filesystem image of `mib` MiB holding `files` (paths relative to its root), every
/// timestamp and the volume id fixed so the bytes are reproducible.
fn make_vfat(
    out: &Path,
    mib: u64,
    label: &str,
    files: &[(String, Vec<u8>)],
    epoch: u64,
) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", label, "-i", "4b335253", "--invariant"])
        .arg(out)
        .arg((mib * 1024).to_string()))?;
    let staging = out.with_extension("files");
    let _ = std::fs::remove_dir_all(&staging);
    let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, _) in &sorted {
        let mut parent = Path::new(rel.as_str()).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    let mtools = |args: &mut Command| -> Result<(), ImageError> {
        run(args.env("SOURCE_DATE_EPOCH", epoch.to_string())).map(|_| ())
    };
    // BTreeSet order puts a parent before its children.
    for d in &dirs {
        mtools(Command::new("mmd").arg("-i").arg(out).arg(format!("::{d}")))?;
    }
    io("esp staging", std::fs::create_dir_all(&staging))?;
    for (i, (rel, data)) in sorted.iter().enumerate() {
        // mcopy -m keeps the source's mtime: stage each file with the fixed one.
        let src = staging.join(i.to_string());
        io("esp staging", std::fs::write(&src, data))?;
        let f = io(
            "esp staging",
            std::fs::File::options().write(true).open(&src),
        )?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        io("esp mtime", f.set_modified(t))?;
        mtools(
            Command::new("mcopy")
                .arg("-m")
                .arg("-i")
                .arg(out)
                .arg(&src)
                .arg(format!("::{rel}")),
        )?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// Turns the protective MBR sgdisk wrote into a hybrid one: entry 1 is the FAT boot partition
/// (type 0x0c, which the Raspberry Pi boot ROM and bootcode.bin look for; the Pi 3 reads no
/// GPT), entry 2 the 0xEE partition from LBA 1 covering the GPT itself. Linux still reads the
/// GPT (an 0xEE entry at LBA 1 marks the MBR as hybrid), so PARTLABELs keep working.
fn write_hybrid_mbr(disk: &Path, boot_start: u64, boot_sectors: u64) -> Result<(), ImageError> {
    let mut f = io(
        "opening the disk",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk),
    )?;
    let mut mbr = [0u8; 512];
    io(
        "reading the MBR",
        std::io::Read::read_exact(&mut f, &mut mbr),
    )?;
    let entry = |ty: u8, start: u64, sectors: u64| -> [u8; 16] {
        let mut e = [0u8; 16];
        // CHS fields unused (LBA addressing): the conventional "beyond CHS" markers.
        e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[4] = ty;
        e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
        e
    };
    mbr[446..462].copy_from_slice(&entry(0x0c, boot_start, boot_sectors));
    mbr[462..478].copy_from_slice(&entry(0xee, 1, boot_start - 1));
    mbr[478..510].fill(0);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    io("seek", f.seek(SeekFrom::Start(0)))?;
    io("writing the hybrid MBR", f.write_all(&mbr))?;
    io("sync", f.sync_all())
}

/// Lays out partitions 1 MiB aligned, writes the GPT with sgdisk (fixed GUIDs) and copies the
/// filesystem images in. Partitions without an image stay holes (zeros).
fn assemble_gpt(
    out: &Path,
    parts: &[(&str, &str, u64, Option<PathBuf>)],
) -> Result<(), ImageError> {
    let total_mib: u64 = 1 + parts.iter().map(|p| p.2).sum::<u64>() + 1;
    let _ = std::fs::remove_file(out);
    let f = io("creating the disk", std::fs::File::create(out))?;
    io("sizing the disk", f.set_len(total_mib * MIB))?;
    drop(f);
    let mut cmd = Command::new("sgdisk");
    cmd.arg("-U").arg("6b337273-6469-736b-0000-000000000000");
    let mut start = MIB / 512;
    let mut offsets = Vec::new();
    for (i, (name, ty, mib, _)) in parts.iter().enumerate() {
        let n = i + 1;
        let sectors = mib * MIB / 512;
        cmd.arg(format!("-n{n}:{start}:{}", start + sectors - 1))
            .arg(format!("-t{n}:{ty}"))
            .arg(format!("-c{n}:{name}"))
            .arg(format!("-u{n}:6b337273-7061-7274-0000-{n:012}"));
        offsets.push(start * 512);
        start += sectors;
    }
    cmd.arg(out);
    run(&mut cmd)?;
    let mut disk = io(
        "opening the disk",
        std::fs::OpenOptions::new().write(true).open(out),
    )?;
    for ((name, _, mib, img), off) in parts.iter().zip(offsets) {
        let Some(img) = img else { continue };
        let data = io(format!("reading {}", img.display()), std::fs::read(img))?;
        if data.len() as u64 > mib * MIB {
            return Err(ImageError::Tool {
                cmd: format!("partition {name}"),
                stderr: format!(
                    "{} bytes do not fit in {mib} MiB; raise it in the board config",
                    data.len()
                ),
            });
        }
        // Zero chunks are skipped: the disk file starts as one hole, so they read back as
        // zeros and take no space (a filesystem's free space, most of the ESP).
        const CHUNK: usize = 64 * 1024;
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            if chunk.iter().all(|b| *b == 0) {
                continue;
            }
            io("seek", disk.seek(SeekFrom::Start(off + (i * CHUNK) as u64)))?;
            io("writing a partition", disk.write_all(chunk))?;
        }
    }
    io("sync", disk.sync_all())
}

/// Debian's x86 bzImage holds an xz-compressed ELF `vmlinux`; QEMU boots that ELF directly
/// (PVH), skipping the emulated decompression (several seconds under TCG).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), ImageError> {
    let data = io("reading the kernel", std::fs::read(bzimage))?;
    let magic = b"\xFD7zXZ\x00";
    let pos = data
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or_else(|| ImageError::NoXz(bzimage.display().to_string()))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| ImageError::Missing {
            cmd: "xz".into(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let tail = data[pos..].to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&tail);
    });
    let output = io("running xz", child.wait_with_output())?;
    let _ = writer.join();
    if !output.stdout.starts_with(b"\x7fELF") {
        return Err(ImageError::NoXz(bzimage.display().to_string()));
    }
    io("writing vmlinux", std::fs::write(out, &output.stdout))
}
