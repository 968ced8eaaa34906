//! Ingresses and IngressClasses (networking.k8s.io/v1), as Kubernetes'
//! `ValidateIngress` and `ValidateIngressClass` judge them: a rule or a
//! default backend; host names that are DNS names (a leading `*.` allowed),
//! never addresses; paths with a type, absolute and free of `//`, `/./`,
//! `/../` and encoded slashes; each backend a Service port by name or
//! number; a class controller that is a domain-prefixed path and never
//! changes. Which class an Ingress without one gets is admission's
//! (`registry`).

use skiff::pb::networking::v1::{
    Ingress, IngressBackend, IngressClass, IngressClassParametersReference, IngressSpec,
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use skiff::selector::LabelSelector;
use skiff::wkt::value::Kind as ValueKind;

use super::*;

/// The annotation that marks the cluster's default IngressClass.
pub const DEFAULT_INGRESS_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation Ingresses named their class by before `ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The path types.
pub const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];
/// The longest controller name of a class.
const MAX_CONTROLLER_LENGTH: usize = 250;
/// The scopes of a class' parameters.
const PARAMETER_SCOPES: &[&str] = &["Cluster", "Namespace"];

impl Strategy for Ingress {
    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_spec(spec, errors);
        if let Some(status) = self.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
            for (i, lb) in status.ingress.iter().enumerate() {
                let path = format!("status.loadBalancer.ingress[{i}]");
                if !lb.ip.is_empty() && lb.ip.parse::<std::net::IpAddr>().is_err() {
                    errors.invalid(format!("{path}.ip"), &lb.ip, "must be a valid IP address");
                }
                if !lb.hostname.is_empty() {
                    if let Err(reason) = validation::is_dns1123_subdomain(&lb.hostname) {
                        errors.invalid(format!("{path}.hostname"), &lb.hostname, reason);
                    }
                    if lb.hostname.parse::<std::net::IpAddr>().is_ok() {
                        errors.invalid(
                            format!("{path}.hostname"),
                            &lb.hostname,
                            "must be a DNS name, not an IP address",
                        );
                    }
                }
            }
        }
    }

    fn validate_create(&self, errors: &mut FieldErrors) {
        let class = self
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_ref());
        let annotation = self
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(LEGACY_CLASS_ANNOTATION));
        if let (Some(_), Some(value)) = (class, annotation) {
            errors.invalid(
                format!("metadata.annotations[{LEGACY_CLASS_ANNOTATION}]"),
                value,
                "can not be set when the class field is also set",
            );
        }
    }

    fn wants_default_ingress_class(&self) -> bool {
        let named = self
            .metadata
            .as_ref()
            .is_some_and(|m| m.annotations.contains_key(LEGACY_CLASS_ANNOTATION));
        !named
            && self
                .spec
                .as_ref()
                .is_some_and(|s| s.ingress_class_name.is_none())
    }

    fn set_ingress_class(&mut self, class: &str) {
        if let Some(spec) = &mut self.spec {
            spec.ingress_class_name = Some(class.to_string());
        }
    }
}

fn validate_spec(spec: &IngressSpec, errors: &mut FieldErrors) {
    if spec.rules.is_empty() && spec.default_backend.is_none() {
        errors.push(
            "spec",
            "Invalid value: \"\": either `defaultBackend` or `rules` must be specified",
        );
    }
    if let Some(backend) = &spec.default_backend {
        validate_backend("spec.defaultBackend", backend, errors);
    }
    if let Some(class) = &spec.ingress_class_name
        && let Err(reason) = validation::is_dns1123_subdomain(class)
    {
        errors.invalid("spec.ingressClassName", class, reason);
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        for (j, host) in tls.hosts.iter().enumerate() {
            validate_host(&format!("spec.tls[{i}].hosts[{j}]"), host, errors);
        }
        if !tls.secret_name.is_empty()
            && let Err(reason) = validation::is_dns1123_subdomain(&tls.secret_name)
        {
            errors.invalid(
                format!("spec.tls[{i}].secretName"),
                &tls.secret_name,
                reason,
            );
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if !rule.host.is_empty() {
            validate_host(&format!("{path}.host"), &rule.host, errors);
        }
        let Some(http) = &rule.http else { continue };
        if http.paths.is_empty() {
            errors.required(format!("{path}.http.paths"));
        }
        for (j, route) in http.paths.iter().enumerate() {
            let at = format!("{path}.http.paths[{j}]");
            match route.path_type.as_deref() {
                None => errors.push(
                    format!("{at}.pathType"),
                    "Required value: pathType must be specified",
                ),
                Some("Exact" | "Prefix") => {
                    validate_path(&format!("{at}.path"), &route.path, errors)
                }
                Some("ImplementationSpecific") => {
                    if !route.path.is_empty() && !route.path.starts_with('/') {
                        errors.invalid(
                            format!("{at}.path"),
                            &route.path,
                            "must be an absolute path",
                        );
                    }
                }
                Some(other) => errors.not_supported(format!("{at}.pathType"), other, PATH_TYPES),
            }
            match &route.backend {
                Some(backend) => validate_backend(&format!("{at}.backend"), backend, errors),
                None => errors.push(
                    format!("{at}.backend"),
                    "Invalid value: \"\": resource or service backend is required",
                ),
            }
        }
    }
}

/// An Exact or Prefix path: absolute, no empty, `.` or `..` segment and no
/// encoded slash (Kubernetes' `invalidPathSequences` and suffixes).
fn validate_path(path: &str, value: &str, errors: &mut FieldErrors) {
    if !value.starts_with('/') {
        return errors.invalid(path, value, "must be an absolute path");
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F"] {
        if value.contains(bad) {
            errors.invalid(path, value, format!("must not contain '{bad}'"));
        }
    }
    for bad in ["/..", "/."] {
        if value.ends_with(bad) {
            errors.invalid(path, value, format!("cannot end with '{bad}'"));
        }
    }
}

/// A rule's or TLS entry's host: a DNS name, `*.` allowed as its first
/// label, never an address.
fn validate_host(path: &str, host: &str, errors: &mut FieldErrors) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return errors.invalid(path, host, "must be a DNS name, not an IP address");
    }
    if host.contains('*') {
        let valid = host
            .strip_prefix("*.")
            .is_some_and(|rest| validation::is_dns1123_subdomain(rest).is_ok());
        if !valid {
            errors.invalid(
                path,
                host,
                r"a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            );
        }
    } else if let Err(reason) = validation::is_dns1123_subdomain(host) {
        errors.invalid(path, host, reason);
    }
}

/// A backend: a Service port, by name or by number. Skiff's controller
/// routes to Services only.
fn validate_backend(path: &str, backend: &IngressBackend, errors: &mut FieldErrors) {
    match (&backend.service, &backend.resource) {
        (Some(_), Some(_)) => errors.push(
            path,
            "Invalid value: \"\": cannot set both resource and service backends",
        ),
        (None, None) => errors.push(
            path,
            "Invalid value: \"\": resource or service backend is required",
        ),
        (None, Some(_)) => errors.forbidden(
            format!("{path}.resource"),
            "backends other than Services (Skiff's ingress controller routes to Services) not supported by Skiff",
        ),
        (Some(service), None) => {
            if service.name.is_empty() {
                errors.required(format!("{path}.service.name"));
            } else if let Err(reason) = validation::is_dns1035_label(&service.name) {
                errors.invalid(format!("{path}.service.name"), &service.name, reason);
            }
            let port = service.port.clone().unwrap_or_default();
            let at = format!("{path}.service.port");
            match (port.name.is_empty(), port.number) {
                (false, n) if n != 0 => errors.invalid(&at, "", "cannot set both port name & port number"),
                (false, _) => {
                    if let Err(reason) = validation::is_port_name(&port.name) {
                        errors.invalid(format!("{at}.name"), &port.name, reason);
                    }
                }
                (true, 0) => errors.push(at, "Required value: port name or number is required"),
                (true, n) => {
                    if let Err(reason) = validation::is_valid_port_num(n) {
                        errors.invalid(format!("{at}.number"), n, reason);
                    }
                }
            }
        }
    }
}

impl Strategy for IngressClass {
    fn default_fields(&mut self) {
        if let Some(params) = self.spec.as_mut().and_then(|s| s.parameters.as_mut()) {
            params.scope.get_or_insert_with(|| "Cluster".into());
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = self.spec.clone().unwrap_or_default();
        if spec.controller.is_empty() {
            errors.required("spec.controller");
        } else if spec.controller.len() > MAX_CONTROLLER_LENGTH {
            errors.too_long("spec.controller", MAX_CONTROLLER_LENGTH);
        } else if let Err(reason) = domain_prefixed_path(&spec.controller) {
            errors.invalid("spec.controller", &spec.controller, reason);
        }
        if let Some(params) = &spec.parameters {
            validate_parameters(params, errors);
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let controller = |c: &IngressClass| c.spec.as_ref().map(|s| s.controller.clone());
        if controller(self) != controller(old) {
            errors.invalid(
                "spec.controller",
                controller(self).unwrap_or_default(),
                "field is immutable",
            );
        }
    }
}

fn validate_parameters(params: &IngressClassParametersReference, errors: &mut FieldErrors) {
    let path = "spec.parameters";
    if params.kind.is_empty() {
        errors.push(format!("{path}.kind"), "Required value: kind is required");
    }
    if params.name.is_empty() {
        errors.push(format!("{path}.name"), "Required value: name is required");
    }
    if let Some(group) = params.api_group.as_deref().filter(|g| !g.is_empty())
        && let Err(reason) = validation::is_dns1123_subdomain(group)
    {
        errors.invalid(format!("{path}.apiGroup"), group, reason);
    }
    match params.scope.as_deref() {
        None => errors.required(format!("{path}.scope")),
        Some("Namespace") => match params.namespace.as_deref() {
            None | Some("") => errors.push(
                format!("{path}.namespace"),
                "Required value: `parameters.scope` is set to 'Namespace'",
            ),
            Some(ns) => {
                if let Err(reason) = validation::is_dns1123_label(ns) {
                    errors.invalid(format!("{path}.namespace"), ns, reason);
                }
            }
        },
        Some("Cluster") => {
            if params.namespace.is_some() {
                errors.forbidden(
                    format!("{path}.namespace"),
                    "`parameters.scope` is set to 'Cluster'",
                );
            }
        }
        Some(other) => errors.not_supported(format!("{path}.scope"), other, PARAMETER_SCOPES),
    }
}

/// Kubernetes' `IsDomainPrefixedPath`: `example.com/some/path`.
fn domain_prefixed_path(value: &str) -> Result<(), String> {
    let Some((domain, path)) = value.split_once('/') else {
        return Err("must be a domain-prefixed path (such as \"acme.io/foo\")".into());
    };
    if path.is_empty() {
        return Err("must be a domain-prefixed path (such as \"acme.io/foo\")".into());
    }
    validation::is_dns1123_subdomain(domain).map_err(String::from)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c);
    if !path.chars().all(allowed) {
        return Err("Invalid path: must match the regex [A-Za-z0-9/\\-._~%!$&'()*+,;=:]+".into());
    }
    Ok(())
}

/// The policy types.
const POLICY_TYPES: &[&str] = &["Ingress", "Egress"];
/// The protocols a policy port may name.
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

impl Strategy for NetworkPolicy {
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        if spec.policy_types.is_empty() {
            spec.policy_types.push("Ingress".into());
            if !spec.egress.is_empty() {
                spec.policy_types.push("Egress".into());
            }
        }
        let ports = spec
            .ingress
            .iter_mut()
            .flat_map(|r| r.ports.iter_mut())
            .chain(spec.egress.iter_mut().flat_map(|r| r.ports.iter_mut()));
        for port in ports {
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        match &spec.pod_selector {
            None => errors.required("spec.podSelector"),
            Some(selector) => {
                if let Err(reason) = LabelSelector::try_from(selector) {
                    errors.push("spec.podSelector", format!("Invalid value: {reason}"));
                }
            }
        }
        for (i, rule) in spec.ingress.iter().enumerate() {
            let path = format!("spec.ingress[{i}]");
            validate_ports(&path, &rule.ports, errors);
            for (j, peer) in rule.from.iter().enumerate() {
                validate_peer(&format!("{path}.from[{j}]"), peer, errors);
            }
        }
        for (i, rule) in spec.egress.iter().enumerate() {
            let path = format!("spec.egress[{i}]");
            validate_ports(&path, &rule.ports, errors);
            for (j, peer) in rule.to.iter().enumerate() {
                validate_peer(&format!("{path}.to[{j}]"), peer, errors);
            }
        }
        if spec.policy_types.len() > POLICY_TYPES.len() {
            errors.invalid(
                "spec.policyTypes",
                spec.policy_types.join(","),
                "may not specify more than two policyTypes",
            );
        }
        for (i, kind) in spec.policy_types.iter().enumerate() {
            if !POLICY_TYPES.contains(&kind.as_str()) {
                errors.not_supported(format!("spec.policyTypes[{i}]"), kind, POLICY_TYPES);
            }
        }
    }
}

fn validate_ports(path: &str, ports: &[NetworkPolicyPort], errors: &mut FieldErrors) {
    for (i, port) in ports.iter().enumerate() {
        let at = format!("{path}.ports[{i}]");
        if let Some(protocol) = &port.protocol
            && !PROTOCOLS.contains(&protocol.as_str())
        {
            errors.not_supported(format!("{at}.protocol"), protocol, PROTOCOLS);
        }
        let number = match port.port.as_ref().and_then(|v| v.kind.as_ref()) {
            None => None,
            Some(ValueKind::NumberValue(n)) => {
                let n = *n as i32;
                if let Err(reason) = validation::is_valid_port_num(n) {
                    errors.invalid(format!("{at}.port"), n, reason);
                }
                Some(n)
            }
            Some(ValueKind::StringValue(name)) => {
                if let Err(reason) = validation::is_port_name(name) {
                    errors.invalid(format!("{at}.port"), name, reason);
                }
                if port.end_port.is_some() {
                    errors.forbidden(
                        format!("{at}.endPort"),
                        "may not be specified when `port` is non-numeric",
                    );
                }
                None
            }
            Some(_) => {
                errors.invalid(format!("{at}.port"), "", "must be a number or a port name");
                None
            }
        };
        if let Some(end) = port.end_port {
            if let Err(reason) = validation::is_valid_port_num(end) {
                errors.invalid(format!("{at}.endPort"), end, reason);
            }
            match (port.port.is_some(), number) {
                (false, _) => errors.push(
                    format!("{at}.port"),
                    "Required value: must be specified when `endPort` is specified",
                ),
                (true, Some(start)) if end < start => errors.invalid(
                    format!("{at}.endPort"),
                    end,
                    "must be greater than or equal to `port`",
                ),
                _ => {}
            }
        }
    }
}

fn validate_peer(path: &str, peer: &NetworkPolicyPeer, errors: &mut FieldErrors) {
    let set = [
        peer.pod_selector.is_some(),
        peer.namespace_selector.is_some(),
        peer.ip_block.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    if set == 0 {
        errors.push(path, "Required value: must specify a peer");
    } else if set > 1 && peer.ip_block.is_some() {
        errors.forbidden(path, "may not specify both ipBlock and another peer");
    }
    for (field, selector) in [
        ("podSelector", &peer.pod_selector),
        ("namespaceSelector", &peer.namespace_selector),
    ] {
        if let Some(selector) = selector
            && let Err(reason) = LabelSelector::try_from(selector)
        {
            errors.push(
                format!("{path}.{field}"),
                format!("Invalid value: {reason}"),
            );
        }
    }
    let Some(block) = &peer.ip_block else { return };
    let at = format!("{path}.ipBlock");
    if block.cidr.is_empty() {
        return errors.required(format!("{at}.cidr"));
    }
    if block.cidr.contains(':') {
        return errors.forbidden(
            format!("{at}.cidr"),
            "IPv6 blocks (Skiff's pod network is IPv4) not supported by Skiff",
        );
    }
    let cidr = match skiff::cidr::Ipv4Cidr::parse_loose(&block.cidr) {
        Ok(cidr) => cidr,
        Err(reason) => return errors.invalid(format!("{at}.cidr"), &block.cidr, reason),
    };
    for (i, except) in block.except.iter().enumerate() {
        match skiff::cidr::Ipv4Cidr::parse_loose(except) {
            Err(reason) => errors.invalid(format!("{at}.except[{i}]"), except, reason),
            Ok(e) if e.bits() <= cidr.bits() || !cidr.contains(e.network()) => errors.invalid(
                format!("{at}.except[{i}]"),
                except,
                "must be a strict subset of `cidr`",
            ),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
