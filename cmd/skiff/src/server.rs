//! `skiff server`: the API server in the foreground, and the API server's
//! flags `skiff up` shares.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::common::shutdown_signal;
use crate::security;

/// The API server's flags, the same on `skiff server` and `skiff up`.
#[derive(clap::Args)]
pub(crate) struct ApiArgs {
    /// Address to serve the API (gRPC) on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub(crate) listen: SocketAddr,
    /// etcd endpoints (comma-separated): the state goes there instead of
    /// the embedded store.
    #[arg(long, value_delimiter = ',')]
    pub(crate) etcd: Vec<String>,
    /// The range Services' cluster IPs come from.
    #[arg(long, default_value = skiff_apiserver::DEFAULT_SERVICE_CIDR)]
    pub(crate) service_cidr: String,
    /// The range NodePort Services' node ports come from.
    #[arg(long, default_value = "30000-32767")]
    pub(crate) service_node_port_range: String,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Serve plaintext with no authentication: anyone who reaches the
    /// port may do anything. For tests on a machine of your own only.
    #[arg(long)]
    pub(crate) insecure: bool,
    /// More names or addresses clients reach the server by (for its
    /// certificate), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) tls_san: Vec<String>,
    /// The address pods reach this server at (the `kubernetes` Service's
    /// endpoint, what in-cluster clients dial); default: the --listen
    /// address, or this host's when listening on all.
    #[arg(long)]
    pub(crate) advertise_address: Option<std::net::IpAddr>,
    /// How long certificates issued to nodes are valid, in seconds
    /// (agents renew theirs at 80 % of that).
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    pub(crate) node_cert_validity_secs: u64,
    /// The Pod Security level enforced in namespaces without a
    /// `pod-security.kubernetes.io/enforce` label: privileged, baseline
    /// or restricted. Baseline refuses hostPath volumes, host namespaces,
    /// privileged containers, added capabilities and host ports.
    #[arg(long, default_value = "baseline")]
    pub(crate) pod_security_default: skiff::podsecurity::Level,
    /// Namespaces Pod Security admission does not judge, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    pub(crate) pod_security_exempt_namespaces: Vec<String>,
    /// How often the store's history is compacted (`5m`, `90s`): history
    /// older than one interval is dropped, and with it the memory and disk
    /// it holds; watchers and paged lists resume within one interval.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) compaction_interval: std::time::Duration,
}

#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// Directory for the embedded store (ignored with --etcd).
    #[arg(long, default_value = "/var/lib/skiff")]
    pub(crate) data_dir: PathBuf,
    /// API actor threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub(crate) actors: usize,
    /// With --etcd: a secret every API server of the cluster is given; the
    /// first one publishes the cluster CA and token key in etcd sealed
    /// with it, the others take them from there.
    #[arg(long, env = "SKIFF_CLUSTER_TOKEN", hide_env_values = true)]
    pub(crate) cluster_token: Option<String>,
    /// Run as a pod of another Kubernetes cluster (the Helm chart): write
    /// the CA, the components' client configs, the admin's kubeconfig and
    /// an agents' join token into this Secret of the pod's namespace there,
    /// through that cluster's API as the pod's service account.
    #[arg(long, value_name = "SECRET")]
    pub(crate) publish_credentials: Option<String>,
    /// A directory with `ca.crt` and `ca.key`: the cluster CA to use (a
    /// mounted Secret), instead of one made on first start. A data dir
    /// that already holds another CA is refused.
    #[arg(long)]
    pub(crate) ca_dir: Option<PathBuf>,
    /// The URL the published configs name the server by (default: the
    /// local one), e.g. `https://skiff.NAMESPACE.svc:6443`; give its host
    /// to --tls-san too.
    #[arg(long, requires = "publish_credentials")]
    pub(crate) publish_url: Option<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// `30000-32767`.
pub(crate) fn port_range(text: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let parsed = text.split_once('-').and_then(|(lo, hi)| {
        Some((
            lo.trim().parse::<u16>().ok()?,
            hi.trim().parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some((lo, hi)) if lo > 0 && lo <= hi => Ok(lo..=hi),
        _ => anyhow::bail!("--service-node-port-range: {text:?} is not a range like 30000-32767"),
    }
}

/// The API server's config from its flags, the state under `data_dir`.
pub(crate) fn api_config(
    args: &ApiArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<skiff_apiserver::Config> {
    let store = if args.etcd.is_empty() {
        // A data directory from before the journal keeps its redb file.
        // (One that cannot be looked at is an error, not a new store.)
        let redb = data_dir.join("state.redb");
        let path = match std::fs::metadata(&redb) {
            Ok(meta) if meta.is_file() => redb,
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("{}: {e}", redb.display())
            }
            _ => data_dir.join("state"),
        };
        skiff_apiserver::StoreConfig::Embedded(path)
    } else {
        skiff_apiserver::StoreConfig::Etcd(args.etcd.clone())
    };
    let mut config = skiff_apiserver::Config::new(args.listen, store);
    config.service_cidr = args
        .service_cidr
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--service-cidr: {e}"))?;
    config.node_ports = port_range(&args.service_node_port_range)?;
    config.metrics_addr = args.metrics_addr;
    config.advertise_address = args.advertise_address;
    anyhow::ensure!(
        args.compaction_interval >= std::time::Duration::from_secs(1),
        "--compaction-interval: {:?} is shorter than a second",
        args.compaction_interval
    );
    config.compaction_interval = args.compaction_interval;
    config.pod_security = skiff_apiserver::podsecurity::PodSecurity {
        default: args.pod_security_default,
        exempt_namespaces: args
            .pod_security_exempt_namespaces
            .iter()
            .filter(|ns| !ns.is_empty())
            .cloned()
            .collect(),
    };
    if args.insecure {
        tracing::warn!(
            "--insecure: serving PLAINTEXT with NO authentication; anyone who can reach {} may do anything",
            args.listen
        );
    } else {
        let names = security::serving_names(args.listen, &config.service_cidr, &args.tls_san);
        config.security = Some(security::load(
            data_dir,
            &names,
            std::time::Duration::from_secs(args.node_cert_validity_secs.max(10)),
        )?);
    }
    Ok(config)
}

/// The address local clients reach a server bound to `addr` at.
pub(crate) fn local_url(addr: SocketAddr, tls: bool) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Runs the API server until a signal, writing the components' client
/// configs into the data dir.
pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.publish_credentials.is_none() || !args.api.insecure,
        "--publish-credentials: a server started --insecure has no credentials to publish"
    );
    if let Some(dir) = &args.ca_dir {
        security::adopt_ca(dir, &args.data_dir.join("pki"))?;
    }
    let mut config = match &args.cluster_token {
        None => api_config(&args.api, &args.data_dir)?,
        Some(_) if args.api.etcd.is_empty() || args.api.insecure => anyhow::bail!(
            "--cluster-token shares the cluster's keys through etcd: it needs --etcd, and TLS (not --insecure)"
        ),
        Some(token) if token.len() < crate::bootstrap::MIN_TOKEN_LEN => anyhow::bail!(
            "--cluster-token must be at least {} characters (it seals the cluster CA's key in etcd)",
            crate::bootstrap::MIN_TOKEN_LEN
        ),
        Some(token) => {
            let store = skiff_store::EtcdStore::connect(&args.api.etcd)
                .await
                .context("reaching etcd")?;
            let pki = args.data_dir.join("pki");
            let published = crate::bootstrap::fetch(&store, token, &pki).await?;
            let had_keys = crate::bootstrap::has_keys(&pki);
            let config = api_config(&args.api, &args.data_dir)?;
            if published || crate::bootstrap::publish(&store, token, &pki).await? {
                config
            } else if had_keys {
                anyhow::bail!(
                    "another server published the cluster's CA first, and {} holds another: move it away to take the cluster's",
                    pki.display()
                )
            } else {
                // Another server published first: its keys, not the ones
                // this run just made.
                drop(config);
                crate::bootstrap::forget(&pki);
                crate::bootstrap::fetch(&store, token, &pki).await?;
                api_config(&args.api, &args.data_dir)?
            }
        }
    };
    config.actors = args.actors;
    let security = config.security.clone();
    let server = skiff_apiserver::ApiServer::start(config)
        .await
        .context("starting the API server")?;
    if let Some(security) = &security {
        let url = local_url(server.addr, true);
        let configs = security::write_configs(security, &args.data_dir, &url)?;
        tracing::info!(
            admin = %configs.admin.display(),
            scheduler = %configs.scheduler.display(),
            controller_manager = %configs.controller_manager.display(),
            "client configs written (use --config FILE, or SKIFF_CONFIG=FILE for skiff commands)"
        );
        if let Some(secret) = args.publish_credentials {
            let url = args.publish_url.unwrap_or(url);
            crate::publish::spawn(crate::publish::Publish { secret, url }, configs);
        }
    }
    skiff_apiserver::serve_until(server, shutdown_signal())
        .await
        .context("running the API server")?;
    Ok(())
}
