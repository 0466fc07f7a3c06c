//! `k3rs server`: flags (K3s names), PKI, datastore, and the API server.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ServerArgs {
    /// Folder to hold state.
    #[arg(
        short = 'd',
        long,
        env = "K3RS_DATA_DIR",
        default_value = "/var/lib/k3rs"
    )]
    pub data_dir: PathBuf,
    /// HTTPS listen port.
    #[arg(long, env = "K3RS_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// IP address the API server advertises to members of the cluster.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// IP address to advertise for the node.
    #[arg(long = "node-ip", short = 'i')]
    pub node_ip: Vec<IpAddr>,
    /// Shared secret used to join a server or agent to the cluster.
    #[arg(short = 't', long, env = "K3RS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write the admin kubeconfig to this file.
    #[arg(short = 'o', long, env = "K3RS_KUBECONFIG_OUTPUT", default_value = crate::config::DEFAULT_KUBECONFIG)]
    pub write_kubeconfig: PathBuf,
    /// Write the kubeconfig with this mode (octal, e.g. 644).
    #[arg(long, env = "K3RS_KUBECONFIG_MODE")]
    pub write_kubeconfig_mode: Option<String>,
    /// Datastore: empty for SQLite in the data dir, or sqlite://PATH.
    #[arg(long, env = "K3RS_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// Additional hostnames or IPs as Subject Alternative Names in the serving certificate.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Node name.
    #[arg(long, env = "K3RS_NODE_NAME")]
    pub node_name: Option<String>,
    /// IPv4 network CIDR for pod IPs.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// IPv4 network CIDR for service IPs.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Cluster DNS service IP.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// Cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Kubelet resolv.conf file; its nameservers are the cluster DNS's upstreams (loopback
    /// stubs are skipped; default /etc/resolv.conf, else systemd-resolved's real list).
    #[arg(long, env = "K3RS_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// Kubelet containerLogMaxSize: a container's log file is rotated before it grows past this
    /// (a quantity: 10Mi, 512Ki, bytes).
    #[arg(long, default_value = "10Mi", value_parser = parse_log_size)]
    pub container_log_max_size: u64,
    /// Kubelet containerLogMaxFiles: log files kept per container, the current one included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    pub container_log_max_files: u32,
    /// Private registry configuration file (K3s's registries.yaml: mirrors with endpoint
    /// fallback and rewrites, per-host auth and TLS). A file that does not parse is logged and
    /// the node pulls without mirrors.
    #[arg(long, env = "K3RS_PRIVATE_REGISTRY", default_value = k3rs_images::registries::DEFAULT_PATH)]
    pub private_registry: PathBuf,
    /// Kubelet imageGCHighThresholdPercent: at this disk usage (percent of the filesystem
    /// holding the image store) unused images are removed, least recently used first.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// Kubelet imageGCLowThresholdPercent: image GC stops once usage is estimated below this.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// Do not deploy packaged components (servicelb, traefik, local-storage, metrics-server, coredns).
    #[arg(long)]
    pub disable: Vec<String>,
    /// Register the node with these labels (key=value).
    #[arg(long = "node-label")]
    pub node_label: Vec<String>,
    /// Do not run a local agent (kubelet) in the server.
    #[arg(long)]
    pub disable_agent: bool,
    /// Do not enforce NetworkPolicies (K3s's embedded kube-router policy controller).
    #[arg(long)]
    pub disable_network_policy: bool,
    /// Do not run the Services data plane (kube-proxy's job: the `ip k3rs` nftables table).
    #[arg(long)]
    pub disable_kube_proxy: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// How long a node may stop heartbeating before it is marked Unknown and tainted
    /// unreachable (kube-controller-manager's flag; "40s", "500ms", "2m").
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// The scheduler and the controller manager each take a Lease in kube-system
    /// (`kube-scheduler`, `kube-controller-manager`) and run only while holding it. Off by
    /// default: the embedded SQLite datastore cannot be shared by two servers, and renewals would
    /// write to disk every 2 s.
    #[arg(long)]
    pub leader_elect: bool,
}

/// A Go-style duration: a number with `ms`, `s`, `m` or `h` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 40s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Runs a controller group, behind leader election on `lease` when enabled (upstream's
/// `<hostname>_<uuid>` identity); losing the lease stops every task of the group.
async fn run_elected<F, Fut>(
    client: std::sync::Arc<dyn k3rs_client::Client>,
    enabled: bool,
    lease: &'static str,
    hostname: String,
    group: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use k3rs_client::leaderelection::{on_own_runtime, ElectionConfig, LeaderElector};
    if !enabled {
        return group().await;
    }
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|_| std::process::id().to_string());
    let identity = format!("{hostname}_{uuid}");
    LeaderElector::new(client, ElectionConfig::new(lease, &identity))
        .run(|| on_own_runtime(lease, group()))
        .await;
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is not a CIDR"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("{s:?}: invalid address"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("{s:?}: invalid prefix length"))?;
    if !(8..=30).contains(&len) {
        bail!("{s:?}: prefix length must be between 8 and 30");
    }
    let mask = u32::MAX << (32 - len);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// The host's first non-loopback IPv4 address, as K3s picks the node IP.
fn default_node_ip() -> IpAddr {
    // Connecting a UDP socket sends nothing; it only asks the kernel for the outbound address.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn parse_mode(s: &str) -> Result<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .with_context(|| format!("invalid kubeconfig mode {s:?}"))
}

pub fn run(args: ServerArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // hickory-server logs every DNS query at info.
        .unwrap_or_else(|_| "info,hickory_server=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    // Two worker threads are plenty for the API server and keep idle memory low.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: ServerArgs) -> Result<()> {
    let started = Instant::now();
    let service_cidr = parse_cidr(&args.service_cidr)?;
    parse_cidr(&args.cluster_cidr)?;
    let service_ip = IpAddr::V4(Ipv4Addr::from(u32::from(service_cidr.0) + 1));
    let node_ips = if args.node_ip.is_empty() {
        vec![default_node_ip()]
    } else {
        args.node_ip.clone()
    };
    let advertise_ip = args.advertise_address.unwrap_or(node_ips[0]);
    let hostname = gethostname::gethostname().to_string_lossy().to_lowercase();
    let node_name = args.node_name.clone().unwrap_or_else(|| hostname.clone());
    let kubeconfig_mode = args
        .write_kubeconfig_mode
        .as_deref()
        .map(parse_mode)
        .transpose()?
        .unwrap_or(0o600);

    let server_dir = args.data_dir.join("server");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("creating {}", server_dir.display()))?;
    let pki = k3rs_pki::load_or_create(&k3rs_pki::PkiOptions {
        dir: server_dir.join("tls"),
        hostname: hostname.clone(),
        sans: args.tls_san.clone(),
        node_ips: node_ips.clone(),
        service_ip,
        token_secret: args.token.clone(),
    })
    .context("preparing the cluster PKI")?;

    let db_path = match args.datastore_endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => server_dir.join("db").join("state.db"),
        Some(e) if e.starts_with("sqlite://") => PathBuf::from(e.trim_start_matches("sqlite://")),
        Some(e) => bail!("datastore endpoint {e:?} is not supported yet: only SQLite (empty or sqlite://PATH) is available in this build"),
    };
    if let Some(parent) = db_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let store = k3rs_store::Store::open_sqlite(&db_path, k3rs_store::StoreOptions::default())
        .with_context(|| format!("opening the datastore at {}", db_path.display()))?;

    let listen = SocketAddr::new(args.bind_address, args.https_listen_port);
    let server = k3rs_apiserver::ApiServer::bind(k3rs_apiserver::Config {
        listen,
        serving_cert_pem: pki.serving_cert_pem.clone(),
        serving_key_pem: pki.serving_key_pem.clone(),
        client_ca_pem: pki.ca_cert_pem.clone(),
        store,
        service_accounts: Some(pki.service_account.clone()),
        info: k3rs_apiserver::ServerInfo {
            advertise_ip,
            port: args.https_listen_port,
            service_ip,
            service_cidr,
        },
    })
    .await
    .context("starting the API server")?;
    // Scheduler and controllers run in-process against the API through the local client.
    let local: std::sync::Arc<dyn k3rs_client::Client> = std::sync::Arc::new(
        k3rs_apiserver::local_client::LocalClient::new(server.api.clone()),
    );
    let scheduler_client = local.clone();
    tokio::spawn(run_elected(
        local.clone(),
        args.leader_elect,
        "kube-scheduler",
        hostname.clone(),
        move || {
            k3rs_scheduler::run(
                scheduler_client.clone(),
                k3rs_scheduler::SchedulerConfig::default(),
            )
        },
    ));
    let controllers_config = k3rs_controllers::ControllersConfig {
        cluster_cidr: Some(args.cluster_cidr.clone()),
        servicelb: !args.disable.iter().any(|d| d == "servicelb"),
        node_monitor_grace_period: Some(args.node_monitor_grace_period),
        ..Default::default()
    };
    let controllers_client = local.clone();
    tokio::spawn(run_elected(
        local,
        args.leader_elect,
        "kube-controller-manager",
        hostname.clone(),
        move || k3rs_controllers::run(controllers_client.clone(), controllers_config.clone()),
    ));
    let port = server
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(args.https_listen_port);

    let url = format!("https://127.0.0.1:{port}");
    k3rs_pki::write_kubeconfig(
        &args.write_kubeconfig,
        kubeconfig_mode,
        &url,
        "default",
        &pki.ca_cert_pem,
        &pki.admin_cert_pem,
        &pki.admin_key_pem,
    )
    .with_context(|| format!("writing kubeconfig {}", args.write_kubeconfig.display()))?;
    // The token and a kubeconfig copy live in the data dir too, as K3s keeps them.
    std::fs::write(server_dir.join("token"), format!("{}\n", pki.node_token))
        .context("writing the node token")?;
    set_mode(&server_dir.join("token"), 0o600)?;
    if !args.disable_agent {
        if rustix::process::geteuid().is_root() {
            if args.image_gc_low_threshold > args.image_gc_high_threshold {
                bail!(
                    "--image-gc-low-threshold ({}) must not exceed --image-gc-high-threshold ({})",
                    args.image_gc_low_threshold,
                    args.image_gc_high_threshold
                );
            }
            // Bad input loses nothing: the node starts and pulls from the registries themselves.
            let registries = match k3rs_images::registries::Registries::load(&args.private_registry)
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "ignoring the private registry configuration: no mirrors or registry credentials");
                    Default::default()
                }
            };
            let client: Arc<dyn k3rs_client::Client> = Arc::new(
                k3rs_apiserver::local_client::LocalClient::new(server.api.clone()),
            );
            let kubelet = k3rs_kubelet::Kubelet::start(
                client,
                k3rs_kubelet::KubeletConfig {
                    node: k3rs_kubelet::node::NodeConfig {
                        name: node_name.clone(),
                        addresses: node_ips.clone(),
                        hostname: hostname.clone(),
                        data_dir: args.data_dir.clone(),
                        labels: args
                            .node_label
                            .iter()
                            .filter_map(|l| {
                                l.split_once('=')
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                            })
                            .collect(),
                        taints: Vec::new(),
                        control_plane: true,
                        max_pods: 110,
                        kubelet_version: k3rs_apiserver::version_string(),
                        heartbeat: k3rs_kubelet::node::Heartbeat::IN_PROCESS,
                    },
                    agent_dir: args.data_dir.join("agent"),
                    cluster_dns: Some(args.cluster_dns.to_string()),
                    cluster_domain: args.cluster_domain.clone(),
                    cluster_cidr: args.cluster_cidr.clone(),
                    mtu: 1500,
                    resolv_conf: args.resolv_conf.clone(),
                    container_log: k3rs_runtime::crilog::LogRotation {
                        max_size: args.container_log_max_size,
                        max_files: args.container_log_max_files as usize,
                    },
                    registries: Arc::new(registries),
                    image_gc: k3rs_images::gc::GcPolicy {
                        high_percent: args.image_gc_high_threshold,
                        low_percent: args.image_gc_low_threshold,
                        ..Default::default()
                    },
                },
            )
            .await
            .context("starting the kubelet")?;
            *server.api.pod_exec.write().expect("pod exec lock") =
                Some(k3rs_kubelet::exec::pod_exec(kubelet.pods.clone()));
            *server
                .api
                .pod_port_forward
                .write()
                .expect("pod port-forward lock") = Some(
                k3rs_kubelet::portforward::pod_port_forward(kubelet.pods.clone()),
            );
            *server.api.pod_logs.write().expect("pod logs lock") =
                Some(k3rs_kubelet::logs::pod_logs(kubelet.pods.clone()));
            // Cluster DNS (CoreDNS's job in K3s) on the cluster DNS IP; `--disable coredns` turns it off.
            if !args.disable.iter().any(|d| d == "coredns") {
                let client: Arc<dyn k3rs_client::Client> = Arc::new(
                    k3rs_apiserver::local_client::LocalClient::new(server.api.clone()),
                );
                let (domain, dns_ip) = (args.cluster_domain.clone(), args.cluster_dns);
                let upstreams =
                    k3rs_dns::upstream::node_upstreams(args.resolv_conf.as_deref(), &[dns_ip])
                        .context("reading the upstream nameservers")?;
                tokio::spawn(async move {
                    match k3rs_dns::run_on_node(client, &domain, dns_ip, upstreams).await {
                        Ok(dns) => {
                            if let Err(e) = dns.wait().await {
                                warn!(
                                    error = format!("{:#}", anyhow::Error::new(e)),
                                    "cluster DNS stopped"
                                );
                            }
                        }
                        Err(e) => warn!(
                            error = format!("{:#}", anyhow::Error::new(e)),
                            "cluster DNS disabled"
                        ),
                    }
                });
            }
            // Services data plane (kube-proxy's job): the `ip k3rs` nftables table.
            if !args.disable_kube_proxy {
                let mut config = k3rs_proxy::ProxyConfig::new(
                    &node_name,
                    node_ips
                        .iter()
                        .filter_map(|ip| match ip {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect(),
                );
                config.cluster_cidr = args.cluster_cidr.parse().context("--cluster-cidr")?;
                config.service_cidr = args.service_cidr.parse().context("--service-cidr")?;
                // The embedded DNS answers on the cluster DNS IP itself.
                config.local_service_ips = match args.cluster_dns {
                    IpAddr::V4(ip) if !args.disable.iter().any(|d| d == "coredns") => vec![ip],
                    _ => Vec::new(),
                };
                let mut proxy = k3rs_proxy::Proxy::start(
                    Arc::new(k3rs_apiserver::local_client::LocalClient::new(
                        server.api.clone(),
                    )),
                    config,
                    k3rs_proxy::Nft::new(),
                );
                tokio::spawn(async move { proxy.wait().await });
            }
            if !args.disable_network_policy {
                tokio::spawn(k3rs_netpol::run(
                    Arc::new(k3rs_apiserver::local_client::LocalClient::new(
                        server.api.clone(),
                    )),
                    k3rs_netpol::Config {
                        node_name: node_name.clone(),
                        min_sync_period: std::time::Duration::from_millis(100),
                    },
                ));
            }
        } else {
            warn!("not running as root: the in-process agent (kubelet) is disabled; pods will stay Pending");
        }
    }
    info!(node = %node_name, %listen, kubeconfig = %args.write_kubeconfig.display(), elapsed_ms = started.elapsed().as_millis() as u64, "k3rs is up and running");

    tokio::select! {
        _ = server.serve() => {}
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn parse_log_size(s: &str) -> Result<u64, String> {
    k3rs_runtime::crilog::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a positive size in bytes (e.g. 10Mi, 512Ki, 4096)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_modes() {
        assert_eq!(
            parse_cidr("10.43.0.0/16").unwrap(),
            (Ipv4Addr::new(10, 43, 0, 0), 16)
        );
        assert_eq!(
            parse_cidr("10.43.7.9/16").unwrap().0,
            Ipv4Addr::new(10, 43, 0, 0)
        );
        assert!(parse_cidr("10.43.0.0").is_err());
        assert!(parse_cidr("10.43.0.0/40").is_err());
        assert_eq!(parse_mode("644").unwrap(), 0o644);
        assert_eq!(parse_mode("0600").unwrap(), 0o600);
        assert!(parse_mode("rw").is_err());
    }
}
