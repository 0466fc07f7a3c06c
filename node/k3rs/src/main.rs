//! `k3rs`: one multi-call binary — `server`, `agent`, `kubectl` passthrough.

mod config;
mod killall;
mod server;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "k3rs", version = k3rs_apiserver::version_string().leak() as &str, about = "Lightweight Kubernetes, one Rust binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: API server, datastore and (later) controllers and the local node.
    Server(Box<server::ServerArgs>),
    /// Run an agent that joins a server.
    Agent,
    /// Appliance: ask PID 1 to stop the node, unmount and power off.
    Poweroff,
    /// Appliance: ask PID 1 to stop the node, unmount and reboot.
    Reboot,
    /// Appliance: A/B updates of the image (UEFI boards).
    Update {
        #[command(flatten)]
        node: NodeDataDir,
        #[command(subcommand)]
        action: UpdateAction,
    },
    /// Stop the node and its containers and remove the bridge, veths, nftables tables and DNS
    /// interface it created (K3s's k3s-killall.sh). The datastore, certificates and images stay.
    Killall {
        #[command(flatten)]
        node: NodeDataDir,
        /// The cluster DNS address the server was started with.
        #[arg(long, default_value = "10.43.0.10")]
        cluster_dns: std::net::IpAddr,
    },
    /// Manage the node's image store: import airgap archives, list, remove.
    Images {
        #[command(flatten)]
        node: NodeDataDir,
        #[command(subcommand)]
        action: ImagesAction,
    },
    /// Run the system kubectl against this server's kubeconfig.
    #[command(disable_help_flag = true)]
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `--data-dir` of the node commands (images, killall, update).
#[derive(clap::Args)]
struct NodeDataDir {
    /// The data dir of the node.
    #[arg(
        short = 'd',
        long,
        env = "K3RS_DATA_DIR",
        default_value = "/var/lib/k3rs",
        global = true
    )]
    data_dir: std::path::PathBuf,
}

#[derive(Subcommand)]
enum UpdateAction {
    /// Write an update bundle (`<image>.update.tar` from `k3rs-image build`, or a block device
    /// holding one) into the slot not running and boot it once at the next reboot. PID 1 makes
    /// it the default when its API answers, or reboots back into the current slot.
    Apply {
        bundle: std::path::PathBuf,
        /// Reboot into the update once it is written.
        #[arg(long)]
        reboot: bool,
    },
    /// The running and default slots, the update waiting for its trial boot and the last
    /// update's outcome.
    Status,
}

fn update(data_dir: &std::path::Path, action: UpdateAction) -> Result<()> {
    use k3rs_init::update;
    match action {
        UpdateAction::Apply { bundle, reboot } => {
            let board = std::fs::read_to_string("/etc/k3rs/board")
                .ok()
                .map(|b| b.trim().to_string());
            let applied = update::apply(&bundle, data_dir, board.as_deref())
                .with_context(|| format!("applying {}", bundle.display()))?;
            println!(
                "wrote {} ({} bytes of root filesystem) to slot {}; the next boot tries it once",
                applied.version, applied.root_bytes, applied.slot
            );
            if reboot {
                println!("rebooting");
                k3rs_init::request_reboot()?;
            }
        }
        UpdateAction::Status => {
            let running = update::running_slot().unwrap_or_else(|| "-".into());
            let default = update::esp_default_slot()
                .map_err(|e| anyhow::anyhow!(e))
                .context("reading the ESP's loader.conf")?;
            let version = std::fs::read_to_string("/etc/k3rs/version").unwrap_or_default();
            println!("running slot:  {running} ({})", version.trim());
            println!("default slot:  {default}");
            if let Some(p) = update::pending(data_dir) {
                println!(
                    "pending:       {} in slot {} ({})",
                    p.version, p.slot, p.detail
                );
            }
            if let Some(l) = update::last(data_dir) {
                println!(
                    "last update:   {} {} in slot {} ({})",
                    l.version, l.state, l.slot, l.detail
                );
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum ImagesAction {
    /// Import `docker save` or OCI layout archives.
    Import { files: Vec<std::path::PathBuf> },
    /// List images.
    Ls,
    /// Remove images by reference.
    Rm { references: Vec<String> },
}

fn images(data_dir: &std::path::Path, action: ImagesAction) -> Result<()> {
    let store = k3rs_images::ImageStore::open(data_dir.join("agent").join("images-store"))?;
    match action {
        ImagesAction::Import { files } => {
            for f in files {
                for img in store
                    .import_archive(&f)
                    .with_context(|| format!("importing {}", f.display()))?
                {
                    println!("imported {} ({})", img.reference, img.id);
                }
            }
        }
        ImagesAction::Ls => {
            println!("{:<60} {:<20} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            for img in store.list()? {
                let short = img
                    .id
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(13)
                    .collect::<String>();
                println!(
                    "{:<60} {:<20} {:>9.1}M",
                    img.reference,
                    short,
                    img.size as f64 / 1048576.0
                );
            }
        }
        ImagesAction::Rm { references } => {
            // Like `crictl rmi`: an image a container (created, running or exited but kept)
            // uses is refused; the others are still removed.
            let mut failed = 0;
            for r in references {
                match store.remove_unused(&r) {
                    Ok(()) => println!("deleted {r}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} image(s) not removed");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // The appliance boots this binary as /init: run the system's PID 1.
    if std::process::id() == 1 {
        k3rs_init::run_pid1();
    }
    // `k3rs shim ...`: the hidden per-container shim of k3rs-runtime, started by the node. It is
    // dispatched before config and flag parsing: it must start fast, single-threaded.
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("shim") {
        let code = k3rs_runtime::shim::main(&raw[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let argv = match config::argv_with_config_file(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("k3rs: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let result: Result<()> = match cli.command {
        Command::Server(args) => server::run(*args),
        Command::Agent => Err(anyhow::anyhow!(
            "agent mode is not available in this build yet: run `k3rs server` for a single-node cluster"
        )),
        Command::Kubectl { args } => kubectl(args),
        Command::Images { node, action } => images(&node.data_dir, action),
        Command::Killall { node, cluster_dns } => killall::run(&node.data_dir, cluster_dns),
        Command::Poweroff => k3rs_init::request_poweroff().map_err(anyhow::Error::from),
        Command::Reboot => k3rs_init::request_reboot().map_err(anyhow::Error::from),
        Command::Update { node, action } => update(&node.data_dir, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k3rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Execs the system kubectl with KUBECONFIG pointing at the server's admin kubeconfig (like K3s).
fn kubectl(args: Vec<String>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(
        std::env::var("K3RS_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
    );
    cmd.args(&args);
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", config::DEFAULT_KUBECONFIG);
    }
    let err = cmd.exec();
    Err(anyhow::anyhow!("running kubectl failed: {err}"))
}
