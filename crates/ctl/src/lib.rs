//! The kubectl side of the `skiff` command: every client command, over any
//! kind, printing what kubectl would.
//!
//! # Layout
//!
//! - [`auth`]: bootstrap tokens (`token create|list|delete`) and `auth
//!   whoami|can-i`.
//! - [`config`]: the client config (`~/.skiff/config`): the server, the
//!   cluster CA and the client's certificate.
//! - [`kinds`]: every kind behind one interface over JSON values.
//! - [`manifest`]: YAML/JSON manifests into checked documents.
//! - [`apply`]: apply and create.
//! - [`table`]: kubectl's tables.
//! - [`top`]: `top nodes|pods`, resource usage.
//! - [`Ctl`]: the commands (get, describe, delete, scale, rollout, logs,
//!   exec, label, annotate, api-resources, cluster-info).

pub mod apply;
pub mod auth;
pub mod config;
pub mod drain;
pub mod kinds;
pub mod manifest;
pub mod portforward;
pub use skiff::table;
pub mod top;

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use serde_json::Value;
use skiff::pb::core::v1::pod_exec_client::PodExecClient;
use skiff::pb::core::v1::pod_logs_client::PodLogsClient;
use skiff::pb::core::v1::{PodExecRequest, PodLogsRequest};
use tonic::transport::Channel;

use crate::kinds::Ops;

/// A command's failure, worded like kubectl's, for stderr; exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

/// Results of commands.
pub type Result<T, E = CtlError> = std::result::Result<T, E>;

/// How `get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The kind's table.
    Table,
    /// The table with more columns.
    Wide,
    /// YAML manifests.
    Yaml,
    /// JSON.
    Json,
    /// `kind/name` lines.
    Name,
}

impl std::str::FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "" => Self::Table,
            "wide" => Self::Wide,
            "yaml" => Self::Yaml,
            "json" => Self::Json,
            "name" => Self::Name,
            other => {
                return Err(format!(
                    "unable to match a printer suitable for the output format {other:?}, allowed formats are: json,name,wide,yaml"
                ));
            }
        })
    }
}

/// The commands, against one cluster.
pub struct Ctl {
    channel: Channel,
    /// The server's address, for messages.
    server: String,
    /// The namespace when none is named.
    pub namespace: String,
    /// `-f` directories are read with their subdirectories (`-R`).
    recursive: bool,
}

fn kind_of(name: &str) -> Result<Box<dyn Ops>> {
    kinds::find(name).ok_or_else(|| {
        CtlError(format!(
            "error: the server doesn't have a resource type {name:?} (see `skiff api-resources`)"
        ))
    })
}

/// Splits `deployment/web` or (`deployment`, `web`).
fn target(args: &[String]) -> Result<(Box<dyn Ops>, String)> {
    match args {
        [one] if one.contains('/') => {
            let (kind, name) = one.split_once('/').unwrap_or_default();
            Ok((kind_of(kind)?, name.to_string()))
        }
        [kind, name] => Ok((kind_of(kind)?, name.clone())),
        _ => Err(CtlError(
            "error: name a resource: KIND NAME or KIND/NAME".into(),
        )),
    }
}

/// YAML as kubectl prints it. Timestamps, and strings YAML 1.1 reads as
/// booleans (`yes`, `off` ...), are quoted: YAML 1.1 readers (PyYAML, and
/// so most validators) would read them as dates and booleans otherwise.
pub fn to_yaml(value: &Value) -> String {
    let text = serde_yaml::to_string(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len() + 64);
    // Inside a block scalar (`key: |`), lines are data: left alone.
    let mut block_indent: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(b) = block_indent {
            if line.trim().is_empty() || indent > b {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block_indent = None;
        }
        let trimmed = line.trim_end();
        let opens_block = ["|", "|-", "|+", ">", ">-", ">+"]
            .iter()
            .any(|m| trimmed.ends_with(&format!(": {m}")) || trimmed.ends_with(&format!("- {m}")));
        if opens_block {
            block_indent = Some(indent);
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let item = line.trim_start().strip_prefix("- ");
        match line.rsplit_once(": ") {
            Some((key, v)) if looks_like_timestamp(v) || yaml11_boolean(v) => {
                out.push_str(&format!("{key}: '{v}'\n"));
            }
            None if item.is_some_and(yaml11_boolean) => {
                out.push_str(&format!(
                    "{}- '{}'\n",
                    &line[..indent],
                    item.unwrap_or_default()
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A plain scalar YAML 1.2 reads as a string and YAML 1.1 as a boolean.
fn yaml11_boolean(v: &str) -> bool {
    matches!(
        v,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

fn looks_like_timestamp(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && (v.ends_with('Z') || v.ends_with("+00:00"))
}

impl Ctl {
    /// Commands against `server` (`https://127.0.0.1:6443` with `tls`, or
    /// `http://` for a server started `--insecure`).
    ///
    /// # Errors
    /// A malformed address, or a scheme that does not fit `tls`.
    pub fn new(
        server: &str,
        tls: Option<&skiff_client::ClientTls>,
        namespace: &str,
    ) -> Result<Self> {
        let channel = skiff_client::connect_lazy_with(server, tls)
            .map_err(|e| CtlError(format!("error: {e}")))?;
        Ok(Self {
            channel,
            server: server.to_string(),
            namespace: namespace.to_string(),
            recursive: false,
        })
    }

    /// The same commands, reading `-f` directories' subdirectories too
    /// (kubectl's `-R`).
    pub fn recursive(mut self, recursive: bool) -> Self {
        self.recursive = recursive;
        self
    }

    /// A gRPC error worded like kubectl's.
    fn server_error(&self, status: tonic::Status, kind: &str, name: &str) -> CtlError {
        use tonic::Code;
        let reason = match status.code() {
            Code::NotFound => {
                // A missing namespace (or other cause) is the server's to say.
                if name.is_empty() || status.message().contains("namespace") {
                    return CtlError(format!(
                        "Error from server (NotFound): {}",
                        status.message()
                    ));
                }
                return CtlError(format!(
                    "Error from server (NotFound): {} {name:?} not found",
                    kinds::find(kind).map_or(kind.to_string(), |k| k.info().plural.to_string()),
                ));
            }
            Code::Unavailable | Code::Unknown
                if format!("{status:?}").contains("certificate")
                    || format!("{status:?}").contains("CertificateRequired") =>
            {
                return CtlError(format!(
                    "Unable to connect to the server {}: the TLS handshake failed - is the client config's certificateAuthority this cluster's CA, and its certificate one the cluster issued? ({}: {status:?})",
                    self.server,
                    config::path().display()
                ));
            }
            // The server answered: its store is what it could not reach.
            Code::Unavailable | Code::DeadlineExceeded
                if status.message().contains("could not reach its store") =>
            {
                "ServiceUnavailable"
            }
            Code::Unavailable
                if status.message().contains("API server unavailable")
                    || status.message().contains("no API server answers")
                    || status.message().contains("connect") =>
            {
                return CtlError(format!(
                    "The connection to the server {} was refused - is the cluster running (`skiff up`)? Check the address with --server or in {} ({})",
                    self.server,
                    config::path().display(),
                    status.message()
                ));
            }
            Code::Unavailable => "ServiceUnavailable",
            Code::DeadlineExceeded => "Timeout",
            Code::AlreadyExists => "AlreadyExists",
            Code::InvalidArgument => "Invalid",
            Code::Aborted => "Conflict",
            Code::PermissionDenied => "Forbidden",
            Code::Unauthenticated => "Unauthorized",
            Code::FailedPrecondition => "BadRequest",
            Code::OutOfRange => "Expired",
            _ => "InternalError",
        };
        CtlError(format!(
            "Error from server ({reason}): {}",
            status.message()
        ))
    }

    fn namespace_for(&self, ops: &dyn Ops, all: bool) -> String {
        if all || !ops.info().namespaced {
            String::new()
        } else {
            self.namespace.clone()
        }
    }

    /// `apply -f`: prints `kind/name created|configured|unchanged` per
    /// document; invalid documents are reported and skipped.
    ///
    /// # Errors
    /// Any invalid document or failed apply (after doing the rest).
    pub async fn apply(
        &self,
        files: &[String],
        dry_run: apply::DryRun,
        create_only: bool,
    ) -> Result<()> {
        let (documents, invalid) = manifest::read(files, self.recursive);
        let mut failures: Vec<String> = invalid.iter().map(|e| e.to_string()).collect();
        let suffix = match dry_run {
            apply::DryRun::None => "",
            apply::DryRun::Client => " (dry run)",
            apply::DryRun::Server => " (server dry run)",
        };
        for doc in &documents {
            let label = apply::object_name(&*doc.ops, doc.name());
            let result = if create_only {
                apply::create(&self.channel, doc, &self.namespace, dry_run)
                    .await
                    .map(|()| apply::Outcome::Created)
            } else {
                apply::apply(&self.channel, doc, &self.namespace, dry_run).await
            };
            match result {
                Ok(outcome) => println!("{label} {}{suffix}", outcome.as_str()),
                Err(s) => failures.push(format!(
                    "{}: {}",
                    doc.origin(),
                    self.server_error(s, doc.ops.info().kind, doc.name())
                )),
            }
        }
        if documents.is_empty() && failures.is_empty() {
            let nested = !self.recursive
                && files.iter().any(|f| {
                    std::fs::read_dir(f)
                        .map(|mut d| d.any(|e| e.is_ok_and(|e| e.path().is_dir())))
                        .unwrap_or(false)
                });
            failures.push(if nested {
                "error: no objects passed to apply (the directory's manifests are in subdirectories: add -R)".into()
            } else {
                "error: no objects passed to apply".into()
            });
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CtlError(failures.join("\n")))
        }
    }

    /// `get KIND [NAME...]`.
    ///
    /// # Errors
    /// An unknown kind, a missing object, an unreachable server.
    #[allow(clippy::too_many_arguments)]
    pub async fn get(
        &self,
        kind: &str,
        names: &[String],
        all_namespaces: bool,
        labels: &str,
        fields: &str,
        output: Output,
        watch: bool,
    ) -> Result<()> {
        let ops = kind_of(kind)?;
        let namespace = self.namespace_for(&*ops, all_namespaces);
        let mut items = Vec::new();
        let mut version = String::new();
        if names.is_empty() {
            let (list, rv) = ops
                .list(&self.channel, &namespace, labels, fields)
                .await
                .map_err(|s| self.server_error(s, kind, ""))?;
            items = list;
            version = rv;
        } else {
            for name in names {
                let item = ops
                    .get(&self.channel, &self.namespace_for(&*ops, false), name)
                    .await
                    .map_err(|s| self.server_error(s, kind, name))?;
                items.push(item);
            }
        }
        let all = all_namespaces && ops.info().namespaced;
        self.print(&*ops, &items, names.len() == 1, all, output);
        if items.is_empty() && matches!(output, Output::Table | Output::Wide) && !watch {
            let place = if namespace.is_empty() {
                String::new()
            } else {
                format!(" in {namespace} namespace")
            };
            eprintln!("No resources found{place}.");
        }
        if watch {
            self.watch(
                &*ops, &namespace, labels, fields, &version, names, &items, all, output,
            )
            .await?;
        }
        Ok(())
    }

    /// `get -w`: after the list, one line (or document) per change, as
    /// it happens, until interrupted.
    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &self,
        ops: &dyn Ops,
        namespace: &str,
        labels: &str,
        fields: &str,
        version: &str,
        names: &[String],
        listed: &[Value],
        all: bool,
        output: Output,
    ) -> Result<()> {
        let kind = ops.info().kind;
        let mut events = ops
            .watch(&self.channel, namespace, labels, fields, version)
            .await
            .map_err(|s| self.server_error(s, kind, ""))?;
        let wide = output == Output::Wide;
        // Rows line up under the list's header.
        let mut widths: Vec<usize> = Vec::new();
        for row in table::rows(kind, listed, wide, all, SystemTime::now()) {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                if widths.len() <= i {
                    widths.push(w);
                } else {
                    widths[i] = widths[i].max(w);
                }
            }
        }
        while let Some(event) = events.next().await {
            let (_, object) = event.map_err(|s| self.server_error(s, kind, ""))?;
            let name = object["metadata"]["name"].as_str().unwrap_or("");
            if !names.is_empty() && !names.iter().any(|n| n == name) {
                continue;
            }
            match output {
                Output::Table | Output::Wide => {
                    let table = table::rows(
                        kind,
                        std::slice::from_ref(&object),
                        wide,
                        all,
                        SystemTime::now(),
                    );
                    let row = &table[1];
                    let mut line = String::new();
                    for (i, cell) in row.iter().enumerate() {
                        line.push_str(cell);
                        if i + 1 < row.len() {
                            let w = widths
                                .get(i)
                                .copied()
                                .unwrap_or(0)
                                .max(cell.chars().count());
                            line.push_str(&" ".repeat(w - cell.chars().count() + 3));
                        }
                    }
                    println!("{}", line.trim_end());
                }
                _ => self.print(ops, std::slice::from_ref(&object), true, all, output),
            }
            let _ = std::io::stdout().flush();
        }
        Ok(())
    }

    fn print(
        &self,
        ops: &dyn Ops,
        items: &[Value],
        single: bool,
        all_namespaces: bool,
        output: Output,
    ) {
        let info = ops.info();
        match output {
            Output::Table | Output::Wide => {
                if !items.is_empty() {
                    let rows = table::rows(
                        info.kind,
                        items,
                        output == Output::Wide,
                        all_namespaces,
                        SystemTime::now(),
                    );
                    print!("{}", table::render(&rows));
                }
            }
            Output::Name => {
                for item in items {
                    println!(
                        "{}",
                        apply::object_name(ops, item["metadata"]["name"].as_str().unwrap_or(""))
                    );
                }
            }
            Output::Yaml | Output::Json => {
                let value = if single {
                    items[0].clone()
                } else {
                    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
                };
                if output == Output::Yaml {
                    print!("{}", to_yaml(&value));
                } else {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&value).unwrap_or_default()
                    );
                }
            }
        }
        let _ = std::io::stdout().flush();
    }

    /// `delete KIND NAME... | -f FILE`: prints `kind "name" deleted`.
    ///
    /// # Errors
    /// An unknown kind or a missing object (after deleting the rest).
    pub async fn delete(&self, args: &[String], files: &[String], cascade: &str) -> Result<()> {
        let propagation = match cascade {
            "" | "background" | "true" => "Background",
            "foreground" => "Foreground",
            "orphan" | "false" => "Orphan",
            other => {
                return Err(CtlError(format!(
                    "error: --cascade must be background, foreground or orphan, not {other:?}"
                )));
            }
        };
        let mut targets: Vec<(Box<dyn Ops>, String, String)> = Vec::new();
        let mut failures = Vec::new();
        if !files.is_empty() {
            let (documents, invalid) = manifest::read(files, self.recursive);
            failures.extend(invalid.iter().map(|e| e.to_string()));
            for doc in documents {
                let ns = apply::namespace_of(&doc, &self.namespace);
                let name = doc.name().to_string();
                targets.push((doc.ops, ns, name));
            }
        } else {
            match args {
                [one] if one.contains('/') => {
                    let (ops, name) = target(args)?;
                    let ns = self.namespace_for(&*ops, false);
                    targets.push((ops, ns, name));
                }
                [kind, names @ ..] if !names.is_empty() => {
                    for name in names {
                        let ops = kind_of(kind)?;
                        let ns = self.namespace_for(&*ops, false);
                        targets.push((ops, ns, name.clone()));
                    }
                }
                _ => {
                    return Err(CtlError(
                        "error: name what to delete: KIND NAME..., KIND/NAME or -f FILE".into(),
                    ));
                }
            }
        }
        for (ops, ns, name) in targets {
            match ops.delete(&self.channel, &ns, &name, propagation).await {
                Ok(_) => println!("{} {name:?} deleted", ops.info().kind.to_lowercase()),
                Err(s) => failures.push(self.server_error(s, ops.info().kind, &name).0),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CtlError(failures.join("\n")))
        }
    }

    /// Reads, changes and writes one object, retrying on conflicts.
    async fn modify(
        &self,
        ops: &dyn Ops,
        name: &str,
        change: impl Fn(&mut Value) -> Result<()>,
    ) -> Result<Value> {
        let ns = self.namespace_for(ops, false);
        for _ in 0..10 {
            let mut obj = ops
                .get(&self.channel, &ns, name)
                .await
                .map_err(|s| self.server_error(s, ops.info().kind, name))?;
            change(&mut obj)?;
            if let Some(map) = obj.as_object_mut() {
                map.remove("status");
            }
            match ops.update(&self.channel, obj, false).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == tonic::Code::Aborted => continue,
                Err(s) => return Err(self.server_error(s, ops.info().kind, name)),
            }
        }
        Err(CtlError(format!(
            "error: {name:?} keeps changing; try again"
        )))
    }

    /// `scale KIND NAME --replicas N`.
    ///
    /// # Errors
    /// A kind without replicas, a missing object.
    pub async fn scale(&self, args: &[String], replicas: i32) -> Result<()> {
        let (ops, name) = target(args)?;
        if !matches!(
            ops.info().kind,
            "Deployment" | "ReplicaSet" | "ReplicationController" | "StatefulSet"
        ) {
            return Err(CtlError(format!(
                "error: {} cannot be scaled",
                ops.info().plural
            )));
        }
        self.modify(&*ops, &name, |obj| {
            obj["spec"]["replicas"] = Value::from(replicas);
            Ok(())
        })
        .await?;
        println!("{} scaled", apply::object_name(&*ops, &name));
        Ok(())
    }

    /// `create job NAME --from=cronjob/CRONJOB`: a Job of the CronJob's
    /// template now, as kubectl makes it (owned by the CronJob, annotated
    /// `cronjob.kubernetes.io/instantiate: manual`).
    ///
    /// # Errors
    /// Anything but a job from a cronjob; the CronJob missing; the create
    /// refused.
    pub async fn create_job_from(&self, what: &[String], from: &str, dry_run: bool) -> Result<()> {
        let [kind, name] = what else {
            return Err(CtlError(
                "error: name what to create: `create job NAME --from=cronjob/NAME`".into(),
            ));
        };
        if !matches!(kind.as_str(), "job" | "jobs") {
            return Err(CtlError(format!(
                "error: --from makes a job (`create job NAME --from=cronjob/NAME`), not a {kind}"
            )));
        }
        let Some(("cronjob" | "cronjobs" | "cj" | "cronjob.batch", source)) = from.split_once('/')
        else {
            return Err(CtlError(format!(
                "error: from must be an existing cronjob: {from}"
            )));
        };
        use skiff::Resource as _;
        use skiff::pb::batch::v1::{CronJob, Job};
        let cronjob = skiff_client::Api::<CronJob>::new(self.channel.clone())
            .get(&self.namespace, source)
            .await
            .map_err(|s| self.server_error(s, "cronjob", source))?;
        let template = cronjob
            .spec
            .as_ref()
            .and_then(|s| s.job_template.clone())
            .unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let mut annotations = tmeta.annotations;
        annotations.insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
        let job = Job {
            metadata: Some(skiff::pb::meta::v1::ObjectMeta {
                name: name.clone(),
                namespace: self.namespace.clone(),
                labels: tmeta.labels,
                annotations,
                owner_references: vec![cronjob.controller_reference()],
                ..Default::default()
            }),
            spec: template.spec,
            ..Default::default()
        };
        let api = skiff_client::Api::<Job>::new(self.channel.clone());
        let api = if dry_run { api.dry_run() } else { api };
        api.create(job)
            .await
            .map_err(|s| self.server_error(s, "job", name))?;
        let suffix = if dry_run { " (server dry run)" } else { "" };
        println!("job.batch/{name} created{suffix}");
        Ok(())
    }

    /// `label` / `annotate KIND NAME k=v k2-`.
    ///
    /// # Errors
    /// A malformed pair, an existing key without --overwrite.
    pub async fn set_metadata(&self, field: &str, args: &[String], overwrite: bool) -> Result<()> {
        let split = args
            .iter()
            .position(|a| a.contains('=') || a.ends_with('-'))
            .unwrap_or(args.len());
        let (ops, name) = target(&args[..split])?;
        let pairs = args[split..].to_vec();
        if pairs.is_empty() {
            return Err(CtlError(format!(
                "error: at least one {field} update is required: key=value or key-"
            )));
        }
        self.modify(&*ops, &name, |obj| {
            if !obj["metadata"][field].is_object() {
                obj["metadata"][field] = Value::Object(Default::default());
            }
            let map = obj["metadata"][field].as_object_mut().expect("an object");
            for pair in &pairs {
                if let Some((k, v)) = pair.split_once('=') {
                    if !overwrite && map.get(k).is_some_and(|old| old != v) {
                        return Err(CtlError(format!(
                            "error: '{k}' already has a value ({}), and --overwrite is false",
                            map[k].as_str().unwrap_or("")
                        )));
                    }
                    map.insert(k.to_string(), Value::String(v.to_string()));
                } else if let Some(key) = pair.strip_suffix('-') {
                    map.remove(key);
                }
            }
            Ok(())
        })
        .await?;
        let verb = if field == "labels" {
            "labeled"
        } else {
            "annotated"
        };
        println!("{} {verb}", apply::object_name(&*ops, &name));
        Ok(())
    }

    /// `logs POD [-c C] [-f] [--tail N] [--previous]`: the log, streamed
    /// to stdout as it comes.
    ///
    /// # Errors
    /// A missing pod or container, a node that does not answer.
    pub async fn logs(
        &self,
        pod: &str,
        container: &str,
        follow: bool,
        tail: Option<i64>,
        previous: bool,
    ) -> Result<()> {
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod);
        let mut client = PodLogsClient::new(self.channel.clone());
        let mut stream = client
            .logs(PodLogsRequest {
                namespace: self.namespace.clone(),
                name: pod.to_string(),
                container: container.to_string(),
                follow,
                // kubectl's --tail=-1: everything.
                tail_lines: tail.filter(|t| *t >= 0),
                previous,
                ..Default::default()
            })
            .await
            .map_err(|s| self.server_error(s, "Pod", pod))?
            .into_inner();
        let mut stdout = std::io::stdout();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| self.server_error(s, "Pod", pod))?;
            let _ = stdout.write_all(&chunk.data);
            let _ = stdout.flush();
        }
        Ok(())
    }

    /// `exec POD [-c C] -- CMD ARGS`: runs the command in the container,
    /// prints its stdout and stderr; returns its exit code.
    ///
    /// # Errors
    /// A missing pod or container, a container not running, a node that
    /// does not answer.
    pub async fn exec(&self, pod: &str, container: &str, command: &[String]) -> Result<i32> {
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod);
        let mut client = PodExecClient::new(self.channel.clone());
        let out = client
            .exec(PodExecRequest {
                namespace: self.namespace.clone(),
                name: pod.to_string(),
                container: container.to_string(),
                command: command.to_vec(),
                timeout_seconds: None,
                tty: false,
                stdin: false,
            })
            .await
            .map_err(|s| self.server_error(s, "Pod", pod))?
            .into_inner();
        let _ = std::io::stdout().write_all(&out.stdout);
        let _ = std::io::stderr().write_all(&out.stderr);
        let _ = std::io::stdout().flush();
        Ok(out.exit_code)
    }

    /// `exec -i [-t] POD [-c C] -- CMD ARGS`: runs the command attached:
    /// this process's stdin goes to it (`stdin`), with a terminal (`tty`;
    /// the local one is put in raw mode while it runs, and its size
    /// follows the window); output is printed as it comes. Returns the
    /// command's exit code.
    ///
    /// # Errors
    /// As [`Ctl::exec`]; also a runtime that cannot attach.
    pub async fn exec_attached(
        &self,
        pod: &str,
        container: &str,
        command: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<i32> {
        self.attached(pod, container, command, stdin, tty).await
    }

    /// `attach POD [-c C] [-i] [-t]`: joins the container's own process,
    /// as [`Ctl::exec_attached`] does a command's (its stdin only when the
    /// container keeps it open, `stdin: true`). Returns 0 when the process
    /// or the stream ends.
    ///
    /// # Errors
    /// As [`Ctl::exec`].
    pub async fn attach(&self, pod: &str, container: &str, stdin: bool, tty: bool) -> Result<i32> {
        self.attached(pod, container, &[], stdin, tty).await
    }

    /// A command (`command` not empty) or the container's own process,
    /// attached.
    async fn attached(
        &self,
        pod: &str,
        container: &str,
        command: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<i32> {
        use skiff::pb::core::v1::pod_exec_input::Input;
        use skiff::pb::core::v1::pod_exec_output::Output;
        use skiff::pb::core::v1::{PodExecInput, TerminalSize};
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod);
        // As kubectl: a terminal only when stdin is one (a pipe into a
        // remote terminal would lose the output written after its EOF).
        let stdin_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
        if tty && stdin && !stdin_is_terminal {
            eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        }
        let tty = tty && (!stdin || stdin_is_terminal);
        let terminal = tty && stdin;
        let (tx, rx) = tokio::sync::mpsc::channel::<PodExecInput>(64);
        let start = PodExecInput {
            input: Some(Input::Start(PodExecRequest {
                namespace: self.namespace.clone(),
                name: pod.to_string(),
                container: container.to_string(),
                command: command.to_vec(),
                timeout_seconds: None,
                tty,
                stdin,
            })),
        };
        let _ = tx.send(start).await;
        let _raw = if terminal {
            terminal::Raw::enter()
        } else {
            None
        };
        if terminal {
            if let Some((width, height)) = terminal::size() {
                let _ = tx
                    .send(PodExecInput {
                        input: Some(Input::Resize(TerminalSize { width, height })),
                    })
                    .await;
            }
            let resizes = tx.clone();
            tokio::spawn(async move {
                let Ok(mut winch) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                else {
                    return;
                };
                while winch.recv().await.is_some() {
                    if let Some((width, height)) = terminal::size() {
                        let resize = Input::Resize(TerminalSize { width, height });
                        if resizes
                            .send(PodExecInput {
                                input: Some(resize),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        if stdin {
            // A plain thread: reading stdin blocks, and must not hold a
            // runtime worker.
            let input = tx.clone();
            std::thread::spawn(move || {
                use std::io::Read as _;
                let mut buffer = vec![0u8; 16 * 1024];
                let mut stdin = std::io::stdin().lock();
                loop {
                    match stdin.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = Input::Stdin(buffer[..n].to_vec());
                            if input
                                .blocking_send(PodExecInput { input: Some(chunk) })
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = input.blocking_send(PodExecInput {
                    input: Some(Input::CloseStdin(true)),
                });
            });
        }
        // Without stdin, the request stays open (the sender lives here)
        // until the command ends.
        let mut client = PodExecClient::new(self.channel.clone());
        let inputs = tokio_stream::wrappers::ReceiverStream::new(rx);
        let container_itself = command.is_empty();
        let output = if container_itself {
            client.attach_container(inputs).await
        } else {
            client.attach(inputs).await
        };
        let mut output = output
            .map_err(|s| self.server_error(s, "Pod", pod))?
            .into_inner();
        // A container's process reports no exit code: its end is 0.
        let mut code = if container_itself { 0 } else { -1 };
        while let Some(message) = output.next().await {
            let message = message.map_err(|s| self.server_error(s, "Pod", pod))?;
            match message.output {
                Some(Output::Stdout(bytes)) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                Some(Output::Stderr(bytes)) => {
                    let mut err = std::io::stderr();
                    let _ = err.write_all(&bytes);
                    let _ = err.flush();
                }
                Some(Output::ExitCode(c)) => code = c,
                None => {}
            }
        }
        drop(tx);
        Ok(code)
    }

    /// `rollout status deployment/NAME`: progress lines until done.
    ///
    /// # Errors
    /// A missing deployment, a deadline exceeded, or `timeout`.
    pub async fn rollout_status(&self, name: &str, timeout: Duration) -> Result<()> {
        let ops = kind_of("deployment")?;
        let started = std::time::Instant::now();
        let mut last = String::new();
        loop {
            let d = ops
                .get(&self.channel, &self.namespace, name)
                .await
                .map_err(|s| self.server_error(s, "Deployment", name))?;
            let int = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            let want = d
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let (updated, total, available) = (
                int("/status/updatedReplicas"),
                int("/status/replicas"),
                int("/status/availableReplicas"),
            );
            let observed = int("/status/observedGeneration") >= int("/metadata/generation");
            let timed_out = d["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "ProgressDeadlineExceeded"));
            if timed_out {
                return Err(CtlError(format!(
                    "error: deployment {name:?} exceeded its progress deadline"
                )));
            }
            let line = if !observed {
                "Waiting for deployment spec update to be observed...".to_string()
            } else if updated < want {
                format!(
                    "Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."
                )
            } else if total > updated {
                format!(
                    "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                    total - updated
                )
            } else if available < updated {
                format!(
                    "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
                )
            } else {
                println!("deployment {name:?} successfully rolled out");
                return Ok(());
            };
            if line != last {
                println!("{line}");
                last = line;
            }
            if started.elapsed() > timeout {
                return Err(CtlError(format!(
                    "error: timed out waiting for the condition ({timeout:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Deployment's ReplicaSets by revision, oldest first.
    async fn revisions(&self, name: &str) -> Result<Vec<(i64, Value)>> {
        let deployment = kind_of("deployment")?
            .get(&self.channel, &self.namespace, name)
            .await
            .map_err(|s| self.server_error(s, "Deployment", name))?;
        let uid = deployment["metadata"]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let (sets, _) = kind_of("replicaset")?
            .list(&self.channel, &self.namespace, "", "")
            .await
            .map_err(|s| self.server_error(s, "ReplicaSet", ""))?;
        let mut owned: Vec<(i64, Value)> = sets
            .into_iter()
            .filter(|rs| {
                rs["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|rs| {
                let revision = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                (revision, rs)
            })
            .collect();
        owned.sort_by_key(|(r, _)| *r);
        Ok(owned)
    }

    /// `rollout history deployment/NAME`.
    ///
    /// # Errors
    /// A missing deployment.
    pub async fn rollout_history(&self, name: &str) -> Result<()> {
        let revisions = self.revisions(name).await?;
        println!("deployment.apps/{name}");
        let mut rows = vec![vec!["REVISION".to_string(), "CHANGE-CAUSE".to_string()]];
        for (revision, rs) in revisions {
            let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"]
                .as_str()
                .unwrap_or("<none>");
            rows.push(vec![revision.to_string(), cause.to_string()]);
        }
        print!("{}", table::render(&rows));
        Ok(())
    }

    /// `rollout undo deployment/NAME [--to-revision N]`.
    ///
    /// # Errors
    /// A missing deployment or revision.
    pub async fn rollout_undo(&self, name: &str, to_revision: i64) -> Result<()> {
        if to_revision > 0
            && !self
                .revisions(name)
                .await?
                .iter()
                .any(|(r, _)| *r == to_revision)
        {
            return Err(CtlError(format!(
                "error: unable to find the specified revision {to_revision}"
            )));
        }
        let ops = kind_of("deployment")?;
        self.modify(&*ops, name, |d| {
            if !d["metadata"]["annotations"].is_object() {
                d["metadata"]["annotations"] = Value::Object(Default::default());
            }
            d["metadata"]["annotations"]["skiff.dev/rollback-to-revision"] =
                Value::String(to_revision.to_string());
            Ok(())
        })
        .await?;
        // Done when the controller has taken the request (the annotation
        // goes): a `rollout status` right after then sees the new rollout.
        for _ in 0..100 {
            let d = ops
                .get(&self.channel, &self.namespace, name)
                .await
                .map_err(|s| self.server_error(s, "Deployment", name))?;
            if d["metadata"]["annotations"]
                .get("skiff.dev/rollback-to-revision")
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("deployment.apps/{name} rolled back");
        Ok(())
    }

    /// `rollout pause|resume deployment/NAME`.
    ///
    /// # Errors
    /// A missing deployment.
    pub async fn rollout_pause(&self, name: &str, paused: bool) -> Result<()> {
        let ops = kind_of("deployment")?;
        self.modify(&*ops, name, |d| {
            d["spec"]["paused"] = Value::Bool(paused);
            Ok(())
        })
        .await?;
        println!(
            "deployment.apps/{name} {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }

    /// `describe KIND NAME`: the object as YAML-ish fields, its
    /// conditions, and its Events.
    ///
    /// # Errors
    /// A missing object.
    pub async fn describe(&self, args: &[String]) -> Result<()> {
        let (ops, name) = target(args)?;
        let ns = self.namespace_for(&*ops, false);
        let obj = ops
            .get(&self.channel, &ns, &name)
            .await
            .map_err(|s| self.server_error(s, ops.info().kind, &name))?;
        let meta = &obj["metadata"];
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{:<20}{v}\n", format!("{k}:")));
        line("Name", meta["name"].as_str().unwrap_or("").into());
        if ops.info().namespaced {
            line("Namespace", meta["namespace"].as_str().unwrap_or("").into());
        }
        let pairs = |v: &Value| {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into())
        };
        line("Labels", pairs(&meta["labels"]));
        let mut annotations = meta["annotations"].clone();
        if let Some(a) = annotations.as_object_mut() {
            a.remove(apply::LAST_APPLIED);
        }
        line("Annotations", pairs(&annotations));
        line(
            "CreationTimestamp",
            meta["creationTimestamp"].as_str().unwrap_or("").into(),
        );
        if let Some(spec) = obj.get("spec") {
            out.push_str("Spec:\n");
            for l in to_yaml(spec).lines() {
                out.push_str(&format!("  {l}\n"));
            }
        }
        if let Some(status) = obj.get("status") {
            let mut status = status.clone();
            let conditions = status.as_object_mut().and_then(|s| s.remove("conditions"));
            out.push_str("Status:\n");
            for l in to_yaml(&status).lines() {
                out.push_str(&format!("  {l}\n"));
            }
            if let Some(Value::Array(conditions)) = conditions {
                out.push_str("Conditions:\n");
                let mut rows = vec![vec![
                    "  Type".to_string(),
                    "Status".into(),
                    "Reason".into(),
                    "Message".into(),
                ]];
                for c in conditions {
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    rows.push(vec![
                        format!("  {}", s("type")),
                        s("status"),
                        s("reason"),
                        s("message"),
                    ]);
                }
                out.push_str(&table::render(&rows));
            }
        }
        let uid = meta["uid"].as_str().unwrap_or("");
        let events_ns = if ns.is_empty() {
            "default".to_string()
        } else {
            ns.clone()
        };
        let (events, _) = kind_of("event")?
            .list(
                &self.channel,
                &events_ns,
                "",
                &format!("involvedObject.name={name}"),
            )
            .await
            .map_err(|s| self.server_error(s, "Event", ""))?;
        let events: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["involvedObject"]["uid"]
                    .as_str()
                    .is_none_or(|u| u.is_empty() || u == uid)
            })
            .collect();
        if events.is_empty() {
            out.push_str("Events:             <none>\n");
        } else {
            out.push_str("Events:\n");
            let now = SystemTime::now();
            let mut rows = vec![vec![
                "  Type".to_string(),
                "Reason".into(),
                "Age".into(),
                "From".into(),
                "Message".into(),
            ]];
            for e in events {
                let count = e["count"].as_i64().unwrap_or(1);
                let age = table::age(&e["lastTimestamp"], now);
                let age = if count > 1 {
                    format!("{age} (x{count})")
                } else {
                    age
                };
                rows.push(vec![
                    format!("  {}", e["type"].as_str().unwrap_or("")),
                    e["reason"].as_str().unwrap_or("").into(),
                    age,
                    e["source"]["component"].as_str().unwrap_or("").into(),
                    e["message"].as_str().unwrap_or("").into(),
                ]);
            }
            out.push_str(&table::render(&rows));
        }
        print!("{out}");
        Ok(())
    }

    /// `cluster-info`: the server and whether it answers.
    ///
    /// # Errors
    /// The server does not answer.
    pub async fn cluster_info(&self) -> Result<()> {
        let (nodes, _) = kind_of("nodes")?
            .list(&self.channel, "", "", "")
            .await
            .map_err(|s| self.server_error(s, "Node", ""))?;
        println!("Skiff control plane is running at {}", self.server);
        println!("Nodes: {}", nodes.len());
        Ok(())
    }
}

/// `api-resources`: the kinds this server serves.
pub fn api_resources() -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "SHORTNAMES".into(),
        "APIVERSION".into(),
        "NAMESPACED".into(),
        "KIND".into(),
    ]];
    for k in kinds::all() {
        let info = k.info();
        rows.push(vec![
            info.plural.into(),
            info.short_names.join(","),
            info.api_version.into(),
            info.namespaced.to_string(),
            info.kind.into(),
        ]);
    }
    table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_quotes_strings_yaml_1_1_reads_as_booleans() {
        let value = json!({
            "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "args": ["on", "yes-really", "no"],
            "enabled": true
        });
        let yaml = to_yaml(&value);
        assert!(
            yaml.contains("pv.kubernetes.io/bind-completed: 'yes'"),
            "{yaml}"
        );
        assert!(
            yaml.contains("- 'on'\n") && yaml.contains("- 'no'\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("- yes-really\n") && yaml.contains("enabled: true"),
            "{yaml}"
        );
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, value, "round-trips");
    }

    #[test]
    fn yaml_quotes_timestamps_but_not_block_scalar_data() {
        let value = json!({
            "metadata": {"creationTimestamp": "2026-11-26T10:00:00Z"},
            "data": {"notes": "updated: 2024-01-01T00:00:00Z\nsecond line\n"}
        });
        let yaml = to_yaml(&value);
        assert!(
            yaml.contains("creationTimestamp: '2026-11-26T10:00:00Z'"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  updated: 2024-01-01T00:00:00Z\n"),
            "block data untouched: {yaml}"
        );
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, value, "round-trips");
    }
}

/// The local terminal, for `exec -t`.
mod terminal {
    use rustix::termios::{self, OptionalActions, Termios};

    /// Raw mode on stdin while alive (restored on drop).
    pub struct Raw {
        saved: Termios,
    }

    impl Raw {
        /// Puts the terminal in raw mode: keys go to the remote command
        /// as typed (Ctrl-C included), nothing is echoed locally.
        pub fn enter() -> Option<Self> {
            let stdin = rustix::stdio::stdin();
            let saved = termios::tcgetattr(stdin).ok()?;
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(stdin, OptionalActions::Now, &raw).ok()?;
            Some(Self { saved })
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
        }
    }

    /// The terminal's width and height in characters.
    pub fn size() -> Option<(u32, u32)> {
        let size = termios::tcgetwinsize(rustix::stdio::stdout()).ok()?;
        Some((u32::from(size.ws_col), u32::from(size.ws_row)))
    }
}
