use std::sync::Arc;

use skiff::pb::api::v1::{DeleteRequest, GetRequest};
use skiff_store::{EmbeddedStore, Store};

use super::*;

/// The Endpoints' addresses, by port.
async fn endpoints(registry: &Registry) -> Vec<(i32, Vec<String>)> {
    let endpoints: Endpoints = registry
        .get(GetRequest {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
        })
        .await
        .unwrap();
    endpoints
        .subsets
        .iter()
        .map(|s| {
            (
                s.ports[0].port,
                s.addresses.iter().map(|a| a.ip.clone()).collect(),
            )
        })
        .collect()
}

async fn lease(store: &dyn Store, server: &str, age_secs: i64) {
    let key = format!("{LEASES}{server}");
    let value = Bytes::from((unix_now() - age_secs).to_string());
    if store.update(&key, value.clone(), None).await.is_err() {
        store.create(&key, value).await.unwrap();
    }
}

#[tokio::test]
async fn the_kubernetes_service_leads_to_the_servers_alive_and_comes_back_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, registry) = crate::registry::test_registry(&dir).await;
    let me: SocketAddr = "192.168.1.10:6443".parse().unwrap();
    registry.reconcile_master(me).await.unwrap();
    let service: Service = registry
        .get(GetRequest {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
        })
        .await
        .unwrap();
    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip, "10.96.0.1");
    assert_eq!(
        (spec.ports[0].name.as_str(), spec.ports[0].port),
        ("https", 443)
    );
    assert_eq!(
        endpoints(&registry).await,
        [(6443, vec!["192.168.1.10".into()])]
    );

    // Another server alive joins; one whose lease is old is dropped, and
    // its lease with it.
    lease(&*store, "192.168.1.11:6443", 2).await;
    lease(&*store, "192.168.1.12:6443", EXPIRY.as_secs() as i64 + 5).await;
    registry.reconcile_master(me).await.unwrap();
    assert_eq!(
        endpoints(&registry).await,
        [(6443, vec!["192.168.1.10".into(), "192.168.1.11".into()])]
    );
    assert!(
        store
            .get(&format!("{LEASES}192.168.1.12:6443"))
            .await
            .unwrap()
            .is_none()
    );

    // A deleted Service comes back at the next round.
    registry
        .delete::<Service>(DeleteRequest {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    registry.reconcile_master(me).await.unwrap();
    let back: Service = registry
        .get(GetRequest {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
        })
        .await
        .unwrap();
    assert_eq!(back.spec.unwrap().cluster_ip, "10.96.0.1");

    // A stopping server takes itself out.
    registry.release_master(me).await.unwrap();
    assert_eq!(
        endpoints(&registry).await,
        [(6443, vec!["192.168.1.11".into()])]
    );
}

/// The range's first address is never handed out at random: it is the
/// `kubernetes` Service's, which asks for it.
#[tokio::test]
async fn no_service_is_given_the_first_address_at_random() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("state.redb")).unwrap());
    // A /30 holds two addresses.
    let allocator =
        crate::allocator::Allocator::new(store, "10.0.0.0/30".parse().unwrap(), 30000..=30001);
    for _ in 0..20 {
        let ip = allocator.claim(None, "a").await.unwrap();
        assert_eq!(ip.to_string(), "10.0.0.2");
        allocator.release("10.0.0.2", "a").await;
    }
    let first = allocator.claim(Some("10.0.0.1".parse().unwrap()), "kubernetes");
    assert_eq!(first.await.unwrap().to_string(), "10.0.0.1");
}
