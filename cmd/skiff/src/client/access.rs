//! The access commands: `token` (bootstrap tokens for joining nodes),
//! `auth` (`whoami`, `can-i`) and `kubeconfig`, their flags and their
//! calls into `skiff_ctl`.

use std::path::PathBuf;

use clap::Subcommand;

use super::ClientArgs;
use crate::common::connection;

#[derive(clap::Args)]
pub(crate) struct KubeconfigArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// A user to issue a client certificate for (its common name),
    /// instead of yours.
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// The new user's groups (its organizations); repeat for several.
    #[arg(long = "group")]
    pub(crate) groups: Vec<String>,
    /// The server's data dir, whose `pki/` holds the cluster CA (for
    /// `--user`).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    #[command(subcommand)]
    pub(crate) action: TokenAction,
}

#[derive(Subcommand)]
pub(crate) enum TokenAction {
    /// Make a bootstrap token; prints it, the CA hash and the join command.
    Create {
        /// How long it works (`1h`, `30m`, `24h`; `0` never expires).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for (shown by `token list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The bootstrap tokens and when they expire.
    List,
    /// Delete bootstrap tokens (by id or whole token): they stop working
    /// at once.
    Delete {
        /// Token ids (`abcdef`) or tokens (`abcdef.0123456789abcdef`).
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

#[derive(clap::Args)]
pub(crate) struct AuthArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    #[command(subcommand)]
    pub(crate) action: AuthAction,
}

#[derive(Subcommand)]
pub(crate) enum AuthAction {
    /// Your user name and groups, as the server sees them.
    Whoami,
    /// Whether you may VERB RESOURCE (`pods`, `pods/log`,
    /// `deployments.apps`) [NAME]; prints yes or no (exit code 0 or 1).
    /// With `--list`: everything you may do in the namespace.
    CanI {
        /// get, list, watch, create, update, delete, ...
        #[arg(required_unless_present = "list")]
        verb: Option<String>,
        /// `pods`, `pods/log`, `deployments.apps`, `nodes` ...
        #[arg(required_unless_present = "list")]
        resource: Option<String>,
        /// One object.
        name: Option<String>,
        /// List what you may do instead, as kubectl's table.
        #[arg(long, conflicts_with_all = ["verb", "resource", "name"])]
        list: bool,
    },
}

/// `token create|list|delete`.
pub(super) async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let ctl = args.client.ctl()?;
    match args.action {
        TokenAction::Create { ttl, description } => {
            let ttl = if ttl == "0" {
                None
            } else {
                Some(
                    humantime::parse_duration(&ttl)
                        .map_err(|e| anyhow::anyhow!("error: --ttl {ttl:?}: {e}"))?,
                )
            };
            let (_, _, config) =
                connection(args.client.server.as_deref(), args.client.config.as_deref())?;
            let ca_hash = config
                .ca_hash()
                .map_err(|e| anyhow::anyhow!("error: {e}"))?;
            ctl.token_create(ttl, &description, &ca_hash).await?;
        }
        TokenAction::List => ctl.token_list().await?,
        TokenAction::Delete { tokens } => ctl.token_delete(&tokens).await?,
    }
    Ok(())
}

/// `auth whoami|can-i`; its exit code (`can-i`: 0 yes, 1 no).
pub(super) async fn auth(args: AuthArgs) -> anyhow::Result<i32> {
    let ctl = args.client.ctl()?;
    match args.action {
        AuthAction::Whoami => ctl.whoami().await?,
        AuthAction::CanI { list: true, .. } => ctl.can_i_list().await?,
        AuthAction::CanI {
            verb,
            resource,
            name,
            ..
        } => {
            let allowed = ctl
                .can_i(
                    verb.as_deref().unwrap_or(""),
                    resource.as_deref().unwrap_or(""),
                    name.as_deref().unwrap_or(""),
                )
                .await?;
            return Ok(if allowed { 0 } else { 1 });
        }
    }
    Ok(0)
}

/// `skiff kubeconfig`: the client config as a kubeconfig, or a new user's.
pub(super) fn kubeconfig(args: &KubeconfigArgs) -> anyhow::Result<String> {
    let (server, _, mut config) =
        crate::common::connection(args.client.server.as_deref(), args.client.config.as_deref())?;
    config.server = server;
    if let Some(namespace) = &args.client.namespace {
        config.namespace = namespace.clone();
    }
    if args.user.is_none() && (!args.groups.is_empty() || args.data_dir.is_some()) {
        anyhow::bail!("error: --group and --data-dir are for a new user: give --user too");
    }
    if args.user.as_deref() == Some("") {
        anyhow::bail!("error: --user: a user name is needed");
    }
    let Some(user) = &args.user else {
        let name = skiff_pki::Parsed::from_pem(&config.client_certificate)
            .map_or_else(|| "skiff".to_string(), |p| p.common_name);
        return Ok(skiff_ctl::config::kubeconfig(&config, &name));
    };
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => crate::common::default_data_dir(),
    };
    let pki = data_dir.join("pki");
    // Both, or Ca::load_or_create would make a new CA over the cluster's.
    if !pki.join("ca.key").is_file() || !pki.join("ca.crt").is_file() {
        anyhow::bail!(
            "error: no cluster CA in {} (ca.crt and ca.key): run this on the server's machine, with --data-dir set to its data dir",
            pki.display()
        );
    }
    let ca = skiff_pki::Ca::load_or_create(&pki)?;
    let groups: Vec<&str> = args.groups.iter().map(String::as_str).collect();
    let identity = ca.issue_client(user, &groups)?;
    let mut issued =
        skiff_ctl::config::ClientConfig::with_identity(&config.server, &ca.cert_pem, &identity);
    issued.namespace = config.namespace;
    Ok(skiff_ctl::config::kubeconfig(&issued, user))
}
