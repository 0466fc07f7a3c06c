//! `k3rs-images`: a content-addressed OCI image store.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      manifests, configs and layer blobs, shared between images
//! <root>/layers/<hex>/           each layer blob unpacked once (overlay-format whiteouts)
//! <root>/images.json             reference → manifest, config and layer digests
//! <root>/rootfs/<container>/     upper/, work/, merged/ (overlayfs) and layers.json
//! ```
//! Images come from `docker save` / OCI layout archives ([`ImageStore::import_archive`]) or from
//! a registry ([`ImageStore::pull`], concurrent pulls of one reference share one download).
//! Containers get an overlayfs root whose lower dirs are the unpacked layers
//! ([`ImageStore::prepare_rootfs`]).

#![forbid(unsafe_code)]

mod archive;
pub mod gc;
pub mod keyring;
mod layer;
mod pull;
pub mod registries;

pub use pull::{Auth, PullOptions};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{info, info_span};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    #[error("image {0} not found")]
    NotFound(String),
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error("digest mismatch for {expected}: got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("unsupported layer media type {0}")]
    UnsupportedLayer(String),
    #[error("pulling {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("mounting the root filesystem of {container}: {message}")]
    Mount { container: String, message: String },
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    #[error("image {reference} is in use by container(s) {}; remove them first", containers.join(", "))]
    InUse {
        reference: String,
        containers: Vec<String>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The parts of an image's config the kubelet needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalized reference (`docker.io/library/busybox:latest`), or the manifest digest for an
    /// unnamed import.
    pub reference: String,
    /// The config digest (what `crictl images` calls IMAGE ID).
    pub id: String,
    pub manifest_digest: String,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// Sum of the blob sizes.
    pub size: u64,
    pub config: ImageConfig,
    /// Unix seconds of the last pull, import or container start (least recently used images
    /// are garbage-collected first).
    #[serde(default)]
    pub last_used: u64,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<Image>,
}

/// Normalizes a reference like Docker: `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize(reference: &str) -> Result<String> {
    if reference.starts_with("sha256:") {
        return Ok(reference.to_string());
    }
    let r: oci_client::Reference = reference
        .parse()
        .map_err(|_| Error::InvalidReference(reference.to_string()))?;
    Ok(r.whole())
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(Error::InvalidImage(format!(
            "unsupported digest {digest:?}"
        ))),
    }
}

type InflightPull = Arc<tokio::sync::Mutex<Option<Result<Image, String>>>>;

/// The image store. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    root: PathBuf,
    index: Mutex<()>,
    inflight: Mutex<HashMap<String, InflightPull>>,
    downloaded_blobs: std::sync::atomic::AtomicU64,
}

impl ImageStore {
    /// Opens (creating) a store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "rootfs", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        Ok(ImageStore {
            inner: Arc::new(StoreInner {
                root,
                index: Mutex::new(()),
                inflight: Mutex::new(HashMap::new()),
                downloaded_blobs: 0.into(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .inner
            .root
            .join("blobs/sha256")
            .join(digest_hex(digest)?))
    }

    pub(crate) fn layer_dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.inner.root.join("layers").join(digest_hex(digest)?))
    }

    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Number of blobs fetched from registries by this store (shows pull deduplication).
    pub fn downloaded_blobs(&self) -> u64 {
        self.inner
            .downloaded_blobs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores `data` as a blob and returns its digest.
    pub(crate) fn put_blob(&self, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", sha256_hex(data));
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            let tmp = self.tmp_path("blob");
            fs::write(&tmp, data).map_err(io_err(format!("writing {}", tmp.display())))?;
            fs::rename(&tmp, &path).map_err(io_err(format!("storing {}", path.display())))?;
        }
        Ok(digest)
    }

    /// Moves a file into the blob store after checking its digest.
    pub(crate) fn put_blob_file(&self, file: &Path, expected: Option<&str>) -> Result<String> {
        let digest = format!("sha256:{}", file_sha256(file)?);
        if let Some(e) = expected {
            if e != digest {
                return Err(Error::DigestMismatch {
                    expected: e.into(),
                    actual: digest,
                });
            }
        }
        let path = self.blob_path(&digest)?;
        if path.exists() {
            let _ = fs::remove_file(file);
        } else {
            fs::rename(file, &path).map_err(io_err(format!("storing {}", path.display())))?;
        }
        Ok(digest)
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(io_err(format!("reading blob {digest}")))
    }

    fn load_index(&self) -> Result<Index> {
        let p = self.inner.root.join("images.json");
        match fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d)
                .map_err(|e| Error::InvalidImage(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_err(format!("reading {}", p.display()))(e)),
        }
    }

    fn save_index(&self, idx: &Index) -> Result<()> {
        let p = self.inner.root.join("images.json");
        let tmp = self.tmp_path("index");
        fs::write(&tmp, serde_json::to_vec_pretty(idx).expect("serializable"))
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &p).map_err(io_err(format!("writing {}", p.display())))
    }

    /// Records an image whose blobs are all stored: unpacks its layers and adds it to the index
    /// (replacing an older image of the same reference).
    pub(crate) fn commit_image(
        &self,
        reference: String,
        manifest_digest: String,
        config_digest: String,
        layers: Vec<(String, String)>,
    ) -> Result<Image> {
        let _span = info_span!("image", reference = %reference).entered();
        let config_bytes = self.read_blob(&config_digest)?;
        let config = archive::parse_config(&config_bytes)?;
        let mut size = config_bytes.len() as u64;
        for (digest, media_type) in &layers {
            layer::unpack_once(self, digest, media_type)?;
            size += fs::metadata(self.blob_path(digest)?)
                .map(|m| m.len())
                .unwrap_or(0);
        }
        let image = Image {
            reference,
            id: config_digest,
            manifest_digest,
            layers: layers.into_iter().map(|(d, _)| d).collect(),
            size,
            config,
            last_used: unix_now(),
        };
        let _g = self.inner.index.lock().expect("index lock");
        let mut idx = self.load_index()?;
        idx.images.retain(|i| i.reference != image.reference);
        idx.images.push(image.clone());
        idx.images.sort_by(|a, b| a.reference.cmp(&b.reference));
        self.save_index(&idx)?;
        info!(id = %image.id, layers = image.layers.len(), "image stored");
        Ok(image)
    }

    /// Imports a `docker save` tarball or an OCI image layout archive (plain or gzip).
    /// Returns the images it named (an OCI layout entry without a name is stored under its
    /// manifest digest).
    pub fn import_archive(&self, path: &Path) -> Result<Vec<Image>> {
        archive::import(self, path)
    }

    /// Pulls `reference` from its registry (see [`PullOptions`]). Concurrent pulls of one
    /// reference share a single download.
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image> {
        pull::pull(self, reference, opts).await
    }

    /// Pushes the stored image `reference` to the registry reference `target`.
    pub async fn push(
        &self,
        reference: &str,
        target: &str,
        auth: &Auth,
        plain_http: bool,
    ) -> Result<()> {
        pull::push(self, reference, target, auth, plain_http).await
    }

    pub(crate) fn inflight(&self) -> &Mutex<HashMap<String, InflightPull>> {
        &self.inner.inflight
    }

    pub(crate) fn count_download(&self) {
        self.inner
            .downloaded_blobs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The image stored under `reference` (normalized first), or by manifest digest or id.
    pub fn get(&self, reference: &str) -> Result<Option<Image>> {
        let idx = self.load_index()?;
        let norm = normalize(reference).ok();
        Ok(idx.images.into_iter().find(|i| {
            Some(&i.reference) == norm.as_ref()
                || i.manifest_digest == reference
                || i.id == reference
        }))
    }

    fn must_get(&self, reference: &str) -> Result<Image> {
        self.get(reference)?
            .ok_or_else(|| Error::NotFound(reference.to_string()))
    }

    /// The image's entrypoint, cmd, env, working dir and user.
    pub fn config(&self, reference: &str) -> Result<ImageConfig> {
        Ok(self.must_get(reference)?.config)
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<Image>> {
        Ok(self.load_index()?.images)
    }

    /// The containers (root filesystems) made from `image`: created, running or exited but not
    /// yet removed.
    pub fn containers_using(&self, image: &Image) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for id in list_names(&self.inner.root.join("rootfs"))? {
            let dir = self.inner.root.join("rootfs").join(&id);
            let uses = match fs::read_to_string(dir.join("image")) {
                Ok(image_id) => image_id.trim() == image.id,
                // Root filesystems from before the image was recorded: compare layers.
                Err(_) => fs::read(dir.join("layers.json"))
                    .ok()
                    .and_then(|d| serde_json::from_slice::<Vec<String>>(&d).ok())
                    .is_some_and(|l| l == image.layers),
            };
            if uses {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes an image unless a container uses it (like `crictl rmi`), with every blob and
    /// unpacked layer no other image uses.
    pub fn remove_unused(&self, reference: &str) -> Result<()> {
        let image = self.must_get(reference)?;
        let containers = self.containers_using(&image)?;
        if !containers.is_empty() {
            return Err(Error::InUse {
                reference: image.reference,
                containers,
            });
        }
        self.remove(&image.reference)
    }

    /// Removes an image and every blob and unpacked layer no other image or prepared root
    /// filesystem uses.
    pub fn remove(&self, reference: &str) -> Result<()> {
        let image = self.must_get(reference)?;
        let _g = self.inner.index.lock().expect("index lock");
        let mut idx = self.load_index()?;
        idx.images.retain(|i| i.reference != image.reference);
        self.save_index(&idx)?;
        self.gc(&idx)?;
        info!(reference = %image.reference, "image removed");
        Ok(())
    }

    fn gc(&self, idx: &Index) -> Result<()> {
        let mut keep: HashSet<String> = HashSet::new();
        for i in &idx.images {
            keep.insert(digest_hex(&i.manifest_digest)?.to_string());
            keep.insert(digest_hex(&i.id)?.to_string());
            for l in &i.layers {
                keep.insert(digest_hex(l)?.to_string());
            }
        }
        let mut keep_layers = keep.clone();
        for id in list_names(&self.inner.root.join("rootfs"))? {
            let p = self.inner.root.join("rootfs").join(id).join("layers.json");
            if let Ok(d) = fs::read(&p) {
                let layers: Vec<String> = serde_json::from_slice(&d).unwrap_or_default();
                for l in layers {
                    if let Ok(h) = digest_hex(&l) {
                        keep_layers.insert(h.to_string());
                    }
                }
            }
        }
        for name in list_names(&self.inner.root.join("blobs/sha256"))? {
            if !keep_layers.contains(&name) {
                let _ = fs::remove_file(self.inner.root.join("blobs/sha256").join(&name));
            }
        }
        for name in list_names(&self.inner.root.join("layers"))? {
            if !keep_layers.contains(&name) {
                let p = self.inner.root.join("layers").join(&name);
                fs::remove_dir_all(&p).map_err(io_err(format!("removing {}", p.display())))?;
            }
        }
        Ok(())
    }

    /// Marks an image as used now (for least-recently-used garbage collection).
    fn touch(&self, reference: &str) -> Result<()> {
        let _g = self.inner.index.lock().expect("index lock");
        let mut idx = self.load_index()?;
        let now = unix_now();
        let mut changed = false;
        for i in idx.images.iter_mut().filter(|i| i.reference == reference) {
            // Second resolution is plenty; skip rewriting the index for a burst of starts.
            if i.last_used != now {
                i.last_used = now;
                changed = true;
            }
        }
        if changed {
            self.save_index(&idx)?;
        }
        Ok(())
    }

    fn rootfs_dir(&self, container_id: &str) -> Result<PathBuf> {
        let ok = !container_id.is_empty()
            && !container_id.starts_with('.')
            && container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(Error::InvalidId(container_id.to_string()));
        }
        Ok(self.inner.root.join("rootfs").join(container_id))
    }

    /// Mounts an overlayfs root filesystem for a container: the image's unpacked layers as lower
    /// dirs, a fresh upper and work dir. Returns the merged dir. Idempotent.
    pub fn prepare_rootfs(&self, reference: &str, container_id: &str) -> Result<PathBuf> {
        let image = self.must_get(reference)?;
        let dir = self.rootfs_dir(container_id)?;
        let merged = dir.join("merged");
        if layer::is_mountpoint(&merged) {
            return Ok(merged);
        }
        for d in ["upper", "work", "merged"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        fs::write(
            dir.join("layers.json"),
            serde_json::to_vec(&image.layers).expect("serializable"),
        )
        .map_err(io_err("writing layers.json"))?;
        fs::write(dir.join("image"), &image.id).map_err(io_err("writing the image id"))?;
        self.touch(&image.reference)?;
        let mut lowers = Vec::new();
        for l in image.layers.iter().rev() {
            lowers.push(self.layer_dir(l)?.display().to_string());
        }
        layer::mount_overlay(&lowers, &dir.join("upper"), &dir.join("work"), &merged).map_err(
            |message| Error::Mount {
                container: container_id.into(),
                message,
            },
        )?;
        Ok(merged)
    }

    /// Unmounts and deletes a container's root filesystem (missing is fine).
    pub fn release_rootfs(&self, container_id: &str) -> Result<()> {
        let dir = self.rootfs_dir(container_id)?;
        let merged = dir.join("merged");
        if layer::is_mountpoint(&merged) {
            layer::unmount(&merged).map_err(|message| Error::Mount {
                container: container_id.into(),
                message,
            })?;
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_err(format!("reading {}", path.display())))?;
    Ok(hex(&h.finalize()))
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_string());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/a/b:1").unwrap(),
            "127.0.0.1:5000/a/b:1"
        );
        assert!(normalize("UPPER//bad").is_err());
    }

    #[test]
    fn digests_are_checked() {
        assert!(digest_hex("sha256:abc").is_err());
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
    }
}
