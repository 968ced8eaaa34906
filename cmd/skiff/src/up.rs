//! `skiff up`: an all-in-one cluster in the foreground (the API server,
//! the scheduler, the controller manager and a local agent in one
//! process, each reaching the API over a loopback connection).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::common::{NodeCidrArgs, PodNetworkArgs, host_name, lb_pool, shutdown_signal};
use crate::security;
use crate::server::{ApiArgs, api_config, local_url};

#[derive(clap::Args)]
pub(crate) struct UpArgs {
    /// Directory for the cluster's state.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Where LoadBalancer Services' addresses come from: a CIDR or a
    /// range FIRST-LAST, or "" for the Ready nodes' own addresses (k3s's
    /// ServiceLB). The default is on loopback: the addresses answer on
    /// this machine only.
    #[arg(long, default_value = skiff_controllers::DEFAULT_LB_POOL)]
    pub(crate) lb_pool: String,
    /// The service proxy: auto (kernel NAT rules when root beside
    /// Docker, else a userspace relay), iptables, userspace or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "iptables", "userspace", "none"])]
    pub(crate) proxy_mode: String,
    #[command(flatten)]
    pub(crate) node_cidrs: NodeCidrArgs,
    #[command(flatten)]
    pub(crate) pod_network: PodNetworkArgs,
    /// The local agent's node name (default: the host name).
    #[arg(long)]
    pub(crate) node_name: Option<String>,
    /// The Docker network the local agent's pods attach to (created if
    /// missing; with the docker pod network).
    #[arg(long, default_value = "skiff")]
    pub(crate) network: String,
    /// Keep the state in etcd that `skiff up` starts and supervises
    /// itself (Debian's etcd-server), under DATA_DIR/etcd: one member, or
    /// `=3` for three on this machine (to try a highly available store).
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "MEMBERS")]
    pub(crate) etcd_managed: Option<usize>,
    /// The ingress controller's HTTP address ("" runs no ingress
    /// controller).
    #[arg(long, default_value = "0.0.0.0:80")]
    pub(crate) ingress_http_listen: String,
    /// The ingress controller's HTTPS address ("" for none).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub(crate) ingress_https_listen: String,
}

/// Runs the cluster until a signal, then stops its parts in order.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::common::default_data_dir);
    let mut config = api_config(&args.api, &data_dir)?;
    let managed_etcd = match args.etcd_managed {
        Some(_) if !args.api.etcd.is_empty() => {
            anyhow::bail!("--etcd-managed starts its own etcd: give it or --etcd, not both")
        }
        Some(members) => {
            let etcd = crate::etcd::start(&data_dir.join("etcd"), members)
                .await
                .context("starting the managed etcd")?;
            config.store = skiff_apiserver::StoreConfig::Etcd(etcd.endpoints.clone());
            Some(etcd)
        }
        None => None,
    };
    // However the cluster ends (an error too), the managed etcd stops and
    // is reaped before this process exits.
    let endpoints = managed_etcd.as_ref().map(|e| e.endpoints.clone());
    let result = run_cluster(args, config, data_dir, endpoints).await;
    if let Some(etcd) = managed_etcd {
        etcd.stop().await;
    }
    result
}

/// The cluster of `skiff up`, its state where `config` says.
async fn run_cluster(
    args: UpArgs,
    config: skiff_apiserver::Config,
    data_dir: PathBuf,
    managed_endpoints: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let security = config.security.clone();
    let server = skiff_apiserver::ApiServer::start(config)
        .await
        .context("starting the API server")?;
    let url = local_url(server.addr, security.is_some());
    let configs = security
        .as_ref()
        .map(|s| security::write_configs(s, &data_dir, &url))
        .transpose()?;
    let component_tls = |pick: fn(&security::Configs) -> &std::path::Path| {
        configs
            .as_ref()
            .map(|c| security::component_tls(pick(c)))
            .transpose()
            .map(Option::flatten)
    };
    let mut scheduler_config = skiff_scheduler::Config::new(&url);
    scheduler_config.tls = component_tls(|c| &c.scheduler)?;
    let (stop_controllers, controllers_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut controllers_config = skiff_controllers::Config::new(&url);
    controllers_config.tls = component_tls(|c| &c.controller_manager)?;
    controllers_config.root_ca = security.as_ref().map(|s| s.ca.cert_pem.clone());
    controllers_config.lb_pool = lb_pool(&args.lb_pool)?;
    controllers_config.node_cidrs = args.node_cidrs.ranges(&args.api.service_cidr)?;
    let controllers = tokio::spawn(async move {
        let stopped = async {
            let _ = controllers_stopped.await;
        };
        if let Err(e) = skiff_controllers::run(controllers_config, stopped).await {
            tracing::error!(error = %e, "controller manager stopped");
        }
    });
    let (stop_scheduler, scheduler_stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(async move {
        let stopped = async {
            let _ = scheduler_stopped.await;
        };
        if let Err(e) = skiff_scheduler::run_supervised(scheduler_config, stopped).await {
            tracing::error!(error = %e, "scheduler stopped");
        }
    });
    let node = args.node_name.clone().unwrap_or_else(host_name);
    let agent_dir = data_dir.join("agent");
    if let Some(security) = &security {
        // The local agent is on the server's machine: it gets its
        // certificate from the CA directly, no join needed.
        skiff_agent::credentials::Credentials::provision(
            &security.ca,
            &agent_dir,
            &node,
            security.node_cert_validity,
        )
        .context("issuing the local agent's certificate")?;
    }
    let mut agent_config = skiff_agent::Config::new(&url, &node, agent_dir);
    agent_config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    agent_config.runtime = skiff_agent::RuntimeKind::Auto;
    agent_config.proxy = args.proxy_mode.parse().map_err(anyhow::Error::msg)?;
    agent_config.service_cidr = Some(args.api.service_cidr.clone());
    agent_config.network.clone_from(&args.network);
    agent_config.lb_pool = (!args.lb_pool.is_empty()).then(|| args.lb_pool.clone());
    agent_config.pod_network = args.pod_network.options(&args.node_cidrs.cluster_cidr)?;
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        let stopped = async {
            let _ = agent_stopped.await;
        };
        if let Err(e) = skiff_agent::run(agent_config, stopped).await {
            tracing::error!(error = %e, "the local agent is not running: pods will stay Pending");
        }
    });
    let ingress = start_ingress(&args, &url, component_tls(|c| &c.ingress)?).await;
    let client_config = match &configs {
        Some(c) => c.admin_config.clone(),
        None => skiff_ctl::config::ClientConfig {
            server: url.clone(),
            ..Default::default()
        },
    };
    let config_path = skiff_ctl::config::save(&client_config)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(not written: {e})"));
    let kubeconfig_path = skiff_ctl::config::kubeconfig_path();
    let kubeconfig = match skiff_ctl::config::save_kubeconfig(
        &client_config,
        "admin",
        &kubeconfig_path,
        "skiff up",
    ) {
        Ok(()) => kubeconfig_path.display().to_string(),
        Err(e) => format!("(not written: {e})"),
    };
    println!("Skiff is up.");
    println!(
        "  API server:  {url} (gRPC and the Kubernetes HTTP API; reflection and health on; {})",
        if security.is_some() {
            "TLS, client certificates or tokens"
        } else {
            "PLAINTEXT, no authentication: --insecure"
        }
    );
    println!("  scheduler:   running (binds pending pods to Ready nodes)");
    println!(
        "  controllers: replicasets, replicationcontrollers, deployments, daemonsets, jobs, cronjobs, horizontal pod autoscalers, endpoints, services (load balancer pool {}), namespaces, nodes, garbage collector, serviceaccounts, root CA publisher",
        if args.lb_pool.is_empty() {
            "none"
        } else {
            &args.lb_pool
        }
    );
    println!(
        "  pods:        Pod Security {:?} enforced where a namespace has no pod-security.kubernetes.io/enforce label{}",
        args.api.pod_security_default.as_str(),
        match args.api.pod_security_exempt_namespaces.join(",") {
            exempt if exempt.is_empty() => String::new(),
            exempt => format!(" ({exempt} exempt)"),
        }
    );
    match &ingress {
        Ok(None) => println!("  ingress:     off (--ingress-http-listen \"\")"),
        Ok(Some(c)) => println!(
            "  ingress:     HTTP on {}{} (IngressClass {:?}, the default: Ingresses route to Services)",
            c.http.map_or_else(|| "-".into(), |a| a.to_string()),
            c.https
                .map_or_else(String::new, |a| format!(", HTTPS on {a}")),
            skiff_ingress::DEFAULT_CLASS
        ),
        Err(e) => println!(
            "  ingress:     NOT RUNNING: {e:#} (free the port or give --ingress-http-listen/--ingress-https-listen)"
        ),
    }
    if args.pod_network.pod_network == "cni" {
        println!(
            "  agent:       node {node:?} (Docker; pods on CNI from the node's block of {}, {} between nodes)",
            args.node_cidrs.cluster_cidr, args.pod_network.flannel_backend
        );
    } else {
        println!(
            "  agent:       node {node:?} (Docker; pods in the `{}` network)",
            args.network
        );
    }
    if let Some(endpoints) = &managed_endpoints {
        println!(
            "  state:       etcd at {} (started by skiff up, data in {})",
            endpoints.join(","),
            data_dir.join("etcd").display()
        );
    } else if args.api.etcd.is_empty() {
        println!("  state:       {} (embedded store)", data_dir.display());
    } else {
        println!("  state:       etcd at {}", args.api.etcd.join(","));
    }
    println!("  client:      {config_path} (skiff get, apply, logs ... use it; you are admin)");
    println!("  kubeconfig:  {kubeconfig} (kubectl, helm and Kubernetes clients; you are admin)");
    let grpcurl = match &configs {
        Some(c) => format!(
            "grpcurl -cacert {} -cert {} -key {}",
            c.admin_files.2.display(),
            c.admin_files.0.display(),
            c.admin_files.1.display()
        ),
        None => "grpcurl -plaintext".to_string(),
    };
    let target = url.split_once("://").map_or(url.as_str(), |(_, t)| t);
    println!("Try:");
    println!("  skiff get nodes");
    println!("  KUBECONFIG={kubeconfig} kubectl get nodes");
    println!("  {grpcurl} {target} list");
    if security.is_some() {
        println!(
            "  skiff token create      # a token for another machine to join: skiff agent --token ..."
        );
    }
    println!(
        "  scripts/busybox-image   # an image to run, built from scratch (no registry needed)"
    );
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Ok(Some(ingress)) = ingress {
        ingress.stop();
    }
    let _ = stop_agent.send(());
    let _ = agent.await;
    let _ = stop_scheduler.send(());
    let _ = stop_controllers.send(());
    let _ = scheduler.await;
    let _ = controllers.await;
    server.stop().await.context("stopping the API server")?;
    Ok(())
}

/// Starts the ingress controller beside the cluster; None when told not
/// to. A port it cannot have does not stop the cluster: it is said.
async fn start_ingress(
    args: &UpArgs,
    url: &str,
    tls: Option<skiff_client::ClientTls>,
) -> anyhow::Result<Option<skiff_ingress::IngressController>> {
    if args.ingress_http_listen.is_empty() && args.ingress_https_listen.is_empty() {
        return Ok(None);
    }
    let listen = crate::ingress::ListenArgs {
        http: args.ingress_http_listen.clone(),
        https: args.ingress_https_listen.clone(),
        ingress_class: skiff_ingress::DEFAULT_CLASS.into(),
        publish_address: Vec::new(),
    };
    let mut config = listen.config(url).await?;
    config.tls = tls;
    Ok(Some(skiff_ingress::start(config).await?))
}
