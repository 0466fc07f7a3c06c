//! The image store against real archives, overlayfs and a real registry (Debian's
//! `docker-registry` on 127.0.0.1). Root-only parts skip with a message otherwise.

mod common;

use common::Layer;
use k3rs_images::{Error, ImageStore, PullOptions};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn store() -> (tempfile::TempDir, ImageStore) {
    let tmp = tempfile::Builder::new()
        .prefix("k3rs-img-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let s = ImageStore::open(tmp.path().join("store")).unwrap();
    (tmp, s)
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn imports_oci_layout_and_docker_save_sharing_blobs() {
    require_root!();
    let (tmp, s) = store();
    let layers = vec![common::busybox_layer()];
    let oci = tmp.path().join("oci.tar");
    common::write_oci_archive(&oci, "k3rs.test/busybox:1", &layers);
    let imgs = s.import_archive(&oci).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].reference, "k3rs.test/busybox:1");
    assert_eq!(imgs[0].layers, vec![common::sha256(&layers[0])]);
    let cfg = s.config("k3rs.test/busybox:1").unwrap();
    assert_eq!(cfg.cmd, vec!["/bin/sh"]);
    assert_eq!(cfg.env, vec!["PATH=/bin"]);

    let docker = tmp.path().join("docker.tar");
    common::write_docker_archive(&docker, "busybox:test", &layers);
    let imgs = s.import_archive(&docker).unwrap();
    assert_eq!(imgs[0].reference, "docker.io/library/busybox:test");
    assert!(s.get("busybox:test").unwrap().is_some());

    let store_root = s.root().to_path_buf();
    // One layer blob and one unpacked layer, shared; config shared too.
    assert_eq!(count(&store_root.join("layers")), 1);
    let listed: Vec<String> = s.list().unwrap().into_iter().map(|i| i.reference).collect();
    assert_eq!(listed.len(), 2);
    assert!(store_root
        .join("layers")
        .join(&common::sha256(&layers[0])[7..])
        .join("bin/busybox")
        .exists());

    s.remove("busybox:test").unwrap();
    assert_eq!(count(&store_root.join("layers")), 1, "shared layer kept");
    s.remove("k3rs.test/busybox:1").unwrap();
    assert_eq!(count(&store_root.join("layers")), 0);
    assert_eq!(count(&store_root.join("blobs/sha256")), 0);
    assert!(matches!(
        s.remove("k3rs.test/busybox:1"),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn rejects_garbage_archives() {
    let (tmp, s) = store();
    let p = tmp.path().join("junk.tar");
    std::fs::write(&p, Layer::new().file("hello", 0o644, b"x").build()).unwrap();
    assert!(matches!(
        s.import_archive(&p),
        Err(Error::InvalidArchive(_))
    ));
}

#[test]
fn whiteouts_and_opaque_dirs_in_an_overlay_rootfs() {
    require_root!();
    let (tmp, s) = store();
    let l1 = Layer::new()
        .dir("a", 0o755)
        .file("a/x", 0o644, b"x")
        .file("a/y", 0o644, b"y")
        .file("b", 0o644, b"b")
        .dir("d", 0o755)
        .file("d/old", 0o644, b"old")
        .build();
    let l2 = Layer::new()
        .file("a/.wh.x", 0o644, b"")
        .file(".wh.b", 0o644, b"")
        .file("c", 0o644, b"c")
        .build();
    let l3 = Layer::new()
        .dir("d", 0o755)
        .file("d/.wh..wh..opq", 0o644, b"")
        .file("d/new", 0o644, b"new")
        .build();
    let archive = tmp.path().join("wh.tar");
    common::write_oci_archive(&archive, "k3rs.test/wh:1", &[l1, l2, l3]);
    s.import_archive(&archive).unwrap();
    let root = s.prepare_rootfs("k3rs.test/wh:1", "ctr1").unwrap();
    assert_eq!(s.prepare_rootfs("k3rs.test/wh:1", "ctr1").unwrap(), root);
    let exists = |p: &str| root.join(p).symlink_metadata().is_ok();
    assert!(exists("a/y") && exists("c") && exists("d/new"));
    assert!(!exists("a/x"), "whiteout ignored");
    assert!(!exists("b"), "whiteout ignored");
    assert!(!exists("d/old"), "opaque dir ignored");
    std::fs::write(root.join("written"), b"upper").unwrap();

    // A second container sees the image, not the first one's writes.
    let other = s.prepare_rootfs("k3rs.test/wh:1", "ctr2").unwrap();
    assert!(!other.join("written").exists());

    s.release_rootfs("ctr1").unwrap();
    s.release_rootfs("ctr2").unwrap();
    s.release_rootfs("ctr2").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&tmp.path().display().to_string()));
    assert_eq!(count(&s.root().join("rootfs")), 0);
}

struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REGISTRY: &str = "/usr/bin/docker-registry";

/// Debian's docker-registry on a free loopback port with its own storage.
fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Registry {
        child,
        port,
        _dir: dir,
    }
}

async fn push(reference: &str, layers: &[Vec<u8>]) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let ls: Vec<ImageLayer> = layers
        .iter()
        .map(|l| {
            ImageLayer::new(
                l.clone(),
                "application/vnd.oci.image.layer.v1.tar".into(),
                None,
            )
        })
        .collect();
    let config = Config::new(
        common::config_json(layers),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    client
        .push(
            &reference.parse().unwrap(),
            &ls,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_local_registry_once_for_concurrent_callers() {
    require_root!();
    if !Path::new(REGISTRY).exists() {
        eprintln!("SKIPPED: {REGISTRY} missing: run tests/install-runtime-deps.sh");
        return;
    }
    let reg = start_registry();
    let reference = format!("127.0.0.1:{}/test/busybox:1", reg.port);
    let extra = Layer::new().file("etc/motd", 0o644, b"hi\n").build();
    push(&reference, &[common::busybox_layer(), extra]).await;

    let (_tmp, s) = store();
    let opts = PullOptions {
        plain_http: true,
        ..Default::default()
    };
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            let r = reference.clone();
            let o = opts.clone();
            tokio::spawn(async move { s.pull(&r, &o).await })
        })
        .collect();
    let mut images = Vec::new();
    for p in pulls {
        images.push(p.await.unwrap().unwrap());
    }
    assert!(images.iter().all(|i| i == &images[0]));
    assert_eq!(images[0].reference, reference);
    assert_eq!(images[0].layers.len(), 2);
    assert_eq!(s.downloaded_blobs(), 2, "concurrent pulls not deduplicated");
    assert_eq!(s.config(&reference).unwrap().cmd, vec!["/bin/sh"]);

    // Pulling again finds every blob present.
    s.pull(&reference, &opts).await.unwrap();
    assert_eq!(s.downloaded_blobs(), 2);

    let root = s.prepare_rootfs(&reference, "pulled").unwrap();
    assert!(root.join("bin/busybox").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hi\n"
    );
    s.release_rootfs("pulled").unwrap();

    let missing = format!("127.0.0.1:{}/test/nope:1", reg.port);
    match s.pull(&missing, &opts).await {
        Err(Error::Pull { message, .. }) => assert!(!message.is_empty()),
        other => panic!("expected a pull error, got {other:?}"),
    }
}

/// A disk that reports whatever the test says.
struct FakeDisk(std::sync::Mutex<k3rs_images::gc::DiskUsage>);

impl k3rs_images::gc::DiskUsageSource for FakeDisk {
    fn usage(&self, _: &Path) -> std::io::Result<k3rs_images::gc::DiskUsage> {
        Ok(*self.0.lock().unwrap())
    }
}

#[test]
fn garbage_collection_spares_images_in_use_and_shared_layers() {
    require_root!();
    use k3rs_images::gc::{DiskUsage, GcPolicy};
    let (tmp, s) = store();
    let base = common::busybox_layer();
    let extra = Layer::new().file("etc/motd", 0o644, b"hi\n").build();
    let used = tmp.path().join("used.tar");
    common::write_oci_archive(&used, "k3rs.test/used:1", std::slice::from_ref(&base));
    let unused = tmp.path().join("unused.tar");
    common::write_oci_archive(&unused, "k3rs.test/unused:1", &[base.clone(), extra]);
    s.import_archive(&used).unwrap();
    s.import_archive(&unused).unwrap();
    s.prepare_rootfs("k3rs.test/used:1", "c1").unwrap();
    let policy = GcPolicy {
        min_age: Duration::ZERO,
        ..Default::default()
    };
    let disk = FakeDisk(std::sync::Mutex::new(DiskUsage {
        capacity: 100 << 20,
        available: 20 << 20,
    }));
    // 80% used: below the high threshold (85%), nothing goes.
    assert!(s.collect_garbage(policy, &disk).unwrap().is_empty());
    *disk.0.lock().unwrap() = DiskUsage {
        capacity: 100 << 20,
        available: 5 << 20,
    };
    let removed = s.collect_garbage(policy, &disk).unwrap();
    assert_eq!(removed, vec!["k3rs.test/unused:1"]);
    assert!(s.get("k3rs.test/used:1").unwrap().is_some());
    // The shared busybox layer stays; the unused image's own layer is gone.
    assert_eq!(count(&s.root().join("layers")), 1);
    // rm of an image a container uses is refused, like crictl rmi.
    match s.remove_unused("k3rs.test/used:1") {
        Err(Error::InUse { containers, .. }) => assert_eq!(containers, vec!["c1"]),
        other => panic!("{other:?}"),
    }
    s.release_rootfs("c1").unwrap();
    s.remove_unused("k3rs.test/used:1").unwrap();
}
