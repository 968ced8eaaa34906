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
//!   exec, label, annotate, api-resources, cluster-info). Here: making
//!   one, kubectl's wording of server errors, `cluster-info`; in files of
//!   their own, each adding to `impl Ctl`: `get.rs` (`get`, `get -w`),
//!   `change.rs` (`apply`, `create`, `delete`, `scale`, `label`,
//!   `annotate`), `describe.rs`, `rollout.rs` and `streams.rs` (`logs`,
//!   `exec`, `attach`).

pub mod apply;
pub mod auth;
mod change;
pub mod config;
mod describe;
pub mod drain;
mod get;
pub mod kinds;
pub mod manifest;
pub mod portforward;
mod rollout;
mod streams;
pub use skiff::table;
pub mod top;

use serde_json::Value;
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
