//! Services and Endpoints.

use skiff::pb::core::v1::{Endpoints, Service};
use skiff::validation::{self, FieldErrors};
use skiff::wkt::{Value, value::Kind as ValueKind};

use super::pod::validate_protocol;
use super::*;

impl Strategy for Service {
    const NAME_RULE: NameRule = NameRule::Label;

    fn cluster_ip_request(&self) -> Option<Option<String>> {
        let spec = self.spec.as_ref()?;
        match (spec.r#type.as_str(), spec.cluster_ip.as_str()) {
            ("ExternalName", _) | (_, "None") => None,
            (_, "") => Some(None),
            (_, ip) => Some(Some(ip.to_string())),
        }
    }

    fn set_cluster_ip(&mut self, ip: &str) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.cluster_ip = ip.to_string();
        spec.cluster_ips = vec![ip.to_string()];
    }

    fn cluster_ip(&self) -> String {
        // Only a Service that needs an address holds one (an ExternalName
        // Service's clusterIP field claims nothing).
        match self.cluster_ip_request() {
            Some(Some(ip)) => ip,
            _ => String::new(),
        }
    }

    fn node_port_requests(&self) -> Vec<(usize, Option<u16>, i32, String)> {
        let Some(spec) = self.spec.as_ref() else {
            return Vec::new();
        };
        if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
            return Vec::new();
        }
        spec.ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let wanted = u16::try_from(p.node_port).ok().filter(|n| *n > 0);
                (i, wanted, p.port, p.protocol.clone())
            })
            .collect()
    }

    fn set_node_port(&mut self, index: usize, port: u16) {
        if let Some(p) = self.spec.as_mut().and_then(|s| s.ports.get_mut(index)) {
            p.node_port = i32::from(port);
        }
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            if spec.r#type.is_empty() {
                spec.r#type = "ClusterIP".into();
            }
            if spec.session_affinity.is_empty() {
                spec.session_affinity = "None".into();
            }
            // Only NodePort and LoadBalancer Services hold node ports.
            if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
                for p in &mut spec.ports {
                    p.node_port = 0;
                }
            }
            for p in &mut spec.ports {
                if p.protocol.is_empty() {
                    p.protocol = "TCP".into();
                }
                if p.target_port.is_none() {
                    p.target_port = Some(Value {
                        kind: Some(ValueKind::NumberValue(f64::from(p.port))),
                    });
                }
            }
        }
    }

    /// Kubernetes: a LoadBalancer Service's class never changes.
    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let class = |s: &Self| {
            s.spec
                .as_ref()
                .filter(|s| s.r#type == "LoadBalancer")
                .map(|s| s.load_balancer_class.clone().unwrap_or_default())
        };
        if let (Some(before), Some(now)) = (class(old), class(self))
            && before != now
        {
            errors.invalid("spec.loadBalancerClass", &now, "may not change once set");
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        unsupported::service(spec, errors);
        if spec
            .load_balancer_class
            .as_deref()
            .is_some_and(|c| !c.is_empty())
            && spec.r#type != "LoadBalancer"
        {
            errors.forbidden(
                "spec.loadBalancerClass",
                "may only be used when `type` is 'LoadBalancer'",
            );
        }
        // Skiff's service network is IPv4 only.
        for (i, family) in spec.ip_families.iter().enumerate() {
            if family == "IPv6" {
                errors.invalid(
                    format!("spec.ipFamilies[{i}]"),
                    family,
                    "not configured on this cluster",
                );
            } else if family != "IPv4" {
                errors.not_supported(format!("spec.ipFamilies[{i}]"), family, &["IPv4", "IPv6"]);
            }
        }
        match spec.ip_family_policy.as_deref() {
            None | Some("SingleStack" | "PreferDualStack") => {}
            Some("RequireDualStack") => errors.invalid(
                "spec.ipFamilyPolicy",
                "RequireDualStack",
                "this cluster is not configured for dual-stack services",
            ),
            Some(other) => errors.not_supported(
                "spec.ipFamilyPolicy",
                other,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            ),
        }
        let supported = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if !supported.contains(&spec.r#type.as_str()) {
            errors.push(
                "spec.type",
                format!(
                    "Unsupported value: {:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                    spec.r#type
                ),
            );
        }
        if spec.r#type != "ExternalName" && spec.ports.is_empty() {
            errors.required("spec.ports");
        }
        for (i, p) in spec.ports.iter().enumerate() {
            if !(0..=65535).contains(&p.node_port) {
                errors.push(
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535",
                        p.node_port
                    ),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if spec.ports.len() > 1 && p.name.is_empty() {
                errors.required(format!("{path}.name"));
            }
            if !p.name.is_empty() && !names.insert(p.name.as_str()) {
                errors.push(
                    format!("{path}.name"),
                    format!("Duplicate value: {:?}", p.name),
                );
            }
            if validation::is_valid_port_num(p.port).is_err() {
                errors.invalid(
                    format!("{path}.port"),
                    p.port.to_string(),
                    "must be between 1 and 65535, inclusive",
                );
            }
            validate_protocol(|| format!("{path}.protocol"), &p.protocol, errors);
            match p.target_port.as_ref().and_then(|v| v.kind.as_ref()) {
                Some(ValueKind::NumberValue(n))
                    if n.fract() == 0.0 && (1.0..=65535.0).contains(n) => {}
                Some(ValueKind::StringValue(s)) if validation::is_port_name(s).is_ok() => {}
                Some(ValueKind::StringValue(s))
                    if s.parse::<i32>()
                        .is_ok_and(|n| validation::is_valid_port_num(n).is_ok()) => {}
                None => {}
                Some(_) => errors.push(
                    format!("{path}.targetPort"),
                    "Invalid value: must be a port number (1-65535) or a port name",
                ),
            }
        }
        validation::validate_labels("spec.selector", &spec.selector, errors);
        if !matches!(spec.session_affinity.as_str(), "None" | "ClientIP") {
            errors.push(
                "spec.sessionAffinity",
                format!(
                    "Unsupported value: {:?}: supported values: \"ClientIP\", \"None\"",
                    spec.session_affinity
                ),
            );
        }
    }
}

impl Strategy for Endpoints {}
