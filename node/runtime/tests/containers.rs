//! Real containers from a busybox-static OCI image: run, exit codes, CRI logs, stop with grace,
//! OOM kills, two containers sharing a sandbox's network, and adoption by a new Runtime.
//! Needs root and cgroups; skips with a message otherwise.

#[path = "../../images/tests/common/mod.rs"]
mod common;

use k3rs_images::ImageStore;
use k3rs_runtime::{
    ContainerConfig, ContainerState, Error, ExecConfig, Resources, Runtime, Sandbox, SandboxConfig,
    ShimCommand, User,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const IMAGE: &str = "k3rs.test/busybox:1";

struct Env {
    tmp: tempfile::TempDir,
    store: ImageStore,
    rt: Runtime,
    pod: String,
    sandbox: Sandbox,
    containers: Vec<String>,
}

/// The standalone shim binary, or the multi-call binary when `K3RS_SHIM=/path/to/k3rs`.
fn shim() -> ShimCommand {
    match std::env::var_os("K3RS_SHIM") {
        Some(k3rs) => ShimCommand {
            program: k3rs.into(),
            args: vec!["shim".into()],
        },
        None => ShimCommand {
            program: env!("CARGO_BIN_EXE_k3rs-shim").into(),
            args: vec![],
        },
    }
}

fn runtime(root: &Path) -> Runtime {
    Runtime::with_shim(root, shim()).unwrap()
}

impl Env {
    fn new(name: &str) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("k3rs-rt-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let store = ImageStore::open(tmp.path().join("images")).unwrap();
        let archive = tmp.path().join("busybox.tar");
        common::write_oci_archive(&archive, IMAGE, &[common::busybox_layer()]);
        store.import_archive(&archive).unwrap();
        let rt = runtime(&tmp.path().join("runtime"));
        let pod = format!("{name}-{}", std::process::id());
        let sandbox = rt
            .create_sandbox(
                &pod,
                &SandboxConfig {
                    hostname: name.replace('_', "-"),
                    ..Default::default()
                },
            )
            .unwrap();
        Env {
            tmp,
            store,
            rt,
            pod,
            sandbox,
            containers: Vec::new(),
        }
    }

    fn config(&mut self, name: &str, args: &[&str]) -> ContainerConfig {
        let id = format!("{}-{name}", self.pod);
        let rootfs = self.store.prepare_rootfs(IMAGE, &id).unwrap();
        self.containers.push(id.clone());
        ContainerConfig {
            id: id.clone(),
            rootfs,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/bin".into())],
            log_path: self.log_path(&id),
            ..Default::default()
        }
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.tmp.path().join("logs").join(format!("{id}.log"))
    }

    fn wait_log(&self, id: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log(id).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in {}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in &self.containers {
            let shim = self.rt.shim_pid(id).ok().flatten();
            if let Err(e) = self.rt.remove(id) {
                eprintln!("cleanup: removing {id}: {e}");
            }
            if let Some(pid) = shim {
                assert!(
                    !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                        || std::fs::read(format!("/proc/{pid}/cmdline"))
                            .unwrap()
                            .is_empty(),
                    "shim {pid} of {id} still running"
                );
            }
            self.store.release_rootfs(id).unwrap();
        }
        self.rt.remove_sandbox(&self.pod).unwrap();
        if std::thread::panicking() {
            return;
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.tmp.path().display().to_string();
        assert!(!mounts.contains(&root), "mounts left under {root}");
        for ctrl in ["memory", "pids", "cpu", "unified", ""] {
            let p = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("k3rs")
                .join(&self.pod);
            assert!(!p.exists(), "cgroup {} left behind", p.display());
        }
    }
}

fn wait_exit(rt: &Runtime, id: &str, timeout: Duration) -> ContainerState {
    let deadline = Instant::now() + timeout;
    loop {
        let s = rt.status(id).unwrap();
        if matches!(s, ContainerState::Exited { .. }) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} still {s:?} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exit_code(s: &ContainerState) -> (i32, Option<i32>, bool) {
    match s {
        ContainerState::Exited {
            code,
            signal,
            oom_killed,
            ..
        } => (*code, *signal, *oom_killed),
        other => panic!("not exited: {other:?}"),
    }
}

/// `<RFC3339Nano> <stream> F <line>` records.
fn cri_lines(log: &str) -> Vec<(String, String)> {
    log.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "bad timestamp in {l:?}"
            );
            let stream = it.next().unwrap().to_string();
            assert_eq!(it.next(), Some("F"), "{l:?}");
            (stream, it.next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn runs_to_completion_with_env_hostname_and_cri_log() {
    require_root!();
    let mut env = Env::new("echo");
    let mut cfg = env.config(
        "c",
        &[
            "/bin/sh",
            "-c",
            "echo hello $GREETING; hostname; echo oops >&2",
        ],
    );
    cfg.env.push(("GREETING".into(), "world".into()));
    let s = env.rt.run_container(&env.sandbox, &cfg).unwrap();
    assert!(
        matches!(
            s,
            ContainerState::Running { .. } | ContainerState::Exited { .. }
        ),
        "{s:?}"
    );
    let s = wait_exit(&env.rt, &cfg.id, Duration::from_secs(10));
    assert_eq!(exit_code(&s), (0, None, false));
    let lines = cri_lines(&env.log(&cfg.id));
    assert!(
        lines.contains(&("stdout".into(), "hello world".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "echo".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "oops".into())),
        "{lines:?}"
    );
    // The container's init ignores no signal (the Rust shim itself ignores SIGPIPE, the
    // daemon may ignore others). glibc's reserved 32 and 33 cannot be reset.
    let sig = env.config("sig", &["/bin/grep", "SigIgn", "/proc/self/status"]);
    env.rt.run_container(&env.sandbox, &sig).unwrap();
    wait_exit(&env.rt, &sig.id, Duration::from_secs(10));
    let ign = cri_lines(&env.log(&sig.id))
        .iter()
        .find_map(|(_, l)| l.strip_prefix("SigIgn:\t").map(String::from))
        .map(|m| u64::from_str_radix(&m, 16).unwrap())
        .expect("SigIgn line");
    assert_eq!(ign & !(0b11 << 31), 0, "ignored signals: {ign:#x}");
}

#[test]
fn reports_exit_code() {
    require_root!();
    let mut env = Env::new("exit3");
    let cfg = env.config("c", &["/bin/sh", "-c", "exit 3"]);
    env.rt.run_container(&env.sandbox, &cfg).unwrap();
    let s = wait_exit(&env.rt, &cfg.id, Duration::from_secs(10));
    assert_eq!(exit_code(&s), (3, None, false));
    let listed = env.rt.list().unwrap();
    assert!(listed
        .iter()
        .any(|c| c.id == cfg.id && c.pod_uid == env.pod));
}

#[test]
fn missing_executable_fails_to_start() {
    require_root!();
    let mut env = Env::new("noexec");
    let cfg = env.config("c", &["/no/such/binary"]);
    match env.rt.run_container(&env.sandbox, &cfg) {
        Err(Error::Shim { message, .. }) => assert!(!message.is_empty()),
        other => panic!("expected a start error, got {other:?}"),
    }
}

#[test]
fn stop_kills_after_grace_when_sigterm_is_ignored() {
    require_root!();
    let mut env = Env::new("stop");
    // PID 1 without a SIGTERM handler: SIGTERM is ignored, SIGKILL after the grace period.
    let cfg = env.config("sleep", &["/bin/sleep", "1000"]);
    env.rt.run_container(&env.sandbox, &cfg).unwrap();
    let t = Instant::now();
    let s = env.rt.stop(&cfg.id, Duration::from_millis(500)).unwrap();
    let took = t.elapsed();
    assert_eq!(exit_code(&s), (137, Some(9), false));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // With a handler, SIGTERM ends it well within a long grace period.
    let cfg = env.config(
        "trap",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    env.rt.run_container(&env.sandbox, &cfg).unwrap();
    env.wait_log(&cfg.id, "stdout F ready");
    let t = Instant::now();
    let s = env.rt.stop(&cfg.id, Duration::from_secs(30)).unwrap();
    assert_eq!(exit_code(&s), (0, None, false));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(env.log(&cfg.id).contains("stdout F bye"));
}

#[test]
fn memory_hog_is_oom_killed() {
    require_root!();
    let mut env = Env::new("oom");
    let mut cfg = env.config(
        "hog",
        &["/bin/sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"],
    );
    cfg.resources = Resources {
        memory_limit_bytes: Some(32 << 20),
        pids_limit: Some(64),
        cpu_limit_millis: Some(1000),
        ..Default::default()
    };
    env.rt.run_container(&env.sandbox, &cfg).unwrap();
    let s = wait_exit(&env.rt, &cfg.id, Duration::from_secs(30));
    let (code, signal, oom) = exit_code(&s);
    assert!(oom, "not reported as OOM killed: {s:?}");
    assert_eq!((code, signal), (137, Some(9)));
}

#[test]
fn containers_in_a_sandbox_share_localhost() {
    require_root!();
    let mut env = Env::new("net");
    let server = env.config("server", &["/bin/nc", "-l", "-p", "8080"]);
    env.rt.run_container(&env.sandbox, &server).unwrap();
    let client = env.config(
        "client",
        &[
            "/bin/sh",
            "-c",
            "for i in $(seq 1 50); do echo hello-over-lo | nc 127.0.0.1 8080 && exit 0; sleep 0.1; done; exit 1",
        ],
    );
    env.rt.run_container(&env.sandbox, &client).unwrap();
    let s = wait_exit(&env.rt, &client.id, Duration::from_secs(15));
    assert_eq!(exit_code(&s).0, 0, "client: {}", env.log(&client.id));
    let s = wait_exit(&env.rt, &server.id, Duration::from_secs(10));
    assert_eq!(exit_code(&s).0, 0);
    assert!(
        env.log(&server.id).contains("stdout F hello-over-lo"),
        "{}",
        env.log(&server.id)
    );
}

#[test]
fn a_new_runtime_adopts_running_containers() {
    require_root!();
    let mut env = Env::new("adopt");
    let cfg = env.config("c", &["/bin/sh", "-c", "echo started; exec sleep 1000"]);
    let first = runtime(env.rt.root());
    let pid = match first.run_container(&env.sandbox, &cfg).unwrap() {
        ContainerState::Running { pid, .. } => pid,
        s => panic!("{s:?}"),
    };
    env.wait_log(&cfg.id, "stdout F started");
    drop(first);

    // A "restarted daemon": a fresh Runtime over the same directory.
    let second = runtime(env.rt.root());
    let listed = second.list().unwrap();
    let c = listed.iter().find(|c| c.id == cfg.id).expect("listed");
    assert!(
        matches!(c.state, ContainerState::Running { pid: p, .. } if p == pid),
        "{:?}",
        c.state
    );
    assert_eq!(second.sandbox(&env.pod).unwrap(), env.sandbox);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let s = second.stop(&cfg.id, Duration::ZERO).unwrap();
    assert_eq!(exit_code(&s).1, Some(9));
}

#[test]
fn exec_runs_in_the_container_with_its_env_and_exit_code() {
    require_root!();
    let mut env = Env::new("exec");
    let mut cfg = env.config("c", &["/bin/sleep", "1000"]);
    cfg.env.push(("FROM_SPEC".into(), "spec".into()));
    cfg.user = User {
        uid: 1000,
        gid: 1001,
        additional_gids: vec![1002],
    };
    env.rt.run_container(&env.sandbox, &cfg).unwrap();
    // An exec runs as the container's user, like upstream's (not as root).
    let ids = env
        .rt
        .exec_output(
            &cfg.id,
            &ExecConfig {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $(id -u) $(id -g) $(id -G)".into(),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ids.stdout),
        "1000 1001 1001 1002\n"
    );
    let out = env
        .rt
        .exec_output(
            &cfg.id,
            &ExecConfig {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $FROM_SPEC $EXTRA $(hostname) $(pwd); echo err >&2; exit 5".into(),
                ],
                env: vec![("EXTRA".into(), "extra".into())],
                cwd: Some("/tmp".into()),
            },
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "spec extra exec /tmp\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.code, 5);
    let bad = env
        .rt
        .exec_output(
            &cfg.id,
            &ExecConfig {
                args: vec!["/no/such".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(bad.code, 0);
    env.rt.stop(&cfg.id, Duration::ZERO).unwrap();
    assert!(env
        .rt
        .exec_output(
            &cfg.id,
            &ExecConfig {
                args: vec!["/bin/true".into()],
                ..Default::default()
            }
        )
        .is_err());
}
