//! The routing table: every Ingress of the controller's classes turned
//! into host and path matches, rebuilt whole on every change and swapped
//! in at once (requests in flight keep the table they started with).
//!
//! Matching follows the Ingress specification: a host rule's exact name
//! beats a wildcard (`*.example.com` matches one label); a host with rules
//! is served by those alone, as NGINX's server blocks do (so no other
//! Ingress' host-less rule or default backend sees its traffic); other
//! hosts go to the rules without a host, then to a default backend if an
//! Ingress names one (the oldest Ingress' wins). Within the rules the
//! longest matching path wins, an Exact path before a Prefix of the same
//! length; a Prefix matches whole path elements (`/api` matches `/api`
//! and `/api/v1`, not `/apis`); ImplementationSpecific is a Prefix.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::sign::CertifiedKey;
use skiff::Resource as _;
use skiff::pb::core::v1::Secret;
use skiff::pb::networking::v1::{Ingress, IngressBackend, IngressClass};

/// The annotation Ingresses named their class by before the field.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation marking the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// A Service port, as an Ingress names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePort {
    /// By the Service port's name.
    Name(String),
    /// By the Service port's number.
    Number(i32),
}

/// Where a matched request goes.
#[derive(Debug)]
pub struct Backend {
    /// The Ingress' namespace (the Service's).
    pub namespace: String,
    /// The Ingress that routes here (for logs and metrics).
    pub ingress: String,
    /// The Service.
    pub service: String,
    /// Its port.
    pub port: ServicePort,
    /// Round-robin position over the Service's endpoints.
    pub next: AtomicUsize,
}

impl Backend {
    fn new(namespace: &str, ingress: &str, backend: &IngressBackend) -> Option<Arc<Self>> {
        let service = backend.service.as_ref()?;
        let port = service.port.clone().unwrap_or_default();
        Some(Arc::new(Self {
            namespace: namespace.to_string(),
            ingress: ingress.to_string(),
            service: service.name.clone(),
            port: if port.name.is_empty() {
                ServicePort::Number(port.number)
            } else {
                ServicePort::Name(port.name)
            },
            next: AtomicUsize::new(0),
        }))
    }

    /// The next index of `n` endpoints, in turn.
    pub fn pick(&self, n: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }
}

struct Route {
    /// The path without its trailing `/` (a Prefix), or as given (Exact).
    path: String,
    exact: bool,
    backend: Arc<Backend>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        if self.exact {
            return path == self.path;
        }
        self.path.is_empty()
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// The routing table and the certificates served by SNI name.
#[derive(Debug, Default)]
pub struct Routes {
    exact: HashMap<String, Vec<Route>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Vec<Route>>,
    any: Vec<Route>,
    default_backend: Option<Arc<Backend>>,
    certs: HashMap<String, Arc<CertifiedKey>>,
    /// The Ingresses served, `namespace/name`.
    pub served: Vec<String>,
    /// Ingresses whose TLS Secret is missing or unusable, with why.
    pub problems: BTreeMap<String, String>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            if self.exact { "=" } else { "^" },
            self.path,
            self.backend.service
        )
    }
}

/// Whether `ingress` is served by a controller of `classes` (the names of
/// the classes whose controller is ours), `default` being the name of
/// ours that is the cluster's default.
pub fn is_ours(ingress: &Ingress, classes: &HashSet<String>, default: Option<&str>) -> bool {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.get(LEGACY_CLASS_ANNOTATION))
                .map(String::as_str)
        });
    match named {
        Some(class) => classes.contains(class),
        None => default.is_some(),
    }
}

/// The names of the classes of `controller`, and which of them is the
/// default (the newest so annotated, as admission picks).
pub fn our_classes(
    classes: &[Arc<IngressClass>],
    controller: &str,
) -> (HashSet<String>, Option<String>) {
    let ours: Vec<&Arc<IngressClass>> = classes
        .iter()
        .filter(|c| c.spec.as_ref().is_some_and(|s| s.controller == controller))
        .collect();
    let default = classes
        .iter()
        .filter(|c| {
            c.metadata
                .as_ref()
                .and_then(|m| m.annotations.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        })
        .max_by_key(|c| {
            (
                c.metadata
                    .as_ref()
                    .and_then(|m| m.creation_timestamp)
                    .map_or(0, |t| t.seconds),
                c.name().to_string(),
            )
        })
        .filter(|c| c.spec.as_ref().is_some_and(|s| s.controller == controller))
        .map(|c| c.name().to_string());
    (ours.iter().map(|c| c.name().to_string()).collect(), default)
}

impl Routes {
    /// The table of `ingresses` (already filtered to ours); `secret`
    /// finds a TLS Secret by namespace and name.
    pub fn build(
        ingresses: &[Arc<Ingress>],
        secret: impl Fn(&str, &str) -> Option<Arc<Secret>>,
    ) -> Self {
        let mut ordered: Vec<&Arc<Ingress>> = ingresses.iter().collect();
        // The oldest first: it wins ties (a path two Ingresses both name).
        ordered.sort_by_key(|i| {
            (
                i.metadata
                    .as_ref()
                    .and_then(|m| m.creation_timestamp)
                    .map_or(0, |t| t.seconds),
                i.namespace().to_string(),
                i.name().to_string(),
            )
        });
        let mut routes = Self::default();
        for ingress in ordered {
            let (namespace, name) = (ingress.namespace(), ingress.name());
            let id = format!("{namespace}/{name}");
            let Some(spec) = &ingress.spec else { continue };
            routes.served.push(id.clone());
            if routes.default_backend.is_none()
                && let Some(backend) = &spec.default_backend
            {
                routes.default_backend = Backend::new(namespace, &id, backend);
            }
            for rule in &spec.rules {
                let Some(http) = &rule.http else { continue };
                let bucket = if rule.host.is_empty() {
                    &mut routes.any
                } else if let Some(suffix) = rule.host.strip_prefix("*.") {
                    routes.wildcard.entry(suffix.to_string()).or_default()
                } else {
                    routes.exact.entry(rule.host.clone()).or_default()
                };
                for path in &http.paths {
                    let Some(backend) = path
                        .backend
                        .as_ref()
                        .and_then(|b| Backend::new(namespace, &id, b))
                    else {
                        continue;
                    };
                    let exact = path.path_type.as_deref() == Some("Exact");
                    let text = if exact {
                        path.path.clone()
                    } else {
                        path.path.trim_end_matches('/').to_string()
                    };
                    bucket.push(Route {
                        path: text,
                        exact,
                        backend,
                    });
                }
            }
            for tls in &spec.tls {
                if tls.secret_name.is_empty() {
                    continue;
                }
                match secret(namespace, &tls.secret_name)
                    .as_deref()
                    .map(certified)
                {
                    Some(Ok(key)) => {
                        for host in &tls.hosts {
                            routes
                                .certs
                                .entry(host.clone())
                                .or_insert_with(|| Arc::clone(&key));
                        }
                    }
                    Some(Err(why)) => {
                        routes
                            .problems
                            .insert(id.clone(), format!("secret {}: {why}", tls.secret_name));
                    }
                    None => {
                        routes
                            .problems
                            .insert(id.clone(), format!("secret {} not found", tls.secret_name));
                    }
                }
            }
        }
        for bucket in routes
            .exact
            .values_mut()
            .chain(routes.wildcard.values_mut())
            .chain(std::iter::once(&mut routes.any))
        {
            // Longest first, Exact before Prefix at one length; stable, so
            // the oldest Ingress first among equals.
            bucket.sort_by_key(|r| (std::cmp::Reverse(r.path.len()), !r.exact));
        }
        routes
    }

    /// The backend for a request to `host` (a port after `:` ignored) and
    /// `path`; None when nothing matches and there is no default backend.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let path = if path.is_empty() { "/" } else { path };
        let wildcard = host
            .split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest));
        // A host that has rules is served by them alone (as NGINX's
        // server blocks): another namespace's rules without a host, or its
        // default backend, never see that host's traffic.
        match (self.exact.get(&host), wildcard) {
            (Some(routes), _) | (None, Some(routes)) => {
                routes.iter().find(|r| r.matches(path)).map(|r| &r.backend)
            }
            (None, None) => self
                .any
                .iter()
                .find(|r| r.matches(path))
                .map(|r| &r.backend)
                .or(self.default_backend.as_ref()),
        }
    }

    /// The certificate for SNI name `name`: its own, else its wildcard's.
    pub fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        self.certs.get(&name).cloned().or_else(|| {
            let (_, rest) = name.split_once('.')?;
            self.certs.get(&format!("*.{rest}")).cloned()
        })
    }
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A kubernetes.io/tls Secret's certificate and key.
fn certified(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    let text = |key: &str| {
        secret
            .data
            .get(key)
            .and_then(|v| String::from_utf8(v.clone()).ok())
            .ok_or_else(|| format!("no {key}"))
    };
    let identity = skiff_pki::Identity {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    };
    skiff_pki::tls::certified(&identity).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
