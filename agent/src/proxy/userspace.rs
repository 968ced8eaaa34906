//! The userspace backend: a TCP relay per NodePort (on every address of
//! the node) and per LoadBalancer address that is local to this host,
//! for agents that cannot write kernel rules.
//!
//! A port listens only while its Service has a ready endpoint, so a
//! client of a Service with none is refused at once by the kernel. Each
//! connection goes to the next endpoint in turn, or, with ClientIP
//! affinity, to the endpoint that client used last if it is still ready
//! and the affinity has not expired. UDP and SCTP ports are not relayed.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, ServicePort};

/// Where one relay listens, and what it relays to.
#[derive(Debug, Default)]
struct Targets {
    endpoints: Vec<SocketAddrV4>,
    affinity: Option<Duration>,
    next: usize,
    clients: HashMap<IpAddr, (SocketAddrV4, Instant)>,
}

impl Targets {
    /// The endpoint for a connection from `client`.
    fn pick(&mut self, client: IpAddr, now: Instant) -> Option<SocketAddrV4> {
        if self.endpoints.is_empty() {
            return None;
        }
        if let Some(timeout) = self.affinity {
            self.clients
                .retain(|_, (_, seen)| now.duration_since(*seen) < timeout);
            if let Some((endpoint, seen)) = self.clients.get_mut(&client)
                && self.endpoints.contains(endpoint)
            {
                *seen = now;
                return Some(*endpoint);
            }
        }
        let endpoint = self.endpoints[self.next % self.endpoints.len()];
        self.next = self.next.wrapping_add(1);
        if self.affinity.is_some() {
            self.clients.insert(client, (endpoint, now));
        }
        Some(endpoint)
    }
}

struct Relay {
    targets: Arc<Mutex<Targets>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The userspace backend.
#[derive(Default)]
pub struct Userspace {
    relays: BTreeMap<SocketAddr, Relay>,
    /// Addresses that could not be bound, said once each.
    refused: BTreeMap<SocketAddr, String>,
}

impl Userspace {
    /// A backend with no relays yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where relays listen now (for tests and logs).
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.relays.keys().copied().collect()
    }
}

/// The listen addresses of a service port.
fn addresses(port: &ServicePort) -> Vec<SocketAddr> {
    if port.protocol != "tcp" || port.external_endpoints().is_empty() {
        return Vec::new();
    }
    let mut out: Vec<SocketAddr> = port
        .node_port
        .map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)))
        .into_iter()
        .collect();
    out.extend(
        port.external_ips
            .iter()
            .map(|ip| SocketAddr::from((*ip, port.port))),
    );
    out
}

async fn serve(listener: tokio::net::TcpListener, targets: Arc<Mutex<Targets>>) {
    loop {
        let Ok((mut inbound, client)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let endpoint = targets
            .lock()
            .expect("relay targets")
            .pick(client.ip(), Instant::now());
        let Some(endpoint) = endpoint else { continue };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(endpoint).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::debug!(%endpoint, error = %e, "relay: endpoint refused"),
            }
        });
    }
}

#[async_trait::async_trait]
impl Backend for Userspace {
    async fn sync(&mut self, ports: &[ServicePort]) -> Result<(), String> {
        let mut wanted: BTreeMap<SocketAddr, &ServicePort> = BTreeMap::new();
        for port in ports {
            for address in addresses(port) {
                wanted.insert(address, port);
            }
        }
        self.relays
            .retain(|address, _| wanted.contains_key(address));
        self.refused
            .retain(|address, _| wanted.contains_key(address));
        for (address, port) in wanted {
            let affinity = port.affinity.map(|s| Duration::from_secs(u64::from(s)));
            if let Some(relay) = self.relays.get(&address) {
                let mut targets = relay.targets.lock().expect("relay targets");
                targets.endpoints = port.external_endpoints().to_vec();
                targets.affinity = affinity;
                continue;
            }
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => {
                    let targets = Arc::new(Mutex::new(Targets {
                        endpoints: port.external_endpoints().to_vec(),
                        affinity,
                        ..Targets::default()
                    }));
                    let task = tokio::spawn(serve(listener, Arc::clone(&targets)));
                    tracing::info!(service = %port.key(), %address, "relaying");
                    self.relays.insert(address, Relay { targets, task });
                    self.refused.remove(&address);
                }
                Err(e) => {
                    let error = e.to_string();
                    if self.refused.get(&address) != Some(&error) {
                        tracing::warn!(service = %port.key(), %address, %error, "cannot listen for a service");
                        self.refused.insert(address, error);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(affinity: Option<Duration>) -> Targets {
        Targets {
            endpoints: vec![
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            ],
            affinity,
            ..Targets::default()
        }
    }

    #[test]
    fn connections_take_turns_without_affinity() {
        let mut t = targets(None);
        let now = Instant::now();
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let picks: Vec<_> = (0..4)
            .map(|_| t.pick(client, now).unwrap().ip().octets()[3])
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        t.endpoints.clear();
        assert_eq!(t.pick(client, now), None);
    }

    #[test]
    fn a_client_sticks_to_its_endpoint_until_it_expires_or_goes() {
        let mut t = targets(Some(Duration::from_secs(10)));
        let now = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let first = t.pick(a, now).unwrap();
        assert_eq!(t.pick(a, now + Duration::from_secs(5)), Some(first));
        assert_ne!(
            t.pick(b, now).unwrap(),
            first,
            "another client takes its turn"
        );
        // Expired entries are forgotten.
        let later = now + Duration::from_secs(16);
        t.pick(a, later).unwrap();
        assert_eq!(t.clients.len(), 1, "b's affinity expired");
        // An endpoint that is gone is not kept for its client.
        let kept = t.pick(a, later).unwrap();
        t.endpoints.retain(|e| *e != kept);
        assert_ne!(t.pick(a, later).unwrap(), kept);
    }
}
