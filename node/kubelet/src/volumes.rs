//! Pod volumes on the node: emptyDir (disk or tmpfs), configMap, secret, downwardAPI, projected
//! (service-account token, root CA, namespace) and hostPath. ConfigMap/Secret/projected
//! contents are rewritten on every sync when they changed, so mounted files update in place.
//! With `fsGroup`, volume contents belong to that group and directories are setgid, as the
//! kubelet's `SetVolumeOwnership` does.

use crate::container_spec::field_ref;
use base64::Engine;
use k3rs_client::{Client, Resource};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {message}")]
    Source { volume: String, message: String },
    #[error("volume {volume}: writing {path}")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume}: mounting tmpfs")]
    Mount {
        volume: String,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("volume {0}: this volume type is not supported yet")]
    Unsupported(String),
}

/// A file to project into a volume directory.
struct Projected {
    path: String,
    data: Vec<u8>,
    mode: Option<u32>,
}

fn write_files(
    volume: &str,
    dir: &Path,
    files: &[Projected],
    default_mode: u32,
) -> Result<(), VolumeError> {
    let io = |path: &Path| {
        let volume = volume.to_string();
        let path = path.to_path_buf();
        move |source| VolumeError::Io {
            volume,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let wanted: std::collections::HashSet<PathBuf> =
        files.iter().map(|f| dir.join(&f.path)).collect();
    for f in files {
        if f.path.split('/').any(|s| s == ".." || s.is_empty()) {
            return Err(VolumeError::Source {
                volume: volume.into(),
                message: format!("invalid path {:?}", f.path),
            });
        }
        let p = dir.join(&f.path);
        if std::fs::read(&p).ok().as_deref() == Some(f.data.as_slice()) {
            continue;
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // Write then rename, so a reader never sees a half-written file.
        let tmp = p.with_extension("k3rs-tmp");
        std::fs::write(&tmp, &f.data).map_err(io(&tmp))?;
        std::fs::set_permissions(
            &tmp,
            std::fs::Permissions::from_mode(f.mode.unwrap_or(default_mode)),
        )
        .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))?;
    }
    // Keys removed from the source disappear from the volume.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() && !wanted.contains(&p) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    Ok(())
}

fn mode_of(v: &Value) -> Option<u32> {
    v.as_u64().map(|m| m as u32)
}

/// Files of a configMap or secret source (`items` select and rename keys).
fn key_files(
    source: &Value,
    data: &serde_json::Map<String, Value>,
    decode: bool,
) -> Result<Vec<Projected>, String> {
    let value_of = |key: &str| -> Option<Vec<u8>> {
        let v = data.get(key)?.as_str()?;
        if decode {
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        } else {
            Some(v.as_bytes().to_vec())
        }
    };
    match source["items"].as_array() {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|i| {
                let key = i["key"].as_str().unwrap_or("");
                let data =
                    value_of(key).ok_or_else(|| format!("configuration key {key:?} not found"))?;
                Ok(Projected {
                    path: i["path"].as_str().unwrap_or(key).to_string(),
                    data,
                    mode: mode_of(&i["mode"]),
                })
            })
            .collect(),
        _ => Ok(data
            .keys()
            .filter_map(|k| {
                Some(Projected {
                    path: k.clone(),
                    data: value_of(k)?,
                    mode: None,
                })
            })
            .collect()),
    }
}

/// Reads a ConfigMap (data + binaryData) or Secret (data) as key → value map; None when missing.
async fn fetch(
    client: &dyn Client,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<(serde_json::Map<String, Value>, bool)>, String> {
    let r = Resource::core(if kind == "Secret" {
        "secrets"
    } else {
        "configmaps"
    });
    match client.get(&r, Some(ns), name).await {
        Ok(obj) => {
            let mut data = obj["data"].as_object().cloned().unwrap_or_default();
            if kind == "ConfigMap" {
                // binaryData is base64 already; store everything as base64 to decode uniformly.
                let mut all = serde_json::Map::new();
                for (k, v) in &data {
                    all.insert(
                        k.clone(),
                        json!(base64::engine::general_purpose::STANDARD
                            .encode(v.as_str().unwrap_or(""))),
                    );
                }
                for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
                    all.insert(k.clone(), v.clone());
                }
                data = all;
            }
            Ok(Some((data, true)))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Everything a pod's volumes need from its surroundings.
pub struct VolumeContext<'a> {
    pub client: &'a dyn Client,
    pub pod: &'a Value,
    pub pod_dir: &'a Path,
    pub host_ip: &'a str,
}

/// Prepares every volume of the pod; returns volume name → host path.
pub async fn prepare(ctx: &VolumeContext<'_>) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let ns = ctx.pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let mut out = HashMap::new();
    for v in ctx.pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let src_err = |message: String| VolumeError::Source {
            volume: name.clone(),
            message,
        };
        let dir = ctx.pod_dir.join("volumes").join(&name);
        if let Some(ed) = v.get("emptyDir") {
            std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
                volume: name.clone(),
                path: dir.clone(),
                source,
            })?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(
                |source| VolumeError::Io {
                    volume: name.clone(),
                    path: dir.clone(),
                    source,
                },
            )?;
            if ed["medium"] == "Memory" && !is_mountpoint(&dir) {
                let size = ed["sizeLimit"]
                    .as_str()
                    .and_then(crate::container_spec::memory_bytes);
                let opts = match size {
                    Some(b) => format!("mode=777,size={b}"),
                    None => "mode=777".to_string(),
                };
                let data = std::ffi::CString::new(opts).unwrap_or_default();
                rustix::mount::mount(
                    "tmpfs",
                    &dir,
                    "tmpfs",
                    rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                    Some(data.as_c_str()),
                )
                .map_err(|source| VolumeError::Mount {
                    volume: name.clone(),
                    source,
                })?;
            }
        } else if let Some(hp) = v.get("hostPath") {
            let path = PathBuf::from(hp["path"].as_str().unwrap_or("/"));
            match hp["type"].as_str().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path).map_err(|source| VolumeError::Io {
                        volume: name.clone(),
                        path: path.clone(),
                        source,
                    })?
                }
                "Directory" if !path.is_dir() => {
                    return Err(src_err(format!(
                        "hostPath type check failed: {} is not a directory",
                        path.display()
                    )))
                }
                "File" if !path.is_file() => {
                    return Err(src_err(format!(
                        "hostPath type check failed: {} is not a file",
                        path.display()
                    )))
                }
                _ => {}
            }
            out.insert(name, path);
            continue;
        } else if let Some(src) = v.get("configMap").or_else(|| v.get("secret")) {
            let kind = if v.get("secret").is_some() {
                "Secret"
            } else {
                "ConfigMap"
            };
            let obj_name = src["name"]
                .as_str()
                .or_else(|| src["secretName"].as_str())
                .unwrap_or("");
            let optional = src["optional"] == json!(true);
            let files = match fetch(ctx.client, kind, ns, obj_name)
                .await
                .map_err(&src_err)?
            {
                Some((data, decode)) => key_files(src, &data, decode).map_err(&src_err)?,
                None if optional => Vec::new(),
                None => {
                    return Err(src_err(format!(
                        "{} {obj_name:?} not found",
                        kind.to_lowercase()
                    )))
                }
            };
            write_files(
                &name,
                &dir,
                &files,
                mode_of(&src["defaultMode"]).unwrap_or(0o644),
            )?;
        } else if let Some(src) = v.get("downwardAPI") {
            let files = downward_files(ctx, &src["items"]);
            write_files(
                &name,
                &dir,
                &files,
                mode_of(&src["defaultMode"]).unwrap_or(0o644),
            )?;
        } else if let Some(src) = v.get("projected") {
            let mut files = Vec::new();
            for s in src["sources"].as_array().into_iter().flatten() {
                if let Some(t) = s.get("serviceAccountToken") {
                    let token = service_account_token(ctx, t).await.map_err(&src_err)?;
                    files.push(Projected {
                        path: t["path"].as_str().unwrap_or("token").to_string(),
                        data: token.into_bytes(),
                        mode: None,
                    });
                } else if let Some(cm) = s.get("configMap").or_else(|| s.get("secret")) {
                    let kind = if s.get("secret").is_some() {
                        "Secret"
                    } else {
                        "ConfigMap"
                    };
                    let optional = cm["optional"] == json!(true);
                    match fetch(ctx.client, kind, ns, cm["name"].as_str().unwrap_or(""))
                        .await
                        .map_err(&src_err)?
                    {
                        Some((data, decode)) => {
                            files.extend(key_files(cm, &data, decode).map_err(&src_err)?)
                        }
                        None if optional => {}
                        None => {
                            return Err(src_err(format!(
                                "{} {:?} not found",
                                kind.to_lowercase(),
                                cm["name"]
                            )))
                        }
                    }
                } else if let Some(d) = s.get("downwardAPI") {
                    files.extend(downward_files(ctx, &d["items"]));
                }
            }
            write_files(
                &name,
                &dir,
                &files,
                mode_of(&src["defaultMode"]).unwrap_or(0o644),
            )?;
        } else {
            return Err(VolumeError::Unsupported(name));
        }
        if let Some(gid) = ctx.pod["spec"]["securityContext"]["fsGroup"].as_u64() {
            // emptyDir: only while its root is not the group's yet (upstream's
            // OnRootMismatch; a big volume is not walked every sync). The others are small
            // and rewritten files come back root-owned: every time.
            let writable = v.get("emptyDir").is_some();
            set_volume_ownership(&dir, gid as u32, writable, !writable).map_err(|source| {
                VolumeError::Io {
                    volume: name.clone(),
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        out.insert(name, dir);
    }
    Ok(out)
}

/// Gives `dir` and everything below it to group `gid`: group read (and write, for writable
/// volumes) on files, group rwx plus setgid on directories, so files created later inherit
/// the group. Unless `always`, nothing is done when `dir` already has the group and setgid.
pub fn set_volume_ownership(
    dir: &Path,
    gid: u32,
    writable: bool,
    always: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(dir)?;
    if !always && root.gid() == gid && root.mode() & 0o2000 != 0 {
        return Ok(());
    }
    fn walk(p: &Path, gid: u32, file_bits: u32) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        std::os::unix::fs::lchown(p, None, Some(gid))?;
        if md.file_type().is_symlink() {
            return Ok(());
        }
        let bits = if md.is_dir() { 0o2070 } else { file_bits };
        let mode = md.mode() & 0o7777;
        if mode | bits != mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | bits))?;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), gid, file_bits)?;
            }
        }
        Ok(())
    }
    walk(dir, gid, if writable { 0o060 } else { 0o040 })
}

fn downward_files(ctx: &VolumeContext<'_>, items: &Value) -> Vec<Projected> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let value = field_ref(
                ctx.pod,
                i.pointer("/fieldRef/fieldPath")?.as_str()?,
                ctx.host_ip,
            )?;
            Some(Projected {
                path: i["path"].as_str()?.to_string(),
                data: value.into_bytes(),
                mode: mode_of(&i["mode"]),
            })
        })
        .collect()
}

/// A bound token from TokenRequest, re-requested when 80% of its lifetime has passed.
async fn service_account_token(ctx: &VolumeContext<'_>, source: &Value) -> Result<String, String> {
    let ns = ctx.pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let sa = ctx.pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let expiration = source["expirationSeconds"].as_i64().unwrap_or(3607);
    let cache = ctx
        .pod_dir
        .join("tokens")
        .join(source["path"].as_str().unwrap_or("token"));
    if let Ok(meta) = std::fs::metadata(&cache) {
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(i64::MAX);
        if age < expiration * 8 / 10 {
            if let Ok(t) = std::fs::read_to_string(&cache) {
                return Ok(t);
            }
        }
    }
    let mut spec = json!({
        "expirationSeconds": expiration,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": ctx.pod["metadata"]["name"], "uid": ctx.pod["metadata"]["uid"]},
    });
    if let Some(aud) = source["audience"].as_str() {
        spec["audiences"] = json!([aud]);
    }
    let resp = ctx
        .client
        .create_subresource(
            &Resource::core("serviceaccounts"),
            Some(ns),
            sa,
            "token",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        )
        .await
        .map_err(|e| e.to_string())?;
    let token = resp
        .pointer("/status/token")
        .and_then(Value::as_str)
        .ok_or("TokenRequest returned no token")?
        .to_string();
    if let Some(parent) = cache.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&cache, &token);
    Ok(token)
}

pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_ref()))
}

/// Unmounts tmpfs volumes and removes the pod's volume directory.
pub fn cleanup(pod_dir: &Path) {
    let vols = pod_dir.join("volumes");
    if let Ok(entries) = std::fs::read_dir(&vols) {
        for e in entries.flatten() {
            if is_mountpoint(&e.path()) {
                let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
    let _ = std::fs::remove_dir_all(pod_dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projected_files_are_written_updated_and_pruned() {
        let dir = std::env::temp_dir().join(format!("k3rs-vol-test-{}", std::process::id()));
        let files = vec![
            Projected {
                path: "a".into(),
                data: b"1".to_vec(),
                mode: None,
            },
            Projected {
                path: "sub/b".into(),
                data: b"2".to_vec(),
                mode: Some(0o600),
            },
        ];
        write_files("v", &dir, &files, 0o644).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        assert_eq!(
            std::fs::metadata(dir.join("sub/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        write_files(
            "v",
            &dir,
            &[Projected {
                path: "a".into(),
                data: b"changed".to_vec(),
                mode: None,
            }],
            0o644,
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"changed");
        assert!(write_files(
            "v",
            &dir,
            &[Projected {
                path: "../x".into(),
                data: vec![],
                mode: None
            }],
            0o644
        )
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_items_select_and_rename() {
        let data: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"k1": "djE=", "k2": "djI="})).unwrap();
        let files = key_files(
            &json!({"items": [{"key": "k2", "path": "renamed"}]}),
            &data,
            true,
        )
        .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "renamed");
        assert_eq!(files[0].data, b"v2");
        assert!(key_files(
            &json!({"items": [{"key": "nope", "path": "x"}]}),
            &data,
            true
        )
        .is_err());
    }

    #[test]
    fn fs_group_owns_volume_contents() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"x").unwrap();
        std::fs::set_permissions(dir.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        set_volume_ownership(&dir, 4321, true, false).unwrap();
        for p in [dir.clone(), dir.join("sub"), dir.join("sub/f")] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().gid(),
                4321,
                "{}",
                p.display()
            );
        }
        assert_ne!(
            std::fs::metadata(dir.join("sub")).unwrap().mode() & 0o2000,
            0
        );
        assert_eq!(
            std::fs::metadata(dir.join("sub/f")).unwrap().mode() & 0o777,
            0o660
        );
        // A new file in a setgid directory inherits the group.
        std::fs::write(dir.join("sub/g"), b"y").unwrap();
        assert_eq!(std::fs::metadata(dir.join("sub/g")).unwrap().gid(), 4321);
    }
}
