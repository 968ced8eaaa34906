//! `skiff ingress`: the ingress controller in the foreground.

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::common::{ConnectArgs, serve_metrics, shutdown_signal};

/// The ingress controller's own flags (shared with `skiff up`'s
/// `--ingress-*`).
#[derive(clap::Args, Clone)]
pub(crate) struct ListenArgs {
    /// Serve HTTP on this address ("" for not at all).
    #[arg(long = "http-listen", default_value = "0.0.0.0:80")]
    pub(crate) http: String,
    /// Serve HTTPS on this address ("" for not at all).
    #[arg(long = "https-listen", default_value = "0.0.0.0:443")]
    pub(crate) https: String,
    /// The IngressClass to make at start (the cluster's default unless
    /// another class is; "" makes none).
    #[arg(long, default_value = skiff_ingress::DEFAULT_CLASS)]
    pub(crate) ingress_class: String,
    /// The addresses to write to the status of the Ingresses served (this
    /// node's addresses, comma separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) publish_address: Vec<String>,
}

impl ListenArgs {
    /// The controller's config against `server`; without
    /// `--publish-address`, the address it serves on (when listening on
    /// all: this host's default route's source address, as the API
    /// server advertises itself).
    pub(crate) async fn config(&self, server: &str) -> anyhow::Result<skiff_ingress::Config> {
        let addr = |text: &str, flag: &str| -> anyhow::Result<Option<SocketAddr>> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse()
                .map(Some)
                .with_context(|| format!("{flag} {text:?}: not an IP:PORT"))
        };
        let mut config = skiff_ingress::Config::new(server);
        config.http = addr(&self.http, "--http-listen")?;
        config.https = addr(&self.https, "--https-listen")?;
        config.class.clone_from(&self.ingress_class);
        config.addresses.clone_from(&self.publish_address);
        if config.addresses.is_empty()
            && let Some(bound) = config.http.or(config.https)
        {
            let address = skiff_apiserver::advertise_address(None, bound).await;
            config.addresses.push(address.ip().to_string());
        }
        Ok(config)
    }
}

#[derive(clap::Args)]
pub(crate) struct IngressArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    #[command(flatten)]
    pub(crate) listen: ListenArgs,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// Runs the controller until a signal.
pub(crate) async fn run(args: IngressArgs) -> anyhow::Result<()> {
    let _metrics = serve_metrics(args.metrics_addr).await?;
    let (server, tls) = args.connect.resolve()?;
    let mut config = args.listen.config(&server).await?;
    config.tls = tls;
    let controller = skiff_ingress::start(config)
        .await
        .context("starting the ingress controller")?;
    let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    println!(
        "skiff ingress: HTTP on {}, HTTPS on {} (IngressClass {:?}, controller {})",
        shown(controller.http),
        shown(controller.https),
        args.listen.ingress_class,
        skiff_ingress::CONTROLLER
    );
    shutdown_signal().await;
    controller.stop();
    Ok(())
}
