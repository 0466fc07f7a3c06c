//! Debian's `docker-registry` for image pull tests and the pod benchmark: run inside a node
//! cluster's network namespace on `0.0.0.0:<port>`, so the node reaches it as
//! `127.0.0.1:<port>` (plain HTTP, no mirror needed) and the test process as
//! `<node IP>:<port>`. Optionally behind htpasswd basic auth (bcrypt hashes from `htpasswd -B`,
//! apache2-utils). Filled with the busybox test image by `k3rs-images`' push.

use crate::{images, run_ok, Cluster};
use anyhow::{bail, Context, Result};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry process; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    /// Where the test process reaches it: `<node IP>:<port>`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry where `cluster` runs, on `port`, requiring `user`/`password` when given.
    pub fn start(cluster: &Cluster, port: u16, auth: Option<(&str, &str)>) -> Result<Registry> {
        if !std::path::Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} missing: run tests/install-runtime-deps.sh");
        }
        let dir = tempfile::Builder::new()
            .prefix("k3rs-registry-")
            .tempdir_in("/var/tmp")?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 0.0.0.0:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let hashed = run_ok(Command::new("htpasswd").args(["-Bbn", user, password]))
                .context("htpasswd (apache2-utils) is needed: run tests/install-runtime-deps.sh")?;
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, hashed.trim())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: k3rs-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config)?;
        let child = cluster
            .command(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let address = format!("{}:{port}", cluster.node_ip());
        let reg = Registry {
            child,
            port,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect((cluster.node_ip(), port)).is_err() {
            if Instant::now() > deadline {
                bail!("docker-registry did not listen on {}", reg.address);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// Pushes the busybox test image as `<address>/<repository>`.
    pub fn push_busybox(&self, repository: &str, auth: Option<(&str, &str)>) -> Result<()> {
        push_busybox(&format!("{}/{repository}", self.address), auth)
    }
}

/// Pushes the busybox test image (`images::write_busybox_archive`) to `target` over plain HTTP,
/// through a scratch image store.
pub fn push_busybox(target: &str, auth: Option<(&str, &str)>) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("k3rs-push-")
        .tempdir_in("/var/tmp")?;
    let archive = dir.path().join("busybox.tar");
    images::write_busybox_archive(&archive, "push")?;
    let store = k3rs_images::ImageStore::open(dir.path().join("store"))?;
    store.import_archive(&archive)?;
    let auth = match auth {
        Some((u, p)) => k3rs_images::Auth::Basic {
            username: u.into(),
            password: p.into(),
        },
        None => k3rs_images::Auth::Anonymous,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(store.push("busybox:push", target, &auth, true))
        .with_context(|| format!("pushing busybox to {target}"))?;
    Ok(())
}
