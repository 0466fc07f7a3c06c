//! `k3rs`: one multi-call binary — `server`, `agent`, `kubectl` passthrough.

mod config;
mod server;

use anyhow::Result;
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
    /// Run the system kubectl against this server's kubeconfig.
    #[command(disable_help_flag = true)]
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
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
