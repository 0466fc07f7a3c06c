//! `docker save` and OCI image layout archives.

use crate::{digest_hex, io_err, normalize, Error, Image, ImageConfig, ImageStore, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use tracing::{info, info_span};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawConfigInner {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<HashMap<String, Value>>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawConfigInner>,
}

/// Parses an image config blob (OCI or Docker).
pub fn parse_config(data: &[u8]) -> Result<ImageConfig> {
    let raw: RawConfig = serde_json::from_slice(data)
        .map_err(|e| Error::InvalidImage(format!("image config: {e}")))?;
    let c = raw.config.unwrap_or_default();
    let mut ports: Vec<String> = c.exposed_ports.unwrap_or_default().into_keys().collect();
    ports.sort();
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        exposed_ports: ports,
    })
}

/// Extracts the archive's regular files into a temp dir, then reads it as an OCI layout
/// (`index.json`) or a `docker save` archive (`manifest.json`).
pub fn import(store: &ImageStore, path: &Path) -> Result<Vec<Image>> {
    let _span = info_span!("import", archive = %path.display()).entered();
    let tmp = store.tmp_path("import");
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let res = (|| {
        let f = fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let mut r = std::io::BufReader::new(f);
        let mut magic = [0u8; 2];
        r.read_exact(&mut magic)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let head = std::io::Cursor::new(magic.to_vec()).chain(r);
        let reader: Box<dyn Read> = if magic == [0x1f, 0x8b] {
            Box::new(flate2::read::GzDecoder::new(head))
        } else {
            Box::new(head)
        };
        let mut ar = tar::Archive::new(reader);
        for e in ar.entries().map_err(io_err("reading archive"))? {
            let mut e = e.map_err(io_err("reading archive entry"))?;
            if e.header().entry_type().is_file() || e.header().entry_type().is_dir() {
                e.unpack_in(&tmp).map_err(io_err("extracting archive"))?;
            }
        }
        if tmp.join("index.json").exists() {
            import_oci_layout(store, &tmp)
        } else if tmp.join("manifest.json").exists() {
            import_docker(store, &tmp)
        } else {
            Err(Error::InvalidArchive(
                "neither index.json (OCI layout) nor manifest.json (docker save) found".into(),
            ))
        }
    })();
    let _ = fs::remove_dir_all(&tmp);
    let images = res?;
    info!(count = images.len(), "archive imported");
    Ok(images)
}

fn read_json(path: &Path) -> Result<Value> {
    let d = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_json::from_slice(&d)
        .map_err(|e| Error::InvalidArchive(format!("{}: {e}", path.display())))
}

fn layout_blob(dir: &Path, digest: &str) -> Result<std::path::PathBuf> {
    Ok(dir.join("blobs/sha256").join(digest_hex(digest)?))
}

fn import_oci_layout(store: &ImageStore, dir: &Path) -> Result<Vec<Image>> {
    let index = read_json(&dir.join("index.json"))?;
    let mut out = Vec::new();
    for desc in index["manifests"].as_array().cloned().unwrap_or_default() {
        let ann = &desc["annotations"];
        let name = ann["io.containerd.image.name"]
            .as_str()
            .or_else(|| ann["org.opencontainers.image.ref.name"].as_str())
            .filter(|n| n.contains('/') || n.contains(':'))
            .map(normalize)
            .transpose()?;
        let digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let mt = desc["mediaType"].as_str().unwrap_or(MT_OCI_MANIFEST);
        let manifest_digest = resolve_platform(dir, &digest, mt)?;
        let manifest_bytes = fs::read(layout_blob(dir, &manifest_digest)?)
            .map_err(io_err(format!("reading manifest {manifest_digest}")))?;
        let manifest: Value = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| Error::InvalidArchive(format!("manifest: {e}")))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| Error::InvalidArchive("manifest without config".into()))?
            .to_string();
        store.put_blob_file_copy(&layout_blob(dir, &config_digest)?, &config_digest)?;
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            store.put_blob_file_copy(&layout_blob(dir, &d)?, &d)?;
            layers.push((d, l["mediaType"].as_str().unwrap_or_default().to_string()));
        }
        let stored = store.put_blob(&manifest_bytes)?;
        let reference = name.unwrap_or_else(|| stored.clone());
        out.push(store.commit_image(reference, stored, config_digest, layers)?);
    }
    Ok(out)
}

/// For an index, picks the manifest for this machine's platform.
fn resolve_platform(dir: &Path, digest: &str, media_type: &str) -> Result<String> {
    if media_type != MT_OCI_INDEX && media_type != MT_DOCKER_LIST {
        return Ok(digest.to_string());
    }
    let idx = read_json(&layout_blob(dir, digest)?)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    for m in idx["manifests"].as_array().cloned().unwrap_or_default() {
        let p = &m["platform"];
        if p["os"] == "linux" && p["architecture"] == arch {
            let d = m["digest"].as_str().unwrap_or_default();
            let mt = m["mediaType"].as_str().unwrap_or(MT_OCI_MANIFEST);
            return resolve_platform(dir, d, mt);
        }
    }
    Err(Error::InvalidImage(format!(
        "index {digest} has no linux/{arch} manifest"
    )))
}

fn import_docker(store: &ImageStore, dir: &Path) -> Result<Vec<Image>> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for entry in manifest.as_array().cloned().unwrap_or_default() {
        let config_path = entry["Config"]
            .as_str()
            .ok_or_else(|| Error::InvalidArchive("manifest.json entry without Config".into()))?;
        let config_bytes =
            fs::read(dir.join(config_path)).map_err(io_err(format!("reading {config_path}")))?;
        let config_digest = store.put_blob(&config_bytes)?;
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for l in entry["Layers"].as_array().cloned().unwrap_or_default() {
            let lp = l.as_str().unwrap_or_default();
            let src = dir.join(lp);
            let copy = store.tmp_path("layer-blob");
            fs::copy(&src, &copy).map_err(io_err(format!("reading {lp}")))?;
            let d = store.put_blob_file(&copy, None)?;
            let size = fs::metadata(store.blob_path(&d)?)
                .map(|m| m.len())
                .unwrap_or(0);
            descs.push(
                serde_json::json!({"mediaType": MT_OCI_LAYER_TAR, "digest": d, "size": size}),
            );
            layers.push((d, MT_OCI_LAYER_TAR.to_string()));
        }
        // docker save has no manifest: synthesize the OCI one the image would have.
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_bytes.len()},
            "layers": descs,
        });
        let manifest_digest = store.put_blob(&serde_json::to_vec(&m).expect("json"))?;
        let tags: Vec<String> = entry["RepoTags"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        if tags.is_empty() {
            out.push(store.commit_image(
                manifest_digest.clone(),
                manifest_digest,
                config_digest,
                layers,
            )?);
        } else {
            for t in tags {
                out.push(store.commit_image(
                    normalize(&t)?,
                    manifest_digest.clone(),
                    config_digest.clone(),
                    layers.clone(),
                )?);
            }
        }
    }
    Ok(out)
}

impl ImageStore {
    /// Copies a file into the blob store, checking it against `digest`.
    pub(crate) fn put_blob_file_copy(&self, src: &Path, digest: &str) -> Result<()> {
        if self.blob_path(digest)?.exists() {
            return Ok(());
        }
        let copy = self.tmp_path("blob");
        fs::copy(src, &copy).map_err(io_err(format!("reading blob {digest}")))?;
        self.put_blob_file(&copy, Some(digest)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields() {
        let c = parse_config(
            br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","x"],
            "Env":["PATH=/bin"],"WorkingDir":"/w","User":"1000:1000","ExposedPorts":{"80/tcp":{}}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, vec!["/bin/sh"]);
        assert_eq!(c.cmd, vec!["-c", "x"]);
        assert_eq!(c.working_dir, "/w");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.exposed_ports, vec!["80/tcp"]);
        assert_eq!(parse_config(b"{}").unwrap(), ImageConfig::default());
    }
}
