//! `skiff-bench scale`: a ReplicaSet scaled from 0 on hollow nodes.

// The shared helpers and imports of the bench binary.
use super::*;

pub(crate) async fn bench_scale(nodes: usize, replicas: i32) -> anyhow::Result<()> {
    use skiff::pb::apps::v1::{ReplicaSet, ReplicaSetSpec};
    let dir = tempfile::tempdir()?;
    let cluster = HollowCluster::start(dir.path(), &[], nodes).await?;
    let channel = cluster.channel.clone();
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "scale".to_string())]
            .into_iter()
            .collect();
    let (selector, template) = bench_template(labels);
    let rs = ReplicaSet {
        metadata: Some(ObjectMeta {
            name: "scale".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            selector: Some(selector),
            template: Some(template),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rs_api = skiff_client::Api::<ReplicaSet>::new(channel.clone());
    rs_api.create(rs).await?;
    // Let the controllers' caches sync before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod_api = skiff_client::Api::<Pod>::new(channel.clone());
    let revision = |list: &skiff::pb::core::v1::PodList| {
        list.metadata
            .as_ref()
            .and_then(|m| m.resource_version.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let before = revision(
        &pod_api
            .list(skiff::pb::api::v1::ListRequest {
                limit: 1,
                ..Default::default()
            })
            .await?,
    );
    eprintln!("scaling to {replicas} on {nodes} hollow nodes...");
    let start = Instant::now();
    // The controller writes the status meanwhile: read, change, retry.
    loop {
        let mut rs = rs_api.get("default", "scale").await?;
        if let Some(spec) = rs.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
        rs.status = None;
        match rs_api.update(rs).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => return Err(s.into()),
        }
    }
    let mut running = 0;
    while running < replicas as usize {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "only {running} pods Running after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        running = pod_api
            .list(skiff::pb::api::v1::ListRequest {
                namespace: "default".into(),
                label_selector: "app=scale".into(),
                field_selector: "status.phase=Running".into(),
                ..Default::default()
            })
            .await?
            .items
            .len();
    }
    let elapsed = start.elapsed();
    let after = revision(
        &pod_api
            .list(skiff::pb::api::v1::ListRequest {
                limit: 1,
                ..Default::default()
            })
            .await?,
    );
    let writes = after - before;
    drop(cluster);
    println!("{:<44} {:>12}", "measure", "value");
    println!(
        "{:<44} {:>12.2}",
        "seconds until all pods Running",
        elapsed.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.0}",
        "pods Running per second",
        f64::from(replicas) / elapsed.as_secs_f64()
    );
    println!("{:<44} {:>12}", "API writes meanwhile (revisions)", writes);
    println!(
        "{:<44} {:>12.0}",
        "API writes per second",
        writes as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "bench": "scale",
            "nodes": nodes,
            "replicas": replicas,
            "seconds_to_running": elapsed.as_secs_f64(),
            "api_writes": writes,
            "api_writes_per_sec": writes as f64 / elapsed.as_secs_f64(),
        })
    );
    Ok(())
}
