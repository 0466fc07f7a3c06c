//! Test images built from Debian's busybox-static: OCI layout and `docker save` archives
//! written with the `tar` crate. Shared by the k3rs-images and k3rs-runtime tests.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::Path;

pub const BUSYBOX: &str = "/bin/busybox";
pub const APPLETS: &[&str] = &[
    "sh", "echo", "env", "sleep", "nc", "cat", "hostname", "true", "false", "ls", "tail", "id",
    "head", "wc", "grep",
];

/// Why root-only tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix_is_root() {
        return Some("needs root (mounts, namespaces, cgroups)".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "{BUSYBOX} missing: run tests/install-runtime-deps.sh (busybox-static)"
        ));
    }
    None
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

pub fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format!(
        "sha256:{}",
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer builder.
pub struct Layer(tar::Builder<Vec<u8>>);

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A root filesystem with busybox-static and its applets in /bin.
pub fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read(BUSYBOX).expect("busybox-static");
    let mut l = Layer::new();
    for d in ["bin", "etc", "proc", "sys", "dev", "root", "data"] {
        l = l.dir(d, 0o755);
    }
    l = l.dir("tmp", 0o1777);
    l = l.file("bin/busybox", 0o755, &bb);
    for a in APPLETS {
        l = l.symlink(&format!("bin/{a}"), "busybox");
    }
    l.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    .build()
}

pub fn config_json(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

pub fn manifest_json(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
    let ls: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": sha256(l), "size": l.len()})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": ls,
    }))
    .unwrap()
}

/// Writes an OCI image layout archive holding one image named `reference`.
pub fn write_oci_archive(path: &Path, reference: &str, layers: &[Vec<u8>]) {
    let config = config_json(layers);
    let manifest = manifest_json(&config, layers);
    let tag = reference.rsplit(':').next().unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": reference,
                            "org.opencontainers.image.ref.name": tag},
        }],
    }))
    .unwrap();
    let mut out = Layer::new()
        .file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", 0o644, &index)
        .dir("blobs", 0o755)
        .dir("blobs/sha256", 0o755);
    for blob in layers.iter().chain([&config, &manifest]) {
        let d = sha256(blob);
        out = out.file(&format!("blobs/sha256/{}", &d[7..]), 0o644, blob);
    }
    std::fs::write(path, out.build()).unwrap();
}

/// Writes a `docker save` archive holding one image tagged `tag`.
pub fn write_docker_archive(path: &Path, tag: &str, layers: &[Vec<u8>]) {
    let config = config_json(layers);
    let cfg_name = format!("{}.json", &sha256(&config)[7..]);
    let mut out = Layer::new().file(&cfg_name, 0o644, &config);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("layer{i}/layer.tar");
        out = out.dir(&format!("layer{i}"), 0o755).file(&n, 0o644, l);
        names.push(n);
    }
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": cfg_name, "RepoTags": [tag], "Layers": names}
    ]))
    .unwrap();
    std::fs::write(path, out.file("manifest.json", 0o644, &manifest).build()).unwrap();
}
