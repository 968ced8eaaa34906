//! TLS and client certificates end to end: an API server with the
//! cluster CA's serving certificate answers grpcurl and the Skiff client
//! holding a certificate from that CA (mTLS), and refuses at the
//! handshake a client without a certificate, with one from another CA,
//! or speaking plaintext.

use std::path::Path;
use std::process::Command;

use skiff::pb::core::v1::Pod;
use skiff_apiserver::StoreConfig;
use skiff_client::{Api, ClientTls};

/// grpcurl against `addr` over TLS trusting `ca`, with `identity` (cert,
/// key files) as its client certificate when given.
fn grpcurl(addr: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> (bool, String, String) {
    let mut command = Command::new(skiff_e2e::grpcurl_binary().unwrap());
    command.arg("-cacert").arg(ca);
    if let Some((cert, key)) = identity {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let out = command.arg(addr).arg("list").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_the_cluster_cas_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ca = skiff_pki::Ca::load_or_create(&dir.path().join("pki")).unwrap();
    let serving = skiff_pki::serving_identity(
        &ca,
        &dir.path().join("pki"),
        &["localhost".to_string(), "127.0.0.1".to_string()],
    )
    .unwrap();
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        StoreConfig::Embedded(dir.path().join("state.redb")),
    );
    config.actors = 2;
    config.tls = Some(skiff_apiserver::Tls {
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
        client_ca_pem: ca.cert_pem.clone(),
    });
    let server = skiff_apiserver::ApiServer::start(config).await.unwrap();
    let addr = server.addr.to_string();

    let admin = ca.issue_client("admin", &["system:masters"]).unwrap();
    let other_ca = skiff_pki::Ca::load_or_create(&dir.path().join("other")).unwrap();
    let stranger = other_ca.issue_client("admin", &["system:masters"]).unwrap();
    let ca_file = write(dir.path(), "ca.crt", &ca.cert_pem);
    let admin_files = (
        write(dir.path(), "admin.crt", &admin.cert_pem),
        write(dir.path(), "admin.key", &admin.key_pem),
    );
    let stranger_files = (
        write(dir.path(), "stranger.crt", &stranger.cert_pem),
        write(dir.path(), "stranger.key", &stranger.key_pem),
    );

    let grpc_addr = addr.clone();
    let (ca_path, admin_paths, stranger_paths) =
        (ca_file.clone(), admin_files.clone(), stranger_files.clone());
    let (with_admin, without, with_stranger) = tokio::task::spawn_blocking(move || {
        (
            grpcurl(&grpc_addr, &ca_path, Some((&admin_paths.0, &admin_paths.1))),
            grpcurl(&grpc_addr, &ca_path, None),
            grpcurl(
                &grpc_addr,
                &ca_path,
                Some((&stranger_paths.0, &stranger_paths.1)),
            ),
        )
    })
    .await
    .unwrap();
    assert!(
        with_admin.0,
        "grpcurl with the admin certificate: {}",
        with_admin.2
    );
    assert!(
        with_admin.1.contains("skiff.core.v1.Pods"),
        "{}",
        with_admin.1
    );
    assert!(
        !without.0,
        "no client certificate must be refused: {}",
        without.1
    );
    assert!(
        !with_stranger.0,
        "a certificate of another CA must be refused: {}",
        with_stranger.1
    );

    // The Skiff client with a certificate of the cluster CA.
    let url = format!("https://{addr}");
    let tls = ClientTls {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: admin.cert_pem.clone(),
        key_pem: admin.key_pem.clone(),
    };
    let pods = Api::<Pod>::new(skiff_client::connect_lazy_with(&url, Some(&tls)).unwrap());
    pods.list(Default::default())
        .await
        .expect("listing over mTLS");
    let stranger_tls = ClientTls {
        cert_pem: stranger.cert_pem.clone(),
        key_pem: stranger.key_pem.clone(),
        ..tls.clone()
    };
    let refused =
        Api::<Pod>::new(skiff_client::connect_lazy_with(&url, Some(&stranger_tls)).unwrap())
            .list(Default::default())
            .await
            .expect_err("a certificate of another CA");
    // Refused in the handshake: a transport error (the server's alert, or
    // the connection closed, whichever the client reads first), never an
    // answer.
    let transport = |s: &tonic::Status| {
        matches!(
            s.code(),
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable
        ) && format!("{s:?}").contains("transport")
    };
    assert!(transport(&refused), "{refused:?}");
    let plaintext = Api::<Pod>::new(skiff_client::connect_lazy(&format!("http://{addr}")).unwrap())
        .list(Default::default())
        .await
        .expect_err("plaintext to a TLS server");
    // Plaintext HTTP/2 against TLS: the server reads garbage and hangs up.
    assert!(
        transport(&plaintext) || format!("{plaintext:?}").contains("h2 protocol error"),
        "{plaintext:?}"
    );
    server.stop().await.unwrap();
}
