//! From a pod's container to the runtime's [`ContainerSpec`]: names and
//! labels, env (values, `$(VAR)` references, configMap/secret/field refs,
//! envFrom), command and args, mounts and resource limits.

use skiff::Resource as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skiff::pb::core::v1::{Container, EnvVar, Pod};
use skiff::quantity::Quantity;
use skiff_runtime::{ContainerSpec, Mount, PortMapping, SandboxSpec, labels};

use crate::fieldpath;
use crate::sources::{Error, Sources};
use crate::volumes;
use crate::{security, subpath};

/// `init`, `app` or `sandbox` (the [`labels::ROLE`] label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An init container.
    Init,
    /// An app container.
    App,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::App => "app",
        }
    }
}

/// The labels that tie a runtime object to its pod.
fn pod_labels(pod: &Pod, container: &str, role: &str, attempt: u32) -> BTreeMap<String, String> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    BTreeMap::from([
        (labels::GRACE_SECONDS.to_string(), grace.to_string()),
        (labels::POD_UID.to_string(), meta.uid),
        (labels::POD_NAMESPACE.to_string(), meta.namespace),
        (labels::POD_NAME.to_string(), meta.name),
        (labels::CONTAINER_NAME.to_string(), container.to_string()),
        (labels::ROLE.to_string(), role.to_string()),
        (labels::ATTEMPT.to_string(), attempt.to_string()),
    ])
}

/// A runtime name unique on the node: `skiff_<container>_<pod>_<ns>_<uid8>_<attempt>`.
fn runtime_name(pod: &Pod, container: &str, attempt: u32) -> String {
    let meta = pod.metadata.clone().unwrap_or_default();
    let uid: String = meta.uid.chars().take(8).collect();
    format!(
        "skiff_{container}_{}_{}_{uid}_{attempt}",
        meta.name, meta.namespace
    )
}

/// The sandbox of a pod, `attempt` counting sandbox re-creations;
/// `cluster_dns` is the node's DNS for its pods, if it serves one.
pub fn sandbox_spec(
    pod: &Pod,
    attempt: u32,
    cluster_dns: Option<std::net::IpAddr>,
    upstream_dns: &[String],
) -> SandboxSpec {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let (dns_servers, dns_search, dns_options) =
        crate::dns::pod_resolv_conf(&spec, &meta.namespace, cluster_dns, upstream_dns);
    let hostname = pod_hostname(pod);
    SandboxSpec {
        name: runtime_name(pod, labels::SANDBOX, attempt),
        // A hostname is a DNS label: at most 63 characters (an FQDN, at
        // most 64: the kernel's limit, checked before).
        hostname: if fqdn_hostname(&spec) {
            hostname
        } else {
            // The kubelet's cut: 63 characters, then no trailing `-` or `.`.
            hostname
                .chars()
                .take(63)
                .collect::<String>()
                .trim_end_matches(['-', '.'])
                .to_string()
        },
        labels: pod_labels(pod, labels::SANDBOX, "sandbox", attempt),
        dns_servers,
        dns_search,
        dns_options,
        port_mappings: spec
            .init_containers
            .iter()
            .chain(&spec.containers)
            .flat_map(|c| &c.ports)
            .filter(|p| p.host_port > 0)
            .filter_map(|p| {
                Some(PortMapping {
                    host_ip: p.host_ip.clone(),
                    host_port: u16::try_from(p.host_port).ok()?,
                    container_port: u16::try_from(p.container_port).ok()?,
                    protocol: if p.protocol.is_empty() {
                        "tcp".into()
                    } else {
                        p.protocol.to_lowercase()
                    },
                })
            })
            .collect(),
        host_network: spec.host_network,
        host_pid: spec.host_pid,
        host_ipc: spec.host_ipc,
        sysctls: security::sysctls(&spec),
        extra_hosts: spec
            .host_aliases
            .iter()
            .flat_map(|alias| {
                alias
                    .hostnames
                    .iter()
                    .map(|name| (name.clone(), alias.ip.clone()))
            })
            .collect(),
    }
}

/// The pod's hostname: `spec.hostname` or its name; with
/// `setHostnameAsFQDN` and a subdomain, its fully qualified name.
pub fn pod_hostname(pod: &Pod) -> String {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let host = if spec.hostname.is_empty() {
        meta.name.clone()
    } else {
        spec.hostname.clone()
    };
    if fqdn_hostname(&spec) {
        format!(
            "{host}.{}.{}.svc.{}",
            spec.subdomain,
            meta.namespace,
            crate::dns::CLUSTER_DOMAIN
        )
    } else {
        host
    }
}

/// Whether the pod's hostname is its FQDN (`setHostnameAsFQDN` with a
/// subdomain, and a network of its own).
fn fqdn_hostname(spec: &skiff::pb::core::v1::PodSpec) -> bool {
    spec.set_hostname_as_fqdn == Some(true) && !spec.subdomain.is_empty() && !spec.host_network
}

/// The kubelet's refusal of a hostname the kernel cannot hold (64
/// characters), for a pod whose FQDN is its hostname.
pub fn hostname_problem(pod: &Pod) -> Option<String> {
    let fqdn = pod.spec.as_ref().is_some_and(fqdn_hostname);
    let hostname = pod_hostname(pod);
    (fqdn && hostname.len() > 64).then(|| {
        format!(
            "Failed to create pod sandbox: failed to construct FQDN from pod hostname and cluster domain, FQDN {hostname} is too long (64 characters is the max, {} characters requested)",
            hostname.len()
        )
    })
}

/// A host-network pod's resolv.conf (the runtime gives it the host's
/// own): written in the pod's directory when its DNS policy asks for
/// more than the host's, for [`container_spec`] to mount.
///
/// # Errors
/// The file cannot be written.
pub fn host_network_resolv_conf(
    data_dir: &Path,
    pod: &Pod,
    cluster_dns: Option<std::net::IpAddr>,
    upstream_dns: &[String],
) -> std::io::Result<Option<std::path::PathBuf>> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    if !spec.host_network {
        return Ok(None);
    }
    let (servers, search, options) =
        crate::dns::pod_resolv_conf(&spec, &meta.namespace, cluster_dns, upstream_dns);
    if servers.is_empty() && search.is_empty() && options.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    let dir = volumes::pod_dir(data_dir, &meta.uid);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("resolv.conf");
    let tmp = dir.join(".resolv.conf.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(path))
}

/// Where a container start's termination message file is on the node.
pub fn termination_log(data_dir: &Path, uid: &str, container: &str, attempt: u32) -> PathBuf {
    volumes::pod_dir(data_dir, uid)
        .join("termination")
        .join(format!("{container}-{attempt}"))
}

/// The most of a termination message Kubernetes keeps (bytes).
pub const MAX_MESSAGE: usize = 4096;

/// The most of a log that stands for a missing termination message
/// (`FallbackToLogsOnError`): 80 lines, 2048 bytes.
pub const MAX_LOG_MESSAGE: (u64, usize) = (80, 2048);

/// The last `limit` bytes of a file a container wrote (however much it
/// wrote: only those are read).
///
/// # Errors
/// The file cannot be opened or read.
pub fn read_tail(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(std::io::SeekFrom::Start(len.saturating_sub(limit as u64)))?;
    let mut bytes = Vec::with_capacity(limit);
    file.take(limit as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A termination message as Kubernetes keeps it: the last `limit` bytes,
/// cut on a character boundary.
pub fn tail_message(bytes: &[u8], limit: usize) -> String {
    let start = bytes.len().saturating_sub(limit);
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.trim_start_matches('\u{fffd}').to_string()
}

/// What the agent knows about the pod's place, for fieldRef env.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The pod's IP (its sandbox's).
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
    /// The node's name.
    pub node_name: String,
    /// Where its claims' volumes are on the node.
    pub claim_dirs: volumes::ClaimDirs,
    /// The resolv.conf its containers mount, for a host-network pod
    /// whose DNS is not the host's.
    pub resolv_conf: Option<std::path::PathBuf>,
    /// The node's allocatable resources (what an unset limit is).
    pub allocatable: fieldpath::Allocatable,
}

/// The runtime spec of one of the pod's containers.
///
/// # Errors
/// A missing configMap/secret (key) the env needs, or a bad fieldRef:
/// shown as `CreateContainerConfigError`.
#[allow(clippy::too_many_arguments)]
pub async fn container_spec(
    pod: &Pod,
    container: &Container,
    role: Role,
    attempt: u32,
    sandbox_id: &str,
    placement: &Placement,
    data_dir: &Path,
    sources: &Sources,
) -> Result<ContainerSpec, Error> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let env = resolve_env(pod, container, placement, sources).await?;
    let expand_all = |v: &[String]| v.iter().map(|s| expand(s, &env)).collect::<Vec<_>>();
    let mut mounts = Vec::new();
    for (index, m) in container.volume_mounts.iter().enumerate() {
        let Some(volume) = spec.volumes.iter().find(|v| v.name == m.name) else {
            return Err(Error::Missing(format!(
                "container {:?}: volumeMount {:?} names no volume of the pod",
                container.name, m.name
            )));
        };
        let mut host_path =
            volumes::volume_path(data_dir, &meta.uid, volume, &placement.claim_dirs);
        if !m.sub_path.is_empty() {
            let pin = subpath::pin_path(
                &volumes::pod_dir(data_dir, &meta.uid),
                &m.name,
                &container.name,
                index,
            );
            let read_only = volumes::forced_read_only(volume);
            host_path =
                subpath::mount_source(&host_path, &m.sub_path, &pin, read_only).map_err(|e| {
                    Error::Missing(format!(
                        "container {:?}: volumeMount {:?}: subPath {e}",
                        container.name, m.name
                    ))
                })?;
        }
        mounts.push(Mount {
            host_path,
            container_path: m.mount_path.clone(),
            read_only: m.read_only || volumes::forced_read_only(volume),
        });
    }
    // The termination message file, the kubelet's way: a file of the
    // pod's directory per container start, mounted at
    // terminationMessagePath, read when the container ends.
    if !container.termination_message_path.is_empty() {
        let file = termination_log(data_dir, &meta.uid, &container.name, attempt);
        let made = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&file, b""))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
            });
        made.map_err(|source| Error::Io {
            name: "termination-log".into(),
            source,
        })?;
        mounts.push(Mount {
            host_path: file,
            container_path: container.termination_message_path.clone(),
            read_only: false,
        });
    }
    if let Some(resolv_conf) = &placement.resolv_conf {
        mounts.push(Mount {
            host_path: resolv_conf.clone(),
            container_path: "/etc/resolv.conf".into(),
            read_only: true,
        });
    }
    let security = security::container_security(&spec, container, data_dir).map_err(|e| {
        Error::Missing(format!(
            "container {:?}: securityContext: {e}",
            container.name
        ))
    })?;
    let resources = container.resources.clone().unwrap_or_default();
    let quantity = |map: &BTreeMap<String, String>, key: &str| {
        map.get(key).and_then(|q| q.parse::<Quantity>().ok())
    };
    let memory_limit = quantity(&resources.limits, "memory").map(|q| q.value());
    let nano_cpus = quantity(&resources.limits, "cpu").map(|q| q.milli_value() * 1_000_000);
    // The kubelet's mapping of a CPU request to cgroup shares.
    let cpu_shares = quantity(&resources.requests, "cpu")
        .or_else(|| quantity(&resources.limits, "cpu"))
        .map(|q| (q.milli_value() * 1024 / 1000).max(2));
    Ok(ContainerSpec {
        name: runtime_name(pod, &container.name, attempt),
        image: container.image.clone(),
        command: (!container.command.is_empty()).then(|| expand_all(&container.command)),
        args: (!container.args.is_empty() || !container.command.is_empty())
            .then(|| expand_all(&container.args)),
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        working_dir: (!container.working_dir.is_empty()).then(|| container.working_dir.clone()),
        mounts,
        labels: pod_labels(pod, &container.name, role.as_str(), attempt),
        sandbox_id: sandbox_id.to_string(),
        share_pid: spec.share_process_namespace.unwrap_or(false),
        host_pid: spec.host_pid,
        host_ipc: spec.host_ipc,
        security,
        memory_limit,
        nano_cpus,
        cpu_shares,
        stdin: container.stdin,
        stdin_once: container.stdin_once,
        tty: container.tty,
    })
}

/// The container's environment, in order: envFrom sources, then env
/// entries (later names win, as in Kubernetes).
async fn resolve_env(
    pod: &Pod,
    container: &Container,
    placement: &Placement,
    sources: &Sources,
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod.namespace();
    // Kubernetes' service links come first: the pod's own env wins.
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services = if links {
        sources.services(ns).await?
    } else {
        Vec::new()
    };
    // The API server's Service (`default/kubernetes`) is always there,
    // links or not, as the kubelet does: in-cluster clients find the API
    // by KUBERNETES_SERVICE_HOST/PORT. A Service of that name in the pod's
    // own namespace wins.
    if !services.iter().any(|s| s.name() == MASTER_NAME)
        && let Some(master) = sources.service(MASTER_NAMESPACE, MASTER_NAME).await?
    {
        services.push(master);
    }
    let mut env: Vec<(String, String)> = service_env(&services);
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
        .iter_mut()
        .find(|(name, _)| *name == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    for from in &container.env_from {
        let (data, what, optional) = if let Some(cm) = &from.config_map_ref {
            (
                sources.configmap(ns, &cm.name, false).await?,
                format!("configmap {:?}", cm.name),
                cm.optional.unwrap_or(false),
            )
        } else if let Some(s) = &from.secret_ref {
            (
                sources.secret(ns, &s.name).await?,
                format!("secret {:?}", s.name),
                s.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{}{k}", from.prefix),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(Error::Missing(format!("{what} not found"))),
        }
    }
    for var in &container.env {
        let value = env_value(pod, container, var, placement, sources, &env).await?;
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

async fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    placement: &Placement,
    sources: &Sources,
    earlier: &[(String, String)],
) -> Result<Option<String>, Error> {
    let ns = pod.namespace();
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(&var.value, earlier)));
    };
    let missing = |what: String| Error::Missing(format!("env {:?}: {what}", var.name));
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional.unwrap_or(false);
        return match sources.configmap(ns, &r.name, false).await? {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(missing(format!(
                    "key {:?} not found in configmap {:?}",
                    r.key, r.name
                ))),
            },
            None if optional => Ok(None),
            None => Err(missing(format!("configmap {:?} not found", r.name))),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional.unwrap_or(false);
        return match sources.secret(ns, &r.name).await? {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(missing(format!(
                    "key {:?} not found in secret {:?}",
                    r.key, r.name
                ))),
            },
            None if optional => Ok(None),
            None => Err(missing(format!("secret {:?} not found", r.name))),
        };
    }
    if let Some(f) = &from.field_ref {
        let node = fieldpath::NodeFields {
            node_name: &placement.node_name,
            pod_ip: &placement.pod_ip,
            host_ip: &placement.host_ip,
        };
        return fieldpath::env_value(pod, &f.field_path, &node)
            .map(Some)
            .ok_or_else(|| missing(format!("unsupported fieldRef fieldPath {:?}", f.field_path)));
    }
    if let Some(r) = &from.resource_field_ref {
        // Another container's, when it names one.
        let container = if r.container_name.is_empty() {
            container
        } else {
            fieldpath::named_container(pod, &r.container_name)
                .ok_or_else(|| missing(format!("no container {:?}", r.container_name)))?
        };
        return fieldpath::resource_value(
            container,
            &r.resource,
            &r.divisor,
            &placement.allocatable,
        )
        .map(Some)
        .ok_or_else(|| {
            missing(format!(
                "unsupported resourceFieldRef resource {:?}",
                r.resource
            ))
        });
    }
    Ok(Some(String::new()))
}

/// Where the API server's Service is (`default/kubernetes`).
const MASTER_NAMESPACE: &str = "default";
/// See [`MASTER_NAMESPACE`].
const MASTER_NAME: &str = "kubernetes";

/// Kubernetes' environment variables for the Services of the pod's
/// namespace (those with a cluster IP): `WEB_SERVICE_HOST`,
/// `WEB_SERVICE_PORT`, `WEB_SERVICE_PORT_HTTP`, and the Docker-link style
/// `WEB_PORT`, `WEB_PORT_80_TCP`, `..._PROTO`, `..._PORT`, `..._ADDR`.
pub fn service_env(services: &[skiff::pb::core::v1::Service]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut sorted: Vec<&skiff::pb::core::v1::Service> = services.iter().collect();
    sorted.sort_by_key(|s| {
        s.metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    });
    for svc in sorted {
        let name = svc.name();
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.as_str();
        if ip.is_empty() || ip == "None" || spec.ports.is_empty() {
            continue;
        }
        let prefix = name.to_uppercase().replace('-', "_");
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        env.push((
            format!("{prefix}_SERVICE_PORT"),
            spec.ports[0].port.to_string(),
        ));
        for p in &spec.ports {
            if !p.name.is_empty() {
                env.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        p.name.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let first = &spec.ports[0];
        let proto = |p: &str| {
            if p.is_empty() {
                "tcp".to_string()
            } else {
                p.to_lowercase()
            }
        };
        env.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto(&first.protocol), first.port),
        ));
        for p in &spec.ports {
            let proto = proto(&p.protocol);
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.push((base.clone(), format!("{proto}://{ip}:{}", p.port)));
            env.push((format!("{base}_PROTO"), proto.clone()));
            env.push((format!("{base}_PORT"), p.port.to_string()));
            env.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// Kubernetes' `$(VAR)` expansion: references to defined variables are
/// replaced, `$$` is a literal `$`, anything else stays as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some((_, value)) = env.iter().find(|(k, _)| k == &body[..end])
        {
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
