use std::net::SocketAddr;
use std::time::Duration;

use super::server::{Pending, peer_key};
use super::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

struct Cluster {
    _dir: tempfile::TempDir,
    ca: crate::Ca,
    server: ServerTls,
    addr: SocketAddr,
    /// What each accepted connection said about its caller.
    peers: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<PeerInfo>>,
}

/// A TLS echo server with the CA's serving certificate for
/// 127.0.0.1, asking for `client_certs`.
async fn cluster(client_certs: ClientCerts) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::Ca::load_or_create(dir.path()).unwrap();
    let serving = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
    let server = ServerTls::new(&serving, &ca.cert_pem, client_certs).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, peers) = tokio::sync::mpsc::unbounded_channel();
    let accepting = server.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let accepted = accepting.accept(tcp).await;
            match accepted {
                Ok(mut conn) => {
                    let _ = tx.send(Ok(tonic::transport::server::Connected::connect_info(&conn)));
                    let mut buf = [0u8; 5];
                    if conn.read_exact(&mut buf).await.is_ok() {
                        let _ = conn.write_all(&buf).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    });
    Cluster {
        _dir: dir,
        ca,
        server,
        addr,
        peers,
    }
}

async fn echo(tls: &ClientTls, host: &str, addr: SocketAddr) -> std::io::Result<()> {
    let uri: http::Uri = format!("http://{}:{}", host, addr.port()).parse().unwrap();
    let mut connector = tls.connector(host).unwrap();
    let stream = tower::Service::call(&mut connector, uri).await?;
    let mut stream = stream.into_inner();
    stream.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello");
    Ok(())
}

#[tokio::test]
async fn a_probe_speaks_tls_to_a_server_of_any_ca() {
    // A CA the client knows nothing of, as a pod's own.
    let c = cluster(ClientCerts::Optional).await;
    let tcp = TcpStream::connect(c.addr).await.unwrap();
    let mut stream = probe_tls(tcp, "127.0.0.1").await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    // Plain TCP to it is no TLS server's answer.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = plain.accept().await.unwrap();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(probe_tls(tcp, "127.0.0.1").await.is_err());
}

#[tokio::test]
async fn the_server_learns_the_client_identity_and_rotation_takes_effect() {
    let mut c = cluster(ClientCerts::Optional).await;
    let first = c.ca.issue_client("admin", &["system:masters"]).unwrap();
    let tls = ClientTls::new(&c.ca.cert_pem, Some(&first), ServerCheck::Name).unwrap();
    echo(&tls, "127.0.0.1", c.addr).await.unwrap();
    let peer = c.peers.recv().await.unwrap().unwrap();
    assert_eq!(peer.certificate().unwrap().common_name, "admin");

    let second = c.ca.issue_client("someone-else", &[]).unwrap();
    tls.identity().set(&second).unwrap();
    echo(&tls, "127.0.0.1", c.addr).await.unwrap();
    let peer = c.peers.recv().await.unwrap().unwrap();
    assert_eq!(peer.certificate().unwrap().common_name, "someone-else");

    // No certificate is fine when optional: the server knows nobody.
    let anonymous = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
    echo(&anonymous, "127.0.0.1", c.addr).await.unwrap();
    assert!(c.peers.recv().await.unwrap().unwrap().certs.is_none());
}

#[tokio::test]
async fn a_certificate_of_another_ca_or_none_when_required_fails_the_handshake() {
    let mut c = cluster(ClientCerts::Required).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = crate::Ca::load_or_create(other_dir.path()).unwrap();
    let stranger = other.issue_client("admin", &["system:masters"]).unwrap();
    let tls = ClientTls::new(&c.ca.cert_pem, Some(&stranger), ServerCheck::Name).unwrap();
    let _ = echo(&tls, "127.0.0.1", c.addr).await;
    assert!(
        c.peers.recv().await.unwrap().is_err(),
        "another CA's client"
    );
    let anonymous = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
    let _ = echo(&anonymous, "127.0.0.1", c.addr).await;
    assert!(c.peers.recv().await.unwrap().is_err(), "no certificate");
}

#[tokio::test]
async fn a_server_is_checked_by_name_or_by_identity() {
    let c = cluster(ClientCerts::Optional).await;
    let tls = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
    // The serving certificate names 127.0.0.1, not localhost.
    let wrong = echo(&tls, "localhost", c.addr).await.unwrap_err();
    assert!(wrong.to_string().contains("not valid for name"), "{wrong}");

    // An agent's certificate names no host: checked by identity.
    let node =
        c.ca.issue_client_for(
            "system:node:n1",
            &["system:nodes"],
            CERT_VALIDITY_TEST,
            true,
        )
        .unwrap();
    c.server.identity().set(&node).unwrap();
    let by_name = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
    assert!(echo(&by_name, "127.0.0.1", c.addr).await.is_err());
    let right = ClientTls::new(
        &c.ca.cert_pem,
        None,
        ServerCheck::Identity("system:node:n1".into()),
    )
    .unwrap();
    echo(&right, "127.0.0.1", c.addr).await.unwrap();
    let other = ClientTls::new(
        &c.ca.cert_pem,
        None,
        ServerCheck::Identity("system:node:n2".into()),
    )
    .unwrap();
    let err = echo(&other, "127.0.0.1", c.addr).await.unwrap_err();
    assert!(err.to_string().contains("not \"system:node:n2\""), "{err}");
}

const CERT_VALIDITY_TEST: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_connection_ends_when_the_callers_certificate_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::Ca::load_or_create(dir.path()).unwrap();
    let serving = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
    let server = ServerTls::new(&serving, &ca.cert_pem, ClientCerts::Required).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = server.accept(tcp).await.unwrap();
        let mut buf = [0u8; 1];
        // Echo until the connection ends.
        while conn.read_exact(&mut buf).await.is_ok() {
            if conn.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let short = ca
        .issue_client_for("brief", &[], Duration::from_secs(2), false)
        .unwrap();
    let tls = ClientTls::new(&ca.cert_pem, Some(&short), ServerCheck::Name).unwrap();
    let mut connector = tls.connector("127.0.0.1").unwrap();
    let uri: http::Uri = format!("http://127.0.0.1:{}", addr.port()).parse().unwrap();
    let mut stream = tower::Service::call(&mut connector, uri)
        .await
        .unwrap()
        .into_inner();
    let mut buf = [0u8; 1];
    stream.write_all(b"a").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = stream.write_all(b"b").await;
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Err(_))),
        "the server closed the connection: {ended:?}"
    );
}

#[tokio::test]
async fn the_pinned_ca_is_learned_and_a_wrong_pin_is_refused() {
    let c = cluster(ClientCerts::Optional).await;
    let pin = crate::spki_hash(&c.ca.cert_pem).unwrap();
    let ca = fetch_pinned_ca("127.0.0.1", c.addr.port(), &pin)
        .await
        .unwrap();
    assert_eq!(crate::spki_hash(&ca).unwrap(), pin);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = fetch_pinned_ca("127.0.0.1", c.addr.port(), &wrong)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no CA certificate"), "{err}");
    let err = fetch_pinned_ca("127.0.0.1", c.addr.port(), "abc")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("64 hex digits"), "{err}");
}

#[test]
fn peers_count_by_ipv4_address_or_ipv6_prefix() {
    let key = |s: &str| peer_key(s.parse().unwrap());
    assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
    assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
    assert_eq!(key("::ffff:127.0.0.1"), key("127.0.0.1"));
    assert_ne!(key("127.0.0.1"), key("127.0.0.2"));
}

#[test]
fn unfinished_handshakes_past_the_bounds_close_the_oldest() {
    let mut pending = Pending::new(2, 3);
    let a = std::net::IpAddr::from([127, 0, 0, 1]);
    let b = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut closed = Vec::new();
    let mut add = |pending: &mut Pending, peer| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        closed.push(rx);
        pending.add(peer, tx)
    };
    let first = add(&mut pending, a);
    add(&mut pending, a);
    add(&mut pending, a);
    // The third from one address closed its first.
    assert!(!pending.all.contains_key(&first));
    assert_eq!(pending.by_peer[&a].len(), 2);
    add(&mut pending, b);
    add(&mut pending, b);
    // Four in all is over three: the oldest of all went.
    assert_eq!(pending.all.len(), 3);
    assert_eq!(pending.by_peer[&a].len(), 1);
    assert!(matches!(
        closed[0].try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed)
    ));
    assert!(matches!(
        closed[4].try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    ));
    // A finished handshake leaves no trace.
    let ids: Vec<u64> = pending.all.keys().copied().collect();
    for id in ids {
        pending.remove(id);
    }
    assert!(pending.by_peer.is_empty());
}
