//! Cluster DNS, served by every agent for the pods of its node (the
//! kube-dns/CoreDNS part of Kubernetes, node-local as NodeLocal DNSCache
//! places it), with hickory's server.
//!
//! It answers from the agent's caches of Services and Endpoints,
//! authoritatively for the cluster domain (`cluster.local`):
//!
//! - `SVC.NS.svc.cluster.local` A → the ClusterIP; for a headless Service
//!   (clusterIP None) the ready endpoint addresses; an ExternalName
//!   Service → CNAME to its external name;
//! - `HOST.SVC.NS.svc.cluster.local` A → the ready endpoint whose
//!   hostname is HOST (pods with `hostname` + `subdomain`);
//! - `A-B-C-D.NS.pod.cluster.local` A → A.B.C.D;
//! - other names in the domain → NXDOMAIN; a name that exists but has no
//!   record of the asked type → no answer (NOERROR), as resolvers expect
//!   when they ask A and AAAA together.
//!
//! Names outside the cluster domain are refused (REFUSED): this DNS does
//! not recurse. Pods' resolv.conf lists it first and then the host's own
//! nameservers (which answer outside names: Docker's resolver moves on to
//! the next server on REFUSED), with the search domains
//! `NS.svc.cluster.local svc.cluster.local cluster.local` and `ndots:5`,
//! so short names (`web`, `web.other`) resolve as in Kubernetes. Until
//! both caches have listed once (an agent just restarted, an API server
//! down), every question gets SERVFAIL rather than a false NXDOMAIN.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use skiff::pb::core::v1::{Endpoints, Service};
use skiff_client::Store;

/// The cluster domain, as Kubernetes' default.
pub use skiff::names::CLUSTER_DOMAIN;

/// Seconds answers may be cached (short: Services change).
const TTL: u32 = 5;

/// What a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// IPv4 addresses (possibly none: the name exists, e.g. a headless
    /// Service with no ready endpoint).
    Addresses(Vec<Ipv4Addr>),
    /// An alias (ExternalName Services).
    Alias(String),
    /// The name does not exist in the cluster domain.
    NoSuchName,
    /// Not in the cluster domain: not ours to answer.
    NotOurs,
}

/// The cluster's names, from the Service and Endpoints caches.
#[derive(Clone)]
pub struct ClusterDns {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    domain: String,
}

impl ClusterDns {
    /// Answers from these caches for `domain` (`cluster.local`).
    pub fn new(services: Store<Service>, endpoints: Store<Endpoints>, domain: &str) -> Self {
        Self {
            services,
            endpoints,
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// What `name` (any case, with or without the final dot) is.
    pub fn resolve(&self, name: &str) -> Resolution {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(relative) = name
            .strip_suffix(&self.domain)
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            return if name == self.domain {
                Resolution::Addresses(Vec::new())
            } else {
                Resolution::NotOurs
            };
        };
        let labels: Vec<&str> = relative.split('.').collect();
        match labels.as_slice() {
            [service, namespace, "svc"] => self.service(namespace, service),
            [host, service, namespace, "svc"] => {
                let ready = self.ready(namespace, service, Some(host));
                if ready.is_empty() {
                    Resolution::NoSuchName
                } else {
                    Resolution::Addresses(ready)
                }
            }
            [dashed, _namespace, "pod"] => dashed
                .replace('-', ".")
                .parse()
                .map_or(Resolution::NoSuchName, |ip| Resolution::Addresses(vec![ip])),
            // The zones themselves exist (`svc.cluster.local`, `NS.svc...`).
            ["svc" | "pod"] | [_, "svc" | "pod"] => Resolution::Addresses(Vec::new()),
            _ => Resolution::NoSuchName,
        }
    }

    fn service(&self, namespace: &str, name: &str) -> Resolution {
        let Some(service) = self.services.get(namespace, name) else {
            return Resolution::NoSuchName;
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.r#type == "ExternalName" {
            return Resolution::Alias(spec.external_name);
        }
        match spec.cluster_ip.parse::<Ipv4Addr>() {
            Ok(ip) => Resolution::Addresses(vec![ip]),
            // Headless: the ready pods themselves.
            Err(_) => Resolution::Addresses(self.ready(namespace, name, None)),
        }
    }

    /// Ready endpoint addresses, those with hostname `host` if given.
    fn ready(&self, namespace: &str, name: &str, host: Option<&str>) -> Vec<Ipv4Addr> {
        let Some(endpoints) = self.endpoints.get(namespace, name) else {
            return Vec::new();
        };
        let mut out: Vec<Ipv4Addr> = endpoints
            .subsets
            .iter()
            .flat_map(|s| &s.addresses)
            .filter(|a| host.is_none_or(|h| a.hostname.eq_ignore_ascii_case(h)))
            .filter_map(|a| a.ip.parse().ok())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The answer records and response code for a question.
    fn answer(&self, name: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
        match self.resolve(&name.to_ascii()) {
            Resolution::NotOurs => (ResponseCode::Refused, Vec::new()),
            Resolution::NoSuchName => (ResponseCode::NXDomain, Vec::new()),
            // A CNAME answers every type; the resolver follows it.
            Resolution::Alias(target) => {
                let records = Name::from_ascii(format!("{}.", target.trim_end_matches('.')))
                    .ok()
                    .map(|target| {
                        Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target)))
                    })
                    .into_iter()
                    .collect();
                (ResponseCode::NoError, records)
            }
            Resolution::Addresses(ips) => {
                let records = if matches!(qtype, RecordType::A | RecordType::ANY) {
                    ips.into_iter()
                        .map(|ip| Record::from_rdata(name.clone(), TTL, RData::A(A(ip))))
                        .collect()
                } else {
                    Vec::new()
                };
                (ResponseCode::NoError, records)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        header.set_recursion_available(false);
        let synced = self.services.is_synced() && self.endpoints.is_synced();
        let (code, records) = match request.request_info() {
            Ok(_) if !synced => (ResponseCode::ServFail, Vec::new()),
            Ok(info)
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                self.answer(
                    &Name::from(info.query.name().clone()),
                    info.query.query_type(),
                )
            }
            Ok(_) => (ResponseCode::NotImp, Vec::new()),
            Err(_) => (ResponseCode::FormErr, Vec::new()),
        };
        header.set_response_code(code);
        let sent = response
            .send_response(builder.build(header, records.iter(), [], [], []))
            .await;
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns: sending the answer");
                let mut failed = Header::response_from_request(request.header());
                failed.set_response_code(ResponseCode::ServFail);
                failed.into()
            }
        }
    }
}

/// The host's nameservers (`/etc/resolv.conf`), for names outside the
/// cluster.
pub fn host_nameservers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .map(|server| server.trim().to_string())
        .filter(|server| server.parse::<IpAddr>().is_ok())
        .collect()
}

/// Serves `dns` on UDP and TCP at `address` until the task is dropped.
///
/// # Errors
/// The address cannot be bound (port 53 needs root).
pub async fn serve(
    dns: ClusterDns,
    address: SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let udp = tokio::net::UdpSocket::bind(address).await?;
    let tcp = tokio::net::TcpListener::bind(address).await?;
    let mut server = hickory_server::ServerFuture::new(dns);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    Ok(tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::warn!(error = %e, "cluster DNS stopped");
        }
    }))
}

/// The resolv.conf a pod gets: (nameservers, search domains, options),
/// from its dnsPolicy and dnsConfig, as the kubelet builds it. `cluster`
/// is this node's DNS address, when it serves one.
pub fn pod_resolv_conf(
    pod: &skiff::pb::core::v1::PodSpec,
    namespace: &str,
    cluster: Option<IpAddr>,
    upstream: &[String],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
    let policy = if pod.dns_policy.is_empty() {
        "ClusterFirst"
    } else {
        pod.dns_policy.as_str()
    };
    let cluster_first = match policy {
        "ClusterFirst" => !pod.host_network,
        "ClusterFirstWithHostNet" => true,
        _ => false,
    };
    if let (true, Some(ip)) = (cluster_first, cluster) {
        servers.push(ip.to_string());
        // resolv.conf takes three nameservers.
        servers.extend(upstream.iter().take(2).cloned());
        search.extend([
            format!("{namespace}.svc.{CLUSTER_DOMAIN}"),
            format!("svc.{CLUSTER_DOMAIN}"),
            CLUSTER_DOMAIN.to_string(),
        ]);
        options.push("ndots:5".to_string());
    }
    if let Some(config) = &pod.dns_config {
        servers.extend(config.nameservers.iter().cloned());
        search.extend(config.searches.iter().cloned());
        for option in &config.options {
            options.retain(|o| o.split(':').next() != Some(option.name.as_str()));
            options.push(match &option.value {
                Some(value) => format!("{}:{value}", option.name),
                None => option.name.clone(),
            });
        }
    }
    servers.dedup();
    search.dedup();
    (servers, search, options)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn dns() -> ClusterDns {
        let (services_writer, services) = skiff_client::store::store::<Service>();
        let (endpoints_writer, endpoints) = skiff_client::store::store::<Endpoints>();
        for value in [
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80}]}}),
            json!({"metadata": {"name": "db", "namespace": "data"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}),
            json!({"metadata": {"name": "ext", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ] {
            services_writer.insert(Arc::new(serde_json::from_value(value).unwrap()));
        }
        endpoints_writer.insert(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "data"},
                "subsets": [{"addresses": [{"ip": "172.28.0.5", "hostname": "db-0"},
                                           {"ip": "172.28.0.4"}],
                             "notReadyAddresses": [{"ip": "172.28.0.9"}],
                             "ports": [{"port": 5432}]}]
            }))
            .unwrap(),
        ));
        ClusterDns::new(services, endpoints, CLUSTER_DOMAIN)
    }

    fn ips(list: &[&str]) -> Resolution {
        Resolution::Addresses(list.iter().map(|ip| ip.parse().unwrap()).collect())
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_or_ready_pods() {
        let dns = dns();
        assert_eq!(
            dns.resolve("web.default.svc.cluster.local."),
            ips(&["10.43.0.10"])
        );
        assert_eq!(
            dns.resolve("WEB.Default.svc.cluster.local"),
            ips(&["10.43.0.10"])
        );
        assert_eq!(
            dns.resolve("db.data.svc.cluster.local"),
            ips(&["172.28.0.4", "172.28.0.5"]),
            "headless: the ready pods, not the unready one"
        );
        assert_eq!(
            dns.resolve("db-0.db.data.svc.cluster.local"),
            ips(&["172.28.0.5"])
        );
        assert_eq!(
            dns.resolve("ext.default.svc.cluster.local"),
            Resolution::Alias("example.org".into())
        );
        assert_eq!(
            dns.resolve("172-28-0-7.data.pod.cluster.local"),
            ips(&["172.28.0.7"])
        );
    }

    #[test]
    fn unknown_names_do_not_exist_and_foreign_ones_are_not_ours() {
        let dns = dns();
        assert_eq!(
            dns.resolve("nope.default.svc.cluster.local"),
            Resolution::NoSuchName
        );
        assert_eq!(
            dns.resolve("web.other.svc.cluster.local"),
            Resolution::NoSuchName
        );
        assert_eq!(
            dns.resolve("db-9.db.data.svc.cluster.local"),
            Resolution::NoSuchName
        );
        assert_eq!(
            dns.resolve("a.b.c.d.e.cluster.local"),
            Resolution::NoSuchName
        );
        assert_eq!(
            dns.resolve("default.svc.cluster.local"),
            ips(&[]),
            "a zone exists"
        );
        assert_eq!(dns.resolve("example.org"), Resolution::NotOurs);
        assert_eq!(dns.resolve("evilcluster.local"), Resolution::NotOurs);
    }

    #[test]
    fn answers_carry_the_asked_type_only() {
        let dns = dns();
        let name = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
        let (code, records) = dns.answer(&name, RecordType::A);
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(records.len(), 1);
        let (code, records) = dns.answer(&name, RecordType::AAAA);
        assert_eq!(
            (code, records.len()),
            (ResponseCode::NoError, 0),
            "exists, no IPv6"
        );
        let missing = Name::from_ascii("nope.default.svc.cluster.local.").unwrap();
        assert_eq!(
            dns.answer(&missing, RecordType::A).0,
            ResponseCode::NXDomain
        );
        let foreign = Name::from_ascii("example.org.").unwrap();
        assert_eq!(dns.answer(&foreign, RecordType::A).0, ResponseCode::Refused);
    }

    #[test]
    fn resolv_conf_follows_the_dns_policy() {
        use skiff::pb::core::v1::PodSpec;
        let gateway: IpAddr = "172.28.0.1".parse().unwrap();
        let (servers, search, options) = pod_resolv_conf(
            &PodSpec::default(),
            "team",
            Some(gateway),
            &["192.0.2.53".to_string()],
        );
        assert_eq!(
            servers,
            vec!["172.28.0.1", "192.0.2.53"],
            "the cluster's first, then the host's"
        );
        assert_eq!(
            search,
            vec![
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(options, vec!["ndots:5"]);
        let default: PodSpec = serde_json::from_value(json!({"dnsPolicy": "Default"})).unwrap();
        assert_eq!(
            pod_resolv_conf(&default, "team", Some(gateway), &[]).0,
            Vec::<String>::new()
        );
        let none: PodSpec = serde_json::from_value(json!({
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["10.0.0.53"], "searches": ["corp"],
                          "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}
        }))
        .unwrap();
        assert_eq!(
            pod_resolv_conf(&none, "team", Some(gateway), &[]),
            (
                vec!["10.0.0.53".into()],
                vec!["corp".into()],
                vec!["ndots:2".into(), "edns0".into()]
            )
        );
        let merged: PodSpec = serde_json::from_value(json!({
            "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}
        }))
        .unwrap();
        assert_eq!(
            pod_resolv_conf(&merged, "team", Some(gateway), &[]).2,
            vec!["ndots:1"]
        );
    }
}
