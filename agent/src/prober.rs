//! Probes: one task per running container that has any, running its
//! startup probe until it passes, then liveness and readiness, each on its
//! own period with Kubernetes' thresholds. Results go to the pod worker
//! only when the container's [`ProbeState`] changes.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::core::v1::{Container as PodContainer, Probe};
use skiff::wkt::value::Kind as ValueKind;
use skiff_runtime::Runtime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::status::ProbeState;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// One probe's schedule and counters.
struct Runner {
    kind: Kind,
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
}

impl Runner {
    fn new(kind: Kind, probe: Probe, from: Instant) -> Self {
        let delay = Duration::from_secs(probe.initial_delay_seconds.max(0) as u64);
        Self {
            kind,
            probe,
            next: from + delay,
            successes: 0,
            failures: 0,
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs(if self.probe.period_seconds > 0 {
            self.probe.period_seconds as u64
        } else {
            10
        })
    }

    /// Counts one result; `Some(verdict)` once a threshold is reached.
    fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= self.probe.success_threshold.max(1)).then_some(true)
        } else {
            self.failures += 1;
            self.successes = 0;
            let threshold = if self.probe.failure_threshold > 0 {
                self.probe.failure_threshold
            } else {
                3
            };
            (self.failures >= threshold).then_some(false)
        }
    }
}

/// What a probe needs to reach its container.
#[derive(Clone)]
pub struct Target {
    /// The runtime, for exec probes.
    pub runtime: Arc<dyn Runtime>,
    /// The container's runtime id.
    pub container_id: String,
    /// The container as the pod declares it (probes and named ports).
    pub spec: PodContainer,
    /// The pod's IP, for httpGet and tcpSocket probes.
    pub pod_ip: String,
}

/// Whether the container declares any probe.
pub fn has_probes(c: &PodContainer) -> bool {
    c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
}

/// The state before any probe has run: not ready while a readiness probe
/// exists, not started while a startup probe exists.
pub fn initial_state(c: &PodContainer) -> ProbeState {
    ProbeState {
        ready: c.readiness_probe.is_none(),
        started: c.startup_probe.is_none(),
        failed: false,
    }
}

/// Runs the container's probes until a liveness or startup failure (the
/// worker then restarts the container) or until aborted; `report` is
/// called on every change of state.
pub async fn run(target: Target, report: impl Fn(ProbeState)) {
    let mut state = initial_state(&target.spec);
    let start = Instant::now();
    let mut runners: Vec<Runner> = Vec::new();
    if let Some(p) = &target.spec.startup_probe {
        runners.push(Runner::new(Kind::Startup, (**p).clone(), start));
    } else {
        runners.extend(steady_runners(&target.spec, start));
    }
    loop {
        let Some(i) = (0..runners.len()).min_by_key(|i| runners[*i].next) else {
            // Nothing left to probe (a startup probe passed and there is no
            // other): stay, so the worker does not start this over.
            std::future::pending::<()>().await;
            return;
        };
        tokio::time::sleep_until(runners[i].next).await;
        let ok = check(&target, &runners[i].probe).await;
        let probe = match runners[i].kind {
            Kind::Startup => "startup",
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
        };
        crate::metrics::probe(probe, ok);
        let runner = &mut runners[i];
        runner.next = Instant::now() + runner.period();
        let before = state;
        match (runner.kind, runner.record(ok)) {
            (Kind::Readiness, Some(verdict)) => state.ready = verdict,
            (Kind::Liveness | Kind::Startup, Some(false)) => state.failed = true,
            (Kind::Startup, Some(true)) => {
                state.started = true;
                runners = steady_runners(&target.spec, Instant::now());
            }
            _ => {}
        }
        if state != before {
            report(state);
        }
        if state.failed {
            return;
        }
    }
}

fn steady_runners(spec: &PodContainer, from: Instant) -> Vec<Runner> {
    let mut runners = Vec::new();
    if let Some(p) = &spec.liveness_probe {
        runners.push(Runner::new(Kind::Liveness, (**p).clone(), from));
    }
    if let Some(p) = &spec.readiness_probe {
        runners.push(Runner::new(Kind::Readiness, (**p).clone(), from));
    }
    runners
}

/// A probe's port: a number, or the name of one of the container's ports.
pub(crate) fn port(spec: &PodContainer, value: Option<&skiff::wkt::Value>) -> Option<u16> {
    match value?.kind.as_ref()? {
        ValueKind::NumberValue(n) => u16::try_from(*n as i64).ok(),
        ValueKind::StringValue(s) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => spec
                .ports
                .iter()
                .find(|p| p.name == *s)
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
        _ => None,
    }
}

/// Runs one probe once: true when it passed.
async fn check(target: &Target, probe: &Probe) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1) as u64);
    if let Some(exec) = &probe.exec {
        return matches!(
            target.runtime.exec(&target.container_id, &exec.command, timeout).await,
            Ok(out) if out.exit_code == 0
        );
    }
    if let Some(http) = &probe.http_get {
        let host = if http.host.is_empty() {
            target.pod_ip.clone()
        } else {
            http.host.clone()
        };
        let Some(port) = port(&target.spec, http.port.as_ref()) else {
            return false;
        };
        let path = if http.path.is_empty() {
            "/".to_string()
        } else {
            http.path.clone()
        };
        let headers: String = http
            .http_headers
            .iter()
            .map(|h| format!("{}: {}\r\n", h.name, h.value))
            .collect();
        let tls = http.scheme == "HTTPS";
        return within(timeout, http_get(host, port, path, headers, tls)).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = if tcp.host.is_empty() {
            target.pod_ip.clone()
        } else {
            tcp.host.clone()
        };
        let Some(port) = port(&target.spec, tcp.port.as_ref()) else {
            return false;
        };
        return within(timeout, async move {
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .is_ok()
        })
        .await;
    }
    if let Some(grpc) = &probe.grpc {
        let url = format!("http://{}:{}", target.pod_ip, grpc.port);
        let service = grpc.service.clone().unwrap_or_default();
        return within(timeout, async move {
            let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url) else {
                return false;
            };
            let Ok(channel) = endpoint.connect().await else {
                return false;
            };
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest { service };
            matches!(client.check(request).await, Ok(r) if r.get_ref().status == 1)
        })
        .await;
    }
    false
}

/// `check` within the probe's timeout; a timeout is a failure.
async fn within(timeout: Duration, check: impl std::future::Future<Output = bool>) -> bool {
    tokio::time::timeout(timeout, check).await.unwrap_or(false)
}

/// An HTTP/1.1 GET whose status line says 2xx or 3xx (the kubelet's
/// rule), over TLS with `tls` (the server's certificate unchecked, as the
/// kubelet's HTTPS probes).
pub(crate) async fn http_get(
    host: String,
    port: u16,
    path: String,
    headers: String,
    tls: bool,
) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect((host.as_str(), port)).await else {
        return false;
    };
    if !tls {
        return exchange(stream, &host, port, &path, &headers).await;
    }
    match skiff_pki::tls::probe_tls(stream, &host).await {
        Ok(stream) => exchange(stream, &host, port, &path, &headers).await,
        Err(_) => false,
    }
}

/// Sends the GET on `stream` and judges the status line.
async fn exchange<S>(mut stream: S, host: &str, port: u16, path: &str, headers: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: skiff-probe/{}\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    matches!(code, Some(200..=399))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::ContainerPort;

    #[test]
    fn thresholds_decide_verdicts() {
        let probe = Probe {
            failure_threshold: 2,
            success_threshold: 2,
            ..Default::default()
        };
        let mut r = Runner::new(Kind::Readiness, probe, Instant::now());
        assert_eq!(r.record(true), None);
        assert_eq!(r.record(true), Some(true));
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(true), None, "a success resets the failures");
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(false), Some(false));
    }

    #[test]
    fn probes_run_every_period_seconds() {
        let every = |period_seconds| {
            let probe = Probe {
                period_seconds,
                ..Default::default()
            };
            Runner::new(Kind::Liveness, probe, Instant::now()).period()
        };
        assert_eq!(every(3), Duration::from_secs(3));
        assert_eq!(every(0), Duration::from_secs(10), "Kubernetes' default");
    }

    #[tokio::test]
    async fn the_scheme_chooses_tls_and_a_silent_server_fails_at_the_timeout() {
        // A plain HTTP server: HTTP passes, HTTPS finds no TLS there.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_port = plain.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = plain.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        // A server that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let probe = |port: u16, scheme: &str| Probe {
            http_get: Some(skiff::pb::core::v1::HttpGetAction {
                host: "127.0.0.1".into(),
                port: port_value(port),
                scheme: scheme.into(),
                ..Default::default()
            }),
            timeout_seconds: 1,
            ..Default::default()
        };
        let t = target(PodContainer::default());
        assert!(check(&t, &probe(plain_port, "HTTP")).await);
        assert!(!check(&t, &probe(plain_port, "HTTPS")).await);
        let started = Instant::now();
        assert!(!check(&t, &probe(silent_port, "HTTP")).await);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "gave up before timeoutSeconds"
        );
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let spec = PodContainer {
            ports: vec![ContainerPort {
                name: "http".into(),
                container_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        };
        let named = skiff::wkt::Value {
            kind: Some(ValueKind::StringValue("http".into())),
        };
        let number = skiff::wkt::Value {
            kind: Some(ValueKind::NumberValue(80.0)),
        };
        assert_eq!(port(&spec, Some(&named)), Some(8080));
        assert_eq!(port(&spec, Some(&number)), Some(80));
    }

    fn target(spec: PodContainer) -> Target {
        Target {
            runtime: Arc::new(skiff_runtime::FakeRuntime::default()),
            container_id: "c1".into(),
            spec,
            pod_ip: "127.0.0.1".into(),
        }
    }

    fn port_value(port: u16) -> Option<skiff::wkt::Value> {
        Some(skiff::wkt::Value {
            kind: Some(ValueKind::NumberValue(f64::from(port))),
        })
    }

    #[tokio::test]
    async fn http_probes_send_their_path_and_headers_to_their_host() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let ok = request.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n")
                    && request.contains("\r\nX-Probe: deep\r\n");
                let status = if ok {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let probe = |path: &str, header: &str| Probe {
            http_get: Some(skiff::pb::core::v1::HttpGetAction {
                path: path.into(),
                host: "127.0.0.1".into(),
                port: port_value(port),
                http_headers: vec![skiff::pb::core::v1::HttpHeader {
                    name: "X-Probe".into(),
                    value: header.into(),
                }],
                ..Default::default()
            }),
            timeout_seconds: 2,
            ..Default::default()
        };
        let t = target(PodContainer::default());
        assert!(check(&t, &probe("/healthz?deep=1", "deep")).await);
        assert!(!check(&t, &probe("/", "deep")).await, "the path is sent");
        assert!(
            !check(&t, &probe("/healthz?deep=1", "shallow")).await,
            "the header is sent"
        );
    }

    #[tokio::test]
    async fn tcp_probes_pass_while_something_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Probe {
            tcp_socket: Some(skiff::pb::core::v1::TcpSocketAction {
                port: port_value(port),
                host: "127.0.0.1".into(),
            }),
            timeout_seconds: 2,
            ..Default::default()
        };
        let t = target(PodContainer::default());
        assert!(check(&t, &probe).await);
        drop(listener);
        assert!(!check(&t, &probe).await);
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service_for_their_service() {
        use tonic_health::ServingStatus;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("db", ServingStatus::NotServing)
            .await;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let probe = |service: Option<&str>| Probe {
            grpc: Some(skiff::pb::core::v1::GrpcAction {
                port: i32::from(port),
                service: service.map(str::to_string),
            }),
            timeout_seconds: 2,
            ..Default::default()
        };
        let t = target(PodContainer::default());
        assert!(
            check(&t, &probe(None)).await,
            "the server as a whole serves"
        );
        assert!(!check(&t, &probe(Some("db"))).await, "db is not serving");
        assert!(!check(&t, &probe(Some("unknown"))).await, "no such service");
        reporter
            .set_service_status("db", ServingStatus::Serving)
            .await;
        assert!(check(&t, &probe(Some("db"))).await, "db serves now");
        server.abort();
        let _ = server.await;
        assert!(!check(&t, &probe(None)).await, "nothing listens");
    }

    #[tokio::test]
    async fn http_probes_judge_by_the_status_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert!(http_get("127.0.0.1".into(), port, "/".into(), String::new(), false).await);
        assert!(!http_get("127.0.0.1".into(), port, "/".into(), String::new(), false).await);
    }
}
