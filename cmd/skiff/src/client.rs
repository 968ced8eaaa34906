//! The client commands (`apply`, `get`, `describe`, `delete`, `scale`,
//! `rollout`, `logs`, `exec`, `top`, `label`, `annotate`, `token`, `auth`,
//! `api-resources`, `cluster-info`, `version`): their flags, and each a
//! call into `skiff_ctl`. The access commands (`token`, `auth`,
//! `kubeconfig`) are in `client/access.rs`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::common::connection;

mod access;

use access::{AuthArgs, KubeconfigArgs, TokenArgs};

/// The commands that talk to a cluster as a client.
#[derive(Subcommand)]
pub(crate) enum ClientCommand {
    /// Create or update objects from manifests (YAML or JSON; files,
    /// directories, `-` for stdin).
    Apply(ApplyArgs),
    /// Create objects from manifests (existing ones are an error).
    Create(CreateArgs),
    /// List objects as a table (or -o yaml|json|name|wide).
    Get(GetArgs),
    /// Show an object's fields, conditions and Events.
    Describe(TargetArgs),
    /// Delete objects by name or by manifest.
    Delete(DeleteArgs),
    /// Set the replicas of a Deployment, ReplicaSet or ReplicationController.
    Scale(ScaleArgs),
    /// Mark a node unschedulable: it takes no new pods.
    Cordon(NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(NodeArgs),
    /// Cordon a node and remove its pods (kubectl's checks and flags),
    /// waiting for them to be gone.
    Drain(DrainArgs),
    /// Watch, list, undo, pause or resume a Deployment's rollouts.
    Rollout(RolloutArgs),
    /// Print a container's log.
    Logs(LogsArgs),
    /// Run a command in a container (`skiff exec POD -- CMD ARGS`).
    Exec(ExecArgs),
    /// Attach to a container's own process (`skiff attach POD [-c C] [-i]
    /// [-t]`): its output, and with -i your stdin when the container keeps
    /// it open (`stdin: true`).
    Attach(Attachment),
    /// Forward local ports to a pod's ports (`skiff port-forward POD
    /// [LOCAL:]REMOTE...`), until interrupted.
    PortForward(PortForwardArgs),
    /// Show the CPU and memory use of nodes or pods (sampled by the
    /// agents every few seconds).
    Top(TopArgs),
    /// Add, change (--overwrite) or remove (`key-`) labels.
    Label(MetadataArgs),
    /// Add, change (--overwrite) or remove (`key-`) annotations.
    Annotate(MetadataArgs),
    /// The kinds the server serves.
    ApiResources,
    /// Where the cluster is and whether it answers.
    ClusterInfo(ClientArgs),
    /// The client's version (and the server's address).
    Version(ClientArgs),
    /// Bootstrap tokens for joining nodes (`create`, `list`, `delete`).
    Token(TokenArgs),
    /// Who the server takes you for (`whoami`), and what you may do
    /// (`can-i VERB RESOURCE [NAME]`).
    Auth(AuthArgs),
    /// Print a kubeconfig for kubectl, helm and other Kubernetes clients:
    /// yours (from the client config), or with `--user` a new identity
    /// signed by the cluster CA in `--data-dir` (on the server's machine).
    Kubeconfig(KubeconfigArgs),
}

impl ClientCommand {
    /// The command's name (its one trace's root span); None for those
    /// that make no call.
    pub(crate) fn name(&self) -> Option<&'static str> {
        Some(match self {
            Self::Apply(_) => "apply",
            Self::Create(_) => "create",
            Self::Get(_) => "get",
            Self::Describe(_) => "describe",
            Self::Delete(_) => "delete",
            Self::Scale(_) => "scale",
            Self::Cordon(_) => "cordon",
            Self::Uncordon(_) => "uncordon",
            Self::Drain(_) => "drain",
            Self::Rollout(_) => "rollout",
            Self::Logs(_) => "logs",
            Self::Exec(_) => "exec",
            Self::PortForward(_) => "port-forward",
            Self::Attach(_) => "attach",
            Self::Top(_) => "top",
            Self::Label(_) => "label",
            Self::Annotate(_) => "annotate",
            Self::ClusterInfo(_) => "cluster-info",
            Self::Token(_) => "token",
            Self::Auth(_) => "auth",
            Self::Version(_) | Self::ApiResources | Self::Kubeconfig(_) => return None,
        })
    }
}

/// Where the cluster is: flags, else `~/.skiff/config`, else 127.0.0.1:6443.
#[derive(clap::Args, Clone)]
pub(crate) struct ClientArgs {
    /// The API server (default: from ~/.skiff/config or $SKIFF_CONFIG).
    #[arg(long, env = "SKIFF_SERVER", global = true)]
    pub(crate) server: Option<String>,
    /// The namespace (default: the config's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub(crate) namespace: Option<String>,
    /// The client config: the server, the cluster CA and your certificate
    /// (default: $SKIFF_CONFIG, else ~/.skiff/config).
    #[arg(long = "config", global = true)]
    pub(crate) config: Option<PathBuf>,
}

impl ClientArgs {
    pub(crate) fn ctl(&self) -> anyhow::Result<skiff_ctl::Ctl> {
        let (server, tls, config) = connection(self.server.as_deref(), self.config.as_deref())?;
        let namespace = self.namespace.clone().unwrap_or(config.namespace);
        Ok(skiff_ctl::Ctl::new(&server, tls.as_ref(), &namespace)?)
    }
}

#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Manifest files or directories (`-` for stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    pub(crate) files: Vec<String>,
    /// Read the directories' subdirectories too.
    #[arg(short = 'R', long)]
    pub(crate) recursive: bool,
    /// `client`: check the manifests and compare, send nothing; `server`:
    /// the server checks and admits everything, and writes nothing.
    #[arg(long, value_parser = ["none", "client", "server"], default_value = "none")]
    pub(crate) dry_run: String,
}

#[derive(clap::Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Manifest files or directories (`-` for stdin).
    #[arg(short = 'f', long = "filename", required_unless_present = "from")]
    pub(crate) files: Vec<String>,
    /// Read the directories' subdirectories too.
    #[arg(short = 'R', long)]
    pub(crate) recursive: bool,
    /// `client`: check the manifests, send nothing; `server`: the server
    /// checks and admits everything, and writes nothing.
    #[arg(long, value_parser = ["none", "client", "server"], default_value = "none")]
    pub(crate) dry_run: String,
    /// Without -f: what to make, `job NAME` (with --from).
    pub(crate) what: Vec<String>,
    /// The object to make it from: `cronjob/NAME` (a Job of its template,
    /// now).
    #[arg(long, conflicts_with = "files")]
    pub(crate) from: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The kind (`pods`, `po`, `deployment`, ...).
    #[arg(required_unless_present = "raw", default_value = "")]
    pub(crate) kind: String,
    /// Names (default: all).
    pub(crate) names: Vec<String>,
    /// GET this path of the server's HTTP API and print the reply
    /// (`/readyz`, `/api/v1/namespaces`), as `kubectl get --raw`.
    #[arg(long, conflicts_with_all = ["names", "watch"])]
    pub(crate) raw: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub(crate) all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long, default_value = "")]
    pub(crate) selector: String,
    /// Field selector (`status.phase=Running`).
    #[arg(long, default_value = "")]
    pub(crate) field_selector: String,
    /// Output: wide, yaml, json or name.
    #[arg(short = 'o', long, default_value = "")]
    pub(crate) output: String,
    /// After listing, print changes as they happen.
    #[arg(short = 'w', long)]
    pub(crate) watch: bool,
}

#[derive(clap::Args)]
pub(crate) struct TargetArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// KIND NAME or KIND/NAME.
    #[arg(required = true, num_args = 1..=2)]
    pub(crate) target: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// KIND NAME..., or KIND/NAME.
    pub(crate) target: Vec<String>,
    /// Delete what these manifests name.
    #[arg(short = 'f', long = "filename")]
    pub(crate) files: Vec<String>,
    /// Read the directories' subdirectories too.
    #[arg(short = 'R', long)]
    pub(crate) recursive: bool,
    /// background, foreground or orphan.
    #[arg(long, default_value = "background")]
    pub(crate) cascade: String,
}

#[derive(clap::Args)]
pub(crate) struct ScaleArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// KIND NAME or KIND/NAME.
    #[arg(required = true, num_args = 1..=2)]
    pub(crate) target: Vec<String>,
    /// The new number of replicas.
    #[arg(long)]
    pub(crate) replicas: i32,
}

#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The node.
    pub(crate) node: String,
}

#[derive(clap::Args)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The node.
    pub(crate) node: String,
    /// Leave DaemonSet-managed pods where they are.
    #[arg(long)]
    pub(crate) ignore_daemonsets: bool,
    /// Remove pods with emptyDir volumes (their data is lost).
    #[arg(long)]
    pub(crate) delete_emptydir_data: bool,
    /// Remove pods that no controller replaces.
    #[arg(long)]
    pub(crate) force: bool,
    /// Seconds each pod gets to stop (-1: its own grace period).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub(crate) grace_period: i64,
    /// How long to wait for the pods to be gone (`90s`, `5m`; a number is
    /// seconds; 0: as long as it takes, kubectl's default).
    #[arg(long, default_value = "0", value_parser = parse_timeout)]
    pub(crate) timeout: std::time::Duration,
    /// Delete the pods instead of evicting them: PodDisruptionBudgets are
    /// not asked (use with care).
    #[arg(long)]
    pub(crate) disable_eviction: bool,
}

#[derive(clap::Args)]
pub(crate) struct RolloutArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// status, history, undo, pause or resume.
    #[arg(value_parser = ["status", "history", "undo", "pause", "resume"])]
    pub(crate) action: String,
    /// deployment/NAME (or deployment NAME).
    #[arg(required = true, num_args = 1..=2)]
    pub(crate) target: Vec<String>,
    /// undo: the revision to go back to (default: the previous one).
    #[arg(long, default_value_t = 0)]
    pub(crate) to_revision: i64,
    /// status: how long to wait, in seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
}

#[derive(clap::Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// `nodes` (`node`, `no`) or `pods` (`pod`, `po`).
    #[arg(value_parser = ["nodes", "node", "no", "pods", "pod", "po"])]
    pub(crate) what: String,
    /// Only this node or pod.
    pub(crate) name: Option<String>,
    /// Pods of every namespace.
    #[arg(short = 'A', long)]
    pub(crate) all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long, default_value = "")]
    pub(crate) selector: String,
    /// One line per container (pods).
    #[arg(long)]
    pub(crate) containers: bool,
    /// Biggest first by `cpu` or `memory`.
    #[arg(long)]
    pub(crate) sort_by: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The pod.
    pub(crate) pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long, default_value = "")]
    pub(crate) container: String,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    pub(crate) follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub(crate) tail: Option<i64>,
    /// The previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    pub(crate) previous: bool,
}

/// What `exec` and `attach` join: a pod's container, with stdin and a
/// terminal or not.
#[derive(clap::Args)]
pub(crate) struct Attachment {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The pod.
    pub(crate) pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long, default_value = "")]
    pub(crate) container: String,
    /// Pass stdin on.
    #[arg(short = 'i', long)]
    pub(crate) stdin: bool,
    /// Use a terminal (with -i: interactive).
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
}

#[derive(clap::Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub(crate) on: Attachment,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct PortForwardArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The pod (NAME or pod/NAME).
    pub(crate) pod: String,
    /// `[LOCAL:]REMOTE`: LOCAL alone is also the remote port; `:REMOTE`
    /// picks a free local port.
    #[arg(required = true)]
    pub(crate) ports: Vec<String>,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) address: String,
}

#[derive(clap::Args)]
pub(crate) struct MetadataArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// KIND NAME (or KIND/NAME), then key=value or key- pairs.
    #[arg(required = true, num_args = 2..)]
    pub(crate) args: Vec<String>,
    /// Replace existing values.
    #[arg(long)]
    pub(crate) overwrite: bool,
}

pub(crate) fn dry_run(flag: &str) -> skiff_ctl::apply::DryRun {
    match flag {
        "client" => skiff_ctl::apply::DryRun::Client,
        "server" => skiff_ctl::apply::DryRun::Server,
        _ => skiff_ctl::apply::DryRun::None,
    }
}

/// The deployment a rollout command names.
pub(crate) fn deployment_name(target: &[String]) -> anyhow::Result<String> {
    let name = match target {
        [one] => one
            .split_once('/')
            .map(|(kind, name)| (kind, name.to_string())),
        [kind, name] => Some((kind.as_str(), name.clone())),
        _ => None,
    };
    match name {
        Some((kind, name))
            if skiff_ctl::kinds::find(kind).is_some_and(|k| k.info().kind == "Deployment") =>
        {
            Ok(name)
        }
        _ => anyhow::bail!("error: rollout works on deployments: deployment/NAME"),
    }
}

/// Runs a client command; its exit code.
pub(crate) async fn run(command: ClientCommand) -> anyhow::Result<i32> {
    match command {
        ClientCommand::Apply(args) => {
            let ctl = args.client.ctl()?.recursive(args.recursive);
            ctl.apply(&args.files, dry_run(&args.dry_run), false)
                .await?;
        }
        ClientCommand::Create(args) => {
            let ctl = args.client.ctl()?.recursive(args.recursive);
            match &args.from {
                Some(from) => {
                    ctl.create_job_from(&args.what, from, args.dry_run == "server")
                        .await?;
                }
                None => ctl.apply(&args.files, dry_run(&args.dry_run), true).await?,
            }
        }
        ClientCommand::Get(args) if args.raw.is_some() => {
            let path = args.raw.as_deref().unwrap_or("/");
            get_raw(&args.client, path).await?;
        }
        ClientCommand::Get(args) => {
            let output: skiff_ctl::Output = args
                .output
                .parse()
                .map_err(|e: String| anyhow::anyhow!("error: {e}"))?;
            let ctl = args.client.ctl()?;
            let kinds: Vec<&str> = args.kind.split(',').filter(|k| !k.is_empty()).collect();
            for (i, kind) in kinds.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                ctl.get(
                    kind,
                    &args.names,
                    args.all_namespaces,
                    &args.selector,
                    &args.field_selector,
                    output,
                    args.watch && kinds.len() == 1,
                )
                .await?;
            }
        }
        ClientCommand::Describe(args) => args.client.ctl()?.describe(&args.target).await?,
        ClientCommand::Delete(args) => {
            let ctl = args.client.ctl()?.recursive(args.recursive);
            ctl.delete(&args.target, &args.files, &args.cascade).await?;
        }
        ClientCommand::Cordon(args) => args.client.ctl()?.cordon(&args.node, true).await?,
        ClientCommand::Uncordon(args) => args.client.ctl()?.cordon(&args.node, false).await?,
        ClientCommand::Drain(args) => {
            let options = skiff_ctl::drain::DrainOptions {
                ignore_daemonsets: args.ignore_daemonsets,
                delete_emptydir_data: args.delete_emptydir_data,
                force: args.force,
                grace_period: (args.grace_period >= 0).then_some(args.grace_period),
                timeout: args.timeout,
                disable_eviction: args.disable_eviction,
            };
            args.client.ctl()?.drain(&args.node, &options).await?
        }
        ClientCommand::Scale(args) => {
            args.client
                .ctl()?
                .scale(&args.target, args.replicas)
                .await?
        }
        ClientCommand::Rollout(args) => {
            let ctl = args.client.ctl()?;
            let name = deployment_name(&args.target)?;
            match args.action.as_str() {
                "status" => {
                    ctl.rollout_status(&name, std::time::Duration::from_secs(args.timeout))
                        .await?
                }
                "history" => ctl.rollout_history(&name).await?,
                "undo" => ctl.rollout_undo(&name, args.to_revision).await?,
                "pause" => ctl.rollout_pause(&name, true).await?,
                _ => ctl.rollout_pause(&name, false).await?,
            }
        }
        ClientCommand::Logs(args) => {
            let ctl = args.client.ctl()?;
            ctl.logs(
                &args.pod,
                &args.container,
                args.follow,
                args.tail,
                args.previous,
            )
            .await?;
        }
        ClientCommand::Top(args) => {
            let ctl = args.client.ctl()?;
            let table = if matches!(args.what.as_str(), "nodes" | "node" | "no") {
                ctl.top_nodes(
                    args.name.as_deref(),
                    &args.selector,
                    args.sort_by.as_deref(),
                )
                .await?
            } else {
                ctl.top_pods(&skiff_ctl::top::TopPods {
                    name: args.name,
                    all_namespaces: args.all_namespaces,
                    selector: args.selector,
                    containers: args.containers,
                    sort_by: args.sort_by,
                })
                .await?
            };
            print!("{table}");
        }
        ClientCommand::Exec(args) => {
            let on = &args.on;
            let ctl = on.client.ctl()?;
            let code = if on.stdin || on.tty {
                ctl.exec_attached(&on.pod, &on.container, &args.command, on.stdin, on.tty)
                    .await?
            } else {
                ctl.exec(&on.pod, &on.container, &args.command).await?
            };
            return Ok(code);
        }
        ClientCommand::Attach(args) => {
            let code = args
                .client
                .ctl()?
                .attach(&args.pod, &args.container, args.stdin, args.tty)
                .await?;
            return Ok(code);
        }
        ClientCommand::PortForward(args) => {
            let ports = args
                .ports
                .iter()
                .map(|p| skiff_ctl::portforward::parse_ports(p))
                .collect::<Result<Vec<_>, _>>()?;
            args.client
                .ctl()?
                .port_forward(&args.pod, &ports, &args.address)
                .await?;
        }
        ClientCommand::Label(args) => {
            args.client
                .ctl()?
                .set_metadata("labels", &args.args, args.overwrite)
                .await?
        }
        ClientCommand::Annotate(args) => {
            args.client
                .ctl()?
                .set_metadata("annotations", &args.args, args.overwrite)
                .await?;
        }
        ClientCommand::Token(args) => access::token(args).await?,
        ClientCommand::Auth(args) => return access::auth(args).await,
        ClientCommand::ApiResources => print!("{}", skiff_ctl::api_resources()),
        ClientCommand::Kubeconfig(args) => print!("{}", access::kubeconfig(&args)?),
        ClientCommand::ClusterInfo(client) => client.ctl()?.cluster_info().await?,
        ClientCommand::Version(client) => {
            println!("Client Version: skiff {}", env!("CARGO_PKG_VERSION"));
            let config = skiff_ctl::config::load().unwrap_or_default();
            println!("Server: {}", client.server.unwrap_or(config.server));
        }
    }
    Ok(0)
}

/// A drain timeout: `90s`, `5m`, or seconds.
fn parse_timeout(value: &str) -> Result<std::time::Duration, String> {
    match value.parse::<u64>() {
        Ok(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(value).map_err(|e| e.to_string()),
    }
}

/// `skiff get --raw PATH`: the server's HTTP reply to `GET PATH`, as
/// yourself (the config's certificate); a refusal is an error.
async fn get_raw(client: &ClientArgs, path: &str) -> anyhow::Result<()> {
    let (server, tls, _) = connection(client.server.as_deref(), client.config.as_deref())?;
    let tls = tls.ok_or_else(|| anyhow::anyhow!("error: --raw needs an https:// server"))?;
    anyhow::ensure!(
        path.starts_with('/'),
        "error: --raw {path:?}: a path starts with /"
    );
    let target = crate::https::Target {
        base: server.trim_end_matches('/').to_string(),
        tls,
        token: None,
    };
    let reply = target
        .request(http::Method::GET, path, None)
        .await
        .map_err(|e| anyhow::anyhow!("error: {e:#}"))?;
    let text = reply.text();
    if !reply.status.is_success() {
        anyhow::bail!("Error from server ({}): {}", reply.status, text.trim());
    }
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}
