//! `skiff server --publish-credentials NAME`: an API server running as a
//! pod of another Kubernetes cluster (the Helm chart's) hands its
//! components their credentials through a Secret of that cluster, as
//! vcluster does: the cluster CA, client configs for the scheduler and the
//! controller manager, the admin's kubeconfig and config, and a bootstrap
//! token (with the CA pin) agents join with. It writes through the hosting
//! cluster's API with its pod's service account (in-cluster config:
//! `KUBERNETES_SERVICE_HOST`/`PORT` and the token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount`), and keeps trying until
//! that API takes it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use skiff::pb::core::v1::Secret;
use skiff_ctl::config::ClientConfig;

use crate::https::{Reply, Target};

/// Where a pod's service account credentials are.
const ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What to publish, and where.
pub(crate) struct Publish {
    /// The Secret's name (in the pod's namespace).
    pub(crate) secret: String,
    /// The URL components reach this server at (their configs' server).
    pub(crate) url: String,
}

/// The hosting cluster's API as this pod's service account.
fn in_cluster() -> anyhow::Result<(Target, String)> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context(
        "KUBERNETES_SERVICE_HOST is not set: --publish-credentials works in a pod of a Kubernetes cluster",
    )?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let dir = Path::new(ACCOUNT_DIR);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading the pod's service account {file} in {ACCOUNT_DIR}"))
    };
    let ca = read("ca.crt")?;
    let token = read("token")?.trim().to_string();
    let namespace = read("namespace")?.trim().to_string();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let tls = skiff_client::ClientTls::new(&ca, None, skiff_pki::tls::ServerCheck::Name)
        .context("the service account's ca.crt")?;
    Ok((
        Target {
            base: format!("https://{host}:{port}"),
            tls,
            token: Some(token),
        },
        namespace,
    ))
}

/// How often a published Secret is checked again (an upgrade, a rollback
/// or a hand that emptied it, or a deleted join token, are mended).
const RECHECK: Duration = Duration::from_secs(60);

/// Publishes in the background (the server serves meanwhile: its
/// components' pods wait for the Secret), trying again after failures, and
/// checks it again every [`RECHECK`].
pub(crate) fn spawn(publish: Publish, configs: crate::security::Configs) {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            match once(&publish, &configs).await {
                Ok(()) => {
                    wait = Duration::from_secs(1);
                    tokio::time::sleep(RECHECK).await;
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), secret = %publish.secret, "publishing the credentials; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
}

async fn once(publish: &Publish, configs: &crate::security::Configs) -> anyhow::Result<()> {
    let (target, namespace) = in_cluster()?;
    let data = contents(publish, configs).await?;
    let path = format!("/api/v1/namespaces/{namespace}/secrets");
    let mut secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": publish.secret,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "skiff"},
        },
        "type": "Opaque",
        "data": data,
    });
    let existing = target
        .request(
            http::Method::GET,
            &format!("{path}/{}", publish.secret),
            None,
        )
        .await?;
    let written = match existing.status {
        http::StatusCode::NOT_FOUND => {
            target
                .request(http::Method::POST, &path, Some(&secret))
                .await?
        }
        status if status.is_success() => {
            let current: serde_json::Value =
                serde_json::from_slice(&existing.body).context("the Secret read back")?;
            // Another server of the cluster (same CA) may have published
            // its own certificates: as good as this one's, and left alone
            // so that servers do not take turns rewriting it.
            let same = |key: &str| current["data"][key] == secret["data"][key];
            let complete = secret["data"]
                .as_object()
                .is_some_and(|ours| ours.keys().all(|k| !current["data"][k].is_null()));
            if complete && same("ca.crt") && same("server") && same("node-token") {
                tracing::debug!(secret = %publish.secret, %namespace, "the credentials are published already");
                return Ok(());
            }
            // Only the data is this server's: the labels and annotations
            // (Helm's, when the chart made the Secret) stay as they are.
            let mut next = current;
            next["data"] = secret["data"].take();
            next["type"] = "Opaque".into();
            target
                .request(
                    http::Method::PUT,
                    &format!("{path}/{}", publish.secret),
                    Some(&next),
                )
                .await?
        }
        _ => return Err(refused("reading", &existing)),
    };
    if written.status == http::StatusCode::FORBIDDEN
        && existing.status == http::StatusCode::NOT_FOUND
    {
        anyhow::bail!(
            "the Secret {namespace}/{} is missing and this service account may not create it: the chart makes it (helm upgrade puts it back)",
            publish.secret
        );
    }
    if !written.status.is_success() {
        return Err(refused("writing", &written));
    }
    tracing::info!(secret = %publish.secret, %namespace, "published the credentials to the hosting cluster");
    Ok(())
}

fn refused(what: &str, reply: &Reply) -> anyhow::Error {
    anyhow::anyhow!(
        "the hosting cluster refused {what} the Secret ({}): {}",
        reply.status,
        reply.text().trim()
    )
}

/// The Secret's data (base64), each config pointing at `publish.url`.
async fn contents(
    publish: &Publish,
    configs: &crate::security::Configs,
) -> anyhow::Result<BTreeMap<String, String>> {
    use base64::Engine as _;
    let at_url = |path: &Path| -> anyhow::Result<String> {
        let mut config = skiff_ctl::config::load_from(path).map_err(anyhow::Error::msg)?;
        config.server.clone_from(&publish.url);
        Ok(serde_yaml_text(&config))
    };
    let mut admin = configs.admin_config.clone();
    admin.server.clone_from(&publish.url);
    let (token, ca_hash) = node_token(&configs.admin_config).await?;
    let mut files = BTreeMap::new();
    files.insert("ca.crt", admin.certificate_authority.clone());
    files.insert("server", publish.url.clone());
    files.insert(
        "admin.kubeconfig",
        skiff_ctl::config::kubeconfig(&admin, "admin"),
    );
    files.insert("admin.config", serde_yaml_text(&admin));
    files.insert("scheduler.config", at_url(&configs.scheduler)?);
    files.insert(
        "controller-manager.config",
        at_url(&configs.controller_manager)?,
    );
    files.insert("node-token", token);
    files.insert("ca-hash", ca_hash);
    Ok(files
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect())
}

fn serde_yaml_text(config: &ClientConfig) -> String {
    skiff_ctl::config::to_text(config, "skiff server --publish-credentials")
}

/// The bootstrap token agents join with (`ID.SECRET`) and the CA pin:
/// the token's id is the pin's first six digits, so every start (and every
/// server of the cluster) finds the same token, made once.
async fn node_token(admin: &ClientConfig) -> anyhow::Result<(String, String)> {
    let ca_hash = admin.ca_hash().map_err(anyhow::Error::msg)?;
    let id: String = ca_hash
        .trim_start_matches("sha256:")
        .chars()
        .take(6)
        .collect();
    let tls = admin.tls().map_err(anyhow::Error::msg)?;
    let channel = skiff_client::connect_lazy_with(&admin.server, tls.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secrets = skiff_client::Api::<Secret>::new(channel);
    let name = format!("bootstrap-token-{id}");
    let secret = match secrets.get("kube-system", &name).await {
        Ok(found) => found,
        Err(status) if status.code() == tonic::Code::NotFound => {
            let made = skiff_ctl::auth::token_secret(
                &id,
                &skiff_pki::random_string(16),
                None,
                "agents of the Helm chart's DaemonSet (skiff server --publish-credentials)",
            );
            match secrets.create(made).await {
                Ok(created) => created,
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    secrets.get("kube-system", &name).await?
                }
                Err(status) => return Err(status).context("creating the agents' bootstrap token"),
            }
        }
        Err(status) => return Err(status).context("reading the agents' bootstrap token"),
    };
    let half = secret
        .data
        .get("token-secret")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .or_else(|| secret.string_data.get("token-secret").cloned())
        .context("the agents' bootstrap token has no token-secret")?;
    Ok((format!("{id}.{half}"), ca_hash))
}
