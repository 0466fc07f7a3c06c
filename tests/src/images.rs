//! Small test images built from Debian's busybox-static, as `docker save` archives.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "env", "ls", "nc", "wget", "true", "false", "id", "hostname",
    "test", "kill", "ps", "touch", "mkdir", "date", "tar", "tty", "stty",
];

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    builder.append_data(&mut h, path, data)?;
    Ok(())
}

fn dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    builder.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

/// Writes `docker save`-format `busybox:<tag>` to `out`: one layer with busybox and its applets.
pub fn write_busybox_archive(out: &Path, tag: &str) -> Result<()> {
    let busybox =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian's busybox-static)")?;
    let mut layer = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "tmp/"] {
        dir(&mut layer, d)?;
    }
    append(&mut layer, "bin/busybox", &busybox, 0o755)?;
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_uid(0);
        h.set_gid(0);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    append(
        &mut layer,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    let layer = layer.into_inner()?;
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_name = format!("{:x}.json", Sha256::digest(&config));
    let manifest = serde_json::to_vec(
        &serde_json::json!([{"Config": config_name, "RepoTags": [format!("busybox:{tag}")], "Layers": ["layer.tar"]}]),
    )?;
    let mut archive = tar::Builder::new(Vec::new());
    append(&mut archive, &config_name, &config, 0o644)?;
    append(&mut archive, "manifest.json", &manifest, 0o644)?;
    append(&mut archive, "layer.tar", &layer, 0o644)?;
    std::fs::write(out, archive.into_inner()?)?;
    Ok(())
}
