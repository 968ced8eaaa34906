//! The downward API's field paths and resource fields, read from a pod
//! (Kubernetes' `fieldpath` package): what a fieldRef/resourceFieldRef in a
//! container's env or a downwardAPI volume item names.

use std::collections::BTreeMap;

use skiff::Resource as _;
use skiff::pb::core::v1::{Container, Pod};
use skiff::quantity::Quantity;

/// The fields of a pod only its node knows.
#[derive(Debug, Clone, Copy)]
pub struct NodeFields<'a> {
    /// `spec.nodeName`.
    pub node_name: &'a str,
    /// `status.podIP(s)`.
    pub pod_ip: &'a str,
    /// `status.hostIP(s)`.
    pub host_ip: &'a str,
}

/// `metadata.name`, `metadata.namespace`, `metadata.uid` and one label or
/// annotation (`metadata.labels['KEY']`, "" when absent).
fn metadata_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let keyed = |prefix: &str, map: &BTreeMap<String, String>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    Some(match path {
        "metadata.name" => meta.name,
        "metadata.namespace" => meta.namespace,
        "metadata.uid" => meta.uid,
        _ => {
            return keyed("metadata.labels['", &meta.labels)
                .or_else(|| keyed("metadata.annotations['", &meta.annotations));
        }
    })
}

/// A fieldRef of a container's env: the metadata fields, and
/// `spec.nodeName`, `spec.serviceAccountName`, `status.podIP(s)`,
/// `status.hostIP(s)`; None for a path not supported there.
pub fn env_value(pod: &Pod, path: &str, node: &NodeFields<'_>) -> Option<String> {
    Some(match path {
        "spec.nodeName" => node.node_name.to_string(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .map(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => node.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => node.host_ip.to_string(),
        _ => return metadata_value(pod, path),
    })
}

/// A fieldRef of a downwardAPI volume item: the metadata fields, and all
/// labels or annotations as `key="value"` lines; None for a path not
/// supported there.
pub fn volume_value(pod: &Pod, path: &str) -> Option<String> {
    let lines = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match path {
        "metadata.labels" => Some(lines(pod.labels())),
        "metadata.annotations" => Some(lines(pod.annotations())),
        _ => metadata_value(pod, path),
    }
}

/// The node's allocatable resources (`cpu`, `memory`, ...): what a
/// container's unset limit is, as the downward API shows it.
pub type Allocatable = std::collections::BTreeMap<String, String>;

/// The container of the pod named `name` (an init container too), as a
/// `resourceFieldRef`'s `containerName` names it.
pub fn named_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(&spec.init_containers)
        .find(|c| c.name == name)
}

/// `limits.cpu`, `requests.memory`, ... divided by the divisor (rounded
/// up, as Kubernetes does); an unset limit is the node's allocatable
/// amount, an unset request 0, as the kubelet reports them.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: &str,
    allocatable: &Allocatable,
) -> Option<String> {
    let resources = container.resources.clone().unwrap_or_default();
    let (map, key, limit) = match resource.split_once('.')? {
        ("limits", key) => (&resources.limits, key, true),
        ("requests", key) => (&resources.requests, key, false),
        _ => return None,
    };
    let set = map
        .get(key)
        .or_else(|| allocatable.get(key).filter(|_| limit));
    let value: Quantity = set.map_or("0", String::as_str).parse().ok()?;
    let divisor: Quantity = if divisor.is_empty() { "1" } else { divisor }
        .parse()
        .ok()?;
    let (v, d) = (value.milli_value(), divisor.milli_value().max(1));
    Some(((v + d - 1) / d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::meta::v1::ObjectMeta;

    #[test]
    fn field_refs_read_the_pod_and_its_placement() {
        let pod = Pod {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "prod".into(),
                labels: [("app".to_string(), "w".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = NodeFields {
            pod_ip: "10.0.0.2",
            host_ip: "127.0.0.1",
            node_name: "n1",
        };
        assert_eq!(env_value(&pod, "metadata.name", &node).unwrap(), "web");
        assert_eq!(
            env_value(&pod, "metadata.namespace", &node).unwrap(),
            "prod"
        );
        assert_eq!(env_value(&pod, "status.podIP", &node).unwrap(), "10.0.0.2");
        assert_eq!(env_value(&pod, "spec.nodeName", &node).unwrap(), "n1");
        assert_eq!(
            env_value(&pod, "metadata.labels['app']", &node).unwrap(),
            "w"
        );
        assert_eq!(env_value(&pod, "status.phase", &node), None);
    }

    #[test]
    fn resource_refs_round_up_by_the_divisor() {
        let container = Container {
            resources: Some(skiff::pb::core::v1::ResourceRequirements {
                limits: [
                    ("cpu".to_string(), "1500m".to_string()),
                    ("memory".to_string(), "64Mi".to_string()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node: Allocatable = [
            ("cpu".to_string(), "4".to_string()),
            ("memory".to_string(), "8Gi".to_string()),
        ]
        .into();
        let value =
            |resource: &str, divisor: &str| resource_value(&container, resource, divisor, &node);
        assert_eq!(value("limits.cpu", "").unwrap(), "2");
        assert_eq!(value("limits.cpu", "1m").unwrap(), "1500");
        assert_eq!(value("limits.memory", "1Mi").unwrap(), "64");
        // Unset: a limit is the node's, a request none.
        let open = Container::default();
        assert_eq!(
            resource_value(&open, "limits.memory", "1Gi", &node).unwrap(),
            "8"
        );
        assert_eq!(
            resource_value(&open, "limits.cpu", "1m", &node).unwrap(),
            "4000"
        );
        assert_eq!(
            resource_value(&open, "requests.cpu", "", &node).unwrap(),
            "0"
        );
        assert_eq!(resource_value(&open, "limits.gpu", "", &node).unwrap(), "0");
    }

    #[test]
    fn volume_items_read_metadata_only_and_whole_maps_as_lines() {
        let pod = Pod {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                labels: [
                    ("app".to_string(), "w".to_string()),
                    ("tier".to_string(), "front".to_string()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            volume_value(&pod, "metadata.labels").unwrap(),
            "app=\"w\"\ntier=\"front\""
        );
        assert_eq!(volume_value(&pod, "metadata.annotations").unwrap(), "");
        assert_eq!(volume_value(&pod, "metadata.name").unwrap(), "web");
        assert_eq!(volume_value(&pod, "spec.nodeName"), None);
        let node = NodeFields {
            node_name: "n1",
            pod_ip: "",
            host_ip: "",
        };
        assert_eq!(env_value(&pod, "metadata.labels", &node), None);
    }
}
