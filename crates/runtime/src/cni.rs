//! The agent as a CNI runtime (CNI spec 1.0.0): pod sandboxes are made
//! without a network, and the plugins of a network config list — the
//! standard ones from `containernetworking-plugins`: bridge with host-local
//! IPAM, then portmap — plumb each sandbox's network namespace.
//!
//! Every attachment is written down before its ADD runs (with the config it
//! used) and completed with the plugins' result after, under the state
//! directory; a DEL (in reverse plugin order, each given the final result)
//! erases it. So a restarted agent knows every address it holds: pods keep
//! theirs, and what a crash left half-made is deleted
//! ([`Cni::attachments`], then [`Cni::del`]) instead of leaking an address.
//!
//! Plugins run in the agent's own network namespace, which is where the
//! host side (the bridge, veths, rules) goes; only the pod side enters
//! `CNI_NETNS`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Error, PortMapping, Result};

/// The spec version Skiff speaks (what Debian's plugins 1.1 support at
/// most).
pub const CNI_VERSION: &str = "1.0.0";
/// The interface name inside every pod.
pub const POD_INTERFACE: &str = "eth0";
/// Where Debian's package and the upstream convention put the plugins.
pub const DEFAULT_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
/// How long one plugin call may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The pod network of one node, as a bridge (`isGateway`, the gateway
/// being the block's first address) with host-local addresses from the
/// node's block, and host ports by portmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The network's name (host-local keeps its addresses under it).
    pub name: String,
    /// The bridge device on the host.
    pub bridge: String,
    /// The node's block (`spec.podCIDR`).
    pub pod_cidr: skiff::cidr::Ipv4Cidr,
    /// The MTU of the bridge and both ends of each veth (VXLAN: 50 less
    /// than the host's).
    pub mtu: u32,
    /// Where host-local keeps its address files.
    pub ipam_dir: PathBuf,
}

impl BridgeNetwork {
    /// The gateway: the block's first address, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.host(1).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The network config list the plugins are given.
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "isDefaultGateway": true,
                    "hairpinMode": true,
                    "mtu": self.mtu,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": self.pod_cidr.to_string(),
                            "gateway": self.gateway().to_string(),
                        }]],
                        "dataDir": self.ipam_dir,
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    "snat": true,
                },
            ],
        })
    }
}

/// One sandbox's attachment, as written down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The sandbox container's id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The network namespace it was added in.
    pub netns: String,
    /// The config list the ADD ran with (a DEL runs with the same).
    pub conflist: Value,
    /// `CNI_ARGS`.
    pub args: String,
    /// Host ports (portmap's `portMappings`).
    pub port_mappings: Vec<Mapping>,
    /// The final ADD result; `None` while the ADD has not finished (or
    /// failed): such an attachment is only ever deleted.
    pub result: Option<Value>,
}

/// A host port, as portmap's runtime config spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mapping {
    /// The host port.
    pub host_port: u16,
    /// The pod's port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The host address ("" for all).
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

impl From<&PortMapping> for Mapping {
    fn from(m: &PortMapping) -> Self {
        Self {
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: m.protocol.to_lowercase(),
            host_ip: m.host_ip.clone(),
        }
    }
}

impl Attachment {
    /// The pod's IPv4 address from the result.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        result_ip(self.result.as_ref()?)
    }
}

/// The first IPv4 address of an ADD result (`ips[].address`, a CIDR).
pub fn result_ip(result: &Value) -> Option<Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .next()
}

/// The CNI runtime of one node. See the module doc.
#[derive(Debug)]
pub struct Cni {
    plugin_dirs: Vec<PathBuf>,
    /// `<state>/attachments/<container id>.json`.
    state: PathBuf,
    /// The network new sandboxes are added to (None until the node has
    /// its block).
    network: RwLock<Option<BridgeNetwork>>,
    /// The attachments, as on disk.
    attachments: Mutex<BTreeMap<String, Attachment>>,
    /// One operation at a time per sandbox (the spec's rule): a pod
    /// worker's, or the reconciler's, which skips a busy one.
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Cni {
    /// A runtime with its plugins in `plugin_dirs` and its records under
    /// `state` (read back now).
    ///
    /// # Errors
    /// The state directory cannot be made or read, or no directory holds
    /// the bridge plugin.
    pub fn new(plugin_dirs: Vec<PathBuf>, state: &Path) -> Result<Self> {
        let io = |what: &str, e: std::io::Error| {
            Error::Network(format!("{what} {}: {e}", state.display()))
        };
        if !plugin_dirs.iter().any(|d| d.join("bridge").is_file()) {
            return Err(Error::Network(format!(
                "no CNI bridge plugin in {} (install containernetworking-plugins, or give --cni-bin-dir)",
                plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            )));
        }
        let dir = state.join("attachments");
        std::fs::create_dir_all(&dir).map_err(|e| io("creating", e))?;
        let mut attachments = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io("reading", e))? {
            let path = entry.map_err(|e| io("reading", e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Attachment>(&b).ok())
            {
                Some(a) => {
                    attachments.insert(a.container_id.clone(), a);
                }
                None => {
                    tracing::warn!(path = %path.display(), "unreadable CNI attachment record: removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            plugin_dirs,
            state: dir,
            network: RwLock::new(None),
            attachments: Mutex::new(attachments),
            locks: Mutex::default(),
        })
    }

    /// Sets the network new sandboxes join.
    pub fn configure(&self, network: BridgeNetwork) {
        if let Ok(mut n) = self.network.write() {
            *n = Some(network);
        }
    }

    /// The network new sandboxes join, once configured.
    pub fn network(&self) -> Option<BridgeNetwork> {
        self.network.read().ok().and_then(|n| n.clone())
    }

    /// Every attachment written down (complete or not).
    pub fn attachments(&self) -> Vec<Attachment> {
        self.attachments
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The attachment of `container_id`, if it has one.
    pub fn attachment(&self, container_id: &str) -> Option<Attachment> {
        self.attachments
            .lock()
            .ok()
            .and_then(|a| a.get(container_id).cloned())
    }

    fn record(&self, attachment: &Attachment) -> Result<()> {
        let path = self.state.join(format!("{}.json", attachment.container_id));
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(attachment)
            .map_err(|e| Error::Network(format!("encoding an attachment: {e}")))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::Network(format!("recording {}: {e}", path.display())))?;
        if let Ok(mut a) = self.attachments.lock() {
            a.insert(attachment.container_id.clone(), attachment.clone());
        }
        Ok(())
    }

    fn lock_of(&self, container_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .map(|mut l| Arc::clone(l.entry(container_id.to_string()).or_default()))
            .unwrap_or_default()
    }

    fn forget(&self, container_id: &str) {
        if let Ok(mut l) = self.locks.lock() {
            l.remove(container_id);
        }
        let _ = std::fs::remove_file(self.state.join(format!("{container_id}.json")));
        if let Ok(mut a) = self.attachments.lock() {
            a.remove(container_id);
        }
    }

    /// Adds sandbox `container_id`, whose network namespace is `netns`, to
    /// the network: its address is returned. A failed ADD is deleted again
    /// (as the spec asks) before the error is returned.
    ///
    /// # Errors
    /// No network configured yet, or a plugin failed.
    pub async fn add(
        &self,
        container_id: &str,
        netns: &str,
        args: &str,
        port_mappings: &[PortMapping],
    ) -> Result<Ipv4Addr> {
        let network = self.network().ok_or_else(|| {
            Error::Network("the node has no pod network yet (waiting for its podCIDR)".into())
        })?;
        let lock = self.lock_of(container_id);
        let _busy = lock.lock().await;
        let mut attachment = Attachment {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            conflist: network.conflist(),
            args: args.to_string(),
            port_mappings: port_mappings.iter().map(Mapping::from).collect(),
            result: None,
        };
        self.record(&attachment)?;
        let added = async {
            let mut previous: Option<Value> = None;
            for plugin in &plugins(&attachment.conflist) {
                let config = execution_config(&attachment, plugin, previous.as_ref());
                let out = self.exec("ADD", &attachment, plugin, &config).await?;
                previous = Some(out.ok_or_else(|| {
                    Error::Network(format!(
                        "CNI plugin {} returned no result",
                        plugin_type(plugin)
                    ))
                })?);
            }
            let result =
                previous.ok_or_else(|| Error::Network("the network has no plugins".into()))?;
            let ip = result_ip(&result).ok_or_else(|| {
                Error::Network(format!(
                    "the CNI result gives the pod no IPv4 address: {result}"
                ))
            })?;
            Ok::<_, Error>((result, ip))
        }
        .await;
        match added {
            Ok((result, ip)) => {
                attachment.result = Some(result);
                if let Err(e) = self.record(&attachment) {
                    let _ = self.del_locked(container_id, Some(netns)).await;
                    return Err(e);
                }
                Ok(ip)
            }
            Err(e) => {
                if let Err(del) = self.del_locked(container_id, Some(netns)).await {
                    tracing::warn!(container = container_id, error = %del, "deleting a failed CNI ADD");
                }
                Err(e)
            }
        }
    }

    /// Takes sandbox `container_id` off the network (its plugins in
    /// reverse order), freeing its address; `netns` is its namespace while
    /// it still runs (None: gone, only the host side is cleaned). Nothing
    /// written down: nothing to do.
    ///
    /// # Errors
    /// A plugin failed; the record stays, so the DEL is tried again.
    pub async fn del(&self, container_id: &str, netns: Option<&str>) -> Result<()> {
        let lock = self.lock_of(container_id);
        let _busy = lock.lock().await;
        self.del_locked(container_id, netns).await
    }

    /// As [`Cni::del`], unless another operation on the sandbox is under
    /// way: then nothing, and false.
    ///
    /// # Errors
    /// As [`Cni::del`].
    pub async fn del_if_idle(&self, container_id: &str, netns: Option<&str>) -> Result<bool> {
        let lock = self.lock_of(container_id);
        let Ok(_busy) = lock.try_lock() else {
            return Ok(false);
        };
        self.del_locked(container_id, netns).await.map(|()| true)
    }

    async fn del_locked(&self, container_id: &str, netns: Option<&str>) -> Result<()> {
        let Some(mut attachment) = self.attachment(container_id) else {
            return Ok(());
        };
        attachment.netns = netns.unwrap_or_default().to_string();
        let result = attachment.result.clone();
        for plugin in plugins(&attachment.conflist).iter().rev() {
            let config = execution_config(&attachment, plugin, result.as_ref());
            self.exec("DEL", &attachment, plugin, &config).await?;
        }
        self.forget(container_id);
        Ok(())
    }

    /// Runs one plugin; its result (ADD) when it printed one.
    async fn exec(
        &self,
        command: &str,
        attachment: &Attachment,
        plugin: &Value,
        config: &Value,
    ) -> Result<Option<Value>> {
        use tokio::io::AsyncWriteExt as _;
        let kind = plugin_type(plugin);
        let binary = self
            .plugin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Network(format!("no CNI plugin {kind:?} in the plugin dirs")))?;
        let path = std::env::join_paths(&self.plugin_dirs)
            .map_err(|e| Error::Network(format!("CNI_PATH: {e}")))?;
        let mut child = tokio::process::Command::new(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", POD_INTERFACE)
            .env("CNI_ARGS", &attachment.args)
            .env("CNI_PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Network(format!("running {}: {e}", binary.display())))?;
        let input = serde_json::to_vec(config)
            .map_err(|e| Error::Network(format!("encoding the plugin config: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| Error::Network(format!("writing to CNI plugin {kind}: {e}")))?;
        }
        let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                Error::Network(format!(
                    "CNI plugin {kind} {command} took over {PLUGIN_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| Error::Network(format!("CNI plugin {kind}: {e}")))?;
        let parsed: Option<Value> = serde_json::from_slice(&output.stdout).ok();
        if !output.status.success() {
            let message = parsed
                .as_ref()
                .and_then(|v| {
                    let msg = v.get("msg")?.as_str()?;
                    let details = v.get("details").and_then(Value::as_str).unwrap_or("");
                    Some(if details.is_empty() {
                        msg.to_string()
                    } else {
                        format!("{msg}: {details}")
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).trim().to_string());
            return Err(Error::Network(format!(
                "CNI plugin {kind} {command} for sandbox {}: {message}",
                short(&attachment.container_id)
            )));
        }
        Ok(parsed)
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn plugins(conflist: &Value) -> Vec<Value> {
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// What one plugin reads on stdin: its own config, with the list's
/// `cniVersion` and `name`, the runtime config its capabilities ask for,
/// and the previous result (spec 1.0.0, section 4).
pub fn execution_config(
    attachment: &Attachment,
    plugin: &Value,
    previous: Option<&Value>,
) -> Value {
    let mut config = plugin.clone();
    let Some(object) = config.as_object_mut() else {
        return config;
    };
    let capabilities = object.remove("capabilities");
    object.insert(
        "cniVersion".into(),
        attachment.conflist["cniVersion"].clone(),
    );
    object.insert("name".into(), attachment.conflist["name"].clone());
    let wants = |cap: &str| {
        capabilities
            .as_ref()
            .and_then(|c| c.get(cap))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    if wants("portMappings") && !attachment.port_mappings.is_empty() {
        object.insert(
            "runtimeConfig".into(),
            json!({ "portMappings": attachment.port_mappings }),
        );
    }
    if let Some(previous) = previous {
        object.insert("prevResult".into(), previous.clone());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> BridgeNetwork {
        BridgeNetwork {
            name: "skiff".into(),
            bridge: "skiff0".into(),
            pod_cidr: "10.42.3.0/24".parse().unwrap(),
            mtu: 1450,
            ipam_dir: "/var/lib/skiff/cni/ipam".into(),
        }
    }

    #[test]
    fn the_conflist_is_a_bridge_with_the_nodes_block_then_portmap() {
        let n = network();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        let list = n.conflist();
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(list["plugins"][0]["mtu"], 1450);
        assert_eq!(
            list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.3.0/24"
        );
        assert_eq!(
            list["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.42.3.1"
        );
        assert_eq!(list["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn execution_configs_carry_name_version_runtime_config_and_the_previous_result() {
        let attachment = Attachment {
            container_id: "abc".into(),
            netns: "/proc/1/ns/net".into(),
            conflist: network().conflist(),
            args: String::new(),
            port_mappings: vec![Mapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            result: None,
        };
        let plugins = plugins(&attachment.conflist);
        let bridge = execution_config(&attachment, &plugins[0], None);
        assert_eq!(bridge["name"], "skiff");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("prevResult").is_none());
        assert!(bridge.get("runtimeConfig").is_none());
        let previous = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.42.3.7/24"}]});
        assert_eq!(result_ip(&previous), Some(Ipv4Addr::new(10, 42, 3, 7)));
        let portmap = execution_config(&attachment, &plugins[1], Some(&previous));
        assert!(portmap.get("capabilities").is_none());
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(portmap["prevResult"], previous);
    }

    #[test]
    fn a_missing_bridge_plugin_is_named_with_the_package_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cni::new(vec![dir.path().to_path_buf()], dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("containernetworking-plugins"),
            "{err}"
        );
    }
}
