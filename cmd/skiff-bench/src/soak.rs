//! `skiff-bench soak`: churn for N minutes and watch whether memory, file
//! descriptors, the store and cycle times follow the live state or grow
//! with history.
//!
//! Each loop repeats one cycle: a namespace with a ConfigMap, a Service
//! and a Deployment of `replicas` pods on hollow nodes; wait until they are
//! ready, scale to half, roll the template, delete the namespace and wait
//! until it is gone. A sampler reads every component's resident memory,
//! open files and threads, and the store's size on disk.

// The shared helpers and imports of the bench binary.
use super::*;

use skiff::pb::apps::v1::{Deployment, DeploymentSpec};
use skiff::pb::core::v1::{Namespace, Service, ServicePort, ServiceSpec};

/// What the bench was asked for.
pub(crate) struct Soak {
    pub minutes: f64,
    pub nodes: usize,
    pub loops: usize,
    pub replicas: i32,
    pub sample_secs: u64,
}

/// One reading of every component.
#[derive(Clone, serde::Serialize)]
struct Sample {
    at_s: f64,
    components: Vec<Reading>,
    store_mib: f64,
    cycles: usize,
}

/// One component's reading.
#[derive(Clone, serde::Serialize)]
struct Reading {
    name: String,
    /// Resident memory, MiB...
    rss: f64,
    /// ...of it anonymous (heap, stacks; the rest is mostly code).
    anon: f64,
    fds: usize,
    threads: usize,
}

/// A cycle's outcome: how long it took, or why it failed.
type Cycle = Result<Duration, String>;

pub(crate) async fn bench_soak(soak: Soak) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Compaction often enough that a short soak sees several.
    let compaction = ((soak.minutes * 60.0 / 6.0) as u64).clamp(10, 300);
    let cluster = HollowCluster::start(
        dir.path(),
        &[format!("--compaction-interval={compaction}s")],
        soak.nodes,
    )
    .await?;
    let channel = cluster.channel.clone();
    let components = [
        ("server", cluster.server.process.pid()),
        ("scheduler", cluster.scheduler.process.pid()),
        ("controller-manager", cluster.controllers.pid()),
        ("hollow-nodes", cluster.hollow.pid()),
    ];
    eprintln!(
        "soak: {} loops for {} min on {} hollow nodes, compaction every {compaction} s",
        soak.loops, soak.minutes, soak.nodes
    );

    // Every component up (the scheduler and controller manager past their
    // start: they were only just spawned) and nothing churning yet.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let t0 = Instant::now();
    let before = sample(&components, dir.path(), t0, 0);
    print_sample(&before, true);

    let until = Instant::now() + Duration::from_secs_f64(soak.minutes * 60.0);
    let cycles = Arc::new(std::sync::Mutex::new(Vec::<(f64, Cycle)>::new()));
    let mut loops = Vec::new();
    for l in 0..soak.loops {
        let channel = channel.clone();
        let cycles = Arc::clone(&cycles);
        let replicas = soak.replicas;
        loops.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                let namespace = format!("soak-{l}-{n}");
                let began = Instant::now();
                let outcome = tokio::time::timeout(
                    Duration::from_secs(300),
                    cycle(&channel, &namespace, replicas),
                )
                .await
                .map_err(|_| "timed out after 300 s".to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")))
                .map(|()| began.elapsed());
                if let Err(e) = &outcome {
                    eprintln!("soak: cycle {namespace} failed: {e}");
                }
                cycles
                    .lock()
                    .expect("cycles")
                    .push((t0.elapsed().as_secs_f64(), outcome));
                n += 1;
            }
        }));
    }

    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(soak.sample_secs.max(1)));
    // The first tick is now: `before` is that reading.
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = cycles.lock().expect("cycles").len();
        samples.push(sample(&components, dir.path(), t0, done));
        print_sample(samples.last().expect("just pushed"), false);
        if Instant::now() >= until {
            break;
        }
    }
    for l in loops {
        l.await?;
    }
    // After the last cycle, once compaction has had its turn, and once
    // more after the next: the first keeps the last interval of the
    // churn's history (as kube-apiserver's does), the second lets go of
    // it in memory (on disk, a log segment reaching past the compacted
    // revision stays whole until a later one).
    let done = cycles.lock().expect("cycles").len();
    let mut rest = Vec::new();
    // (The second is at least 100 s on: the watch caches keep changes for
    // 75 s, trimmed every 25 s, whatever the compaction interval.)
    for wait in [compaction + 5, compaction.max(100)] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        rest.push(sample(&components, dir.path(), t0, done));
        print_sample(rest.last().expect("just pushed"), false);
    }
    let left = leftovers(&channel).await?;
    drop(cluster);

    report(
        &samples,
        &Rest {
            before,
            first: rest.remove(0),
            second: rest.remove(0),
        },
        &cycles.lock().expect("cycles"),
        &left,
    );
    Ok(())
}

/// One churn cycle in `namespace`.
async fn cycle(channel: &Channel, namespace: &str, replicas: i32) -> anyhow::Result<()> {
    let meta = |name: &str| ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    };
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "web".to_string())].into();
    skiff_client::Api::<Namespace>::new(channel.clone())
        .create(Namespace {
            metadata: Some(ObjectMeta {
                name: namespace.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    skiff_client::Api::<ConfigMap>::new(channel.clone())
        .create(ConfigMap {
            metadata: Some(meta("conf")),
            data: [("greeting".to_string(), "hello".to_string())].into(),
            ..Default::default()
        })
        .await?;
    skiff_client::Api::<Service>::new(channel.clone())
        .create(Service {
            metadata: Some(meta("web")),
            spec: Some(ServiceSpec {
                selector: labels.clone(),
                ports: vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let (selector, template) = bench_template(labels.clone());
    let deployments = skiff_client::Api::<Deployment>::new(channel.clone());
    deployments
        .create(Deployment {
            metadata: Some(meta("web")),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: Some(selector),
                template: Some(template),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    settled(&deployments, namespace, replicas).await?;
    change(&deployments, namespace, |spec| {
        spec.replicas = Some(replicas / 2)
    })
    .await?;
    settled(&deployments, namespace, replicas / 2).await?;
    change(&deployments, namespace, |spec| {
        if let Some(meta) = spec.template.as_mut().and_then(|t| t.metadata.as_mut()) {
            meta.annotations.insert("soak/rolled".into(), "true".into());
        }
    })
    .await?;
    settled(&deployments, namespace, replicas / 2).await?;
    let namespaces = skiff_client::Api::<Namespace>::new(channel.clone());
    namespaces
        .delete(skiff::pb::api::v1::DeleteRequest {
            name: namespace.into(),
            ..Default::default()
        })
        .await?;
    loop {
        match namespaces.get("", namespace).await {
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s.into()),
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Changes the Deployment's spec, retrying on conflicts.
async fn change(
    deployments: &skiff_client::Api<Deployment>,
    namespace: &str,
    edit: impl Fn(&mut DeploymentSpec),
) -> anyhow::Result<()> {
    loop {
        let mut d = deployments.get(namespace, "web").await?;
        if let Some(spec) = d.spec.as_mut() {
            edit(spec);
        }
        match deployments.update(d).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => return Err(s.into()),
        }
    }
}

/// Waits until the Deployment's latest spec is rolled out: `replicas`
/// pods, all updated and ready.
async fn settled(
    deployments: &skiff_client::Api<Deployment>,
    namespace: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    loop {
        let d = deployments.get(namespace, "web").await?;
        let generation = d.metadata.as_ref().map_or(0, |m| m.generation);
        if let Some(s) = d.status.as_ref()
            && s.observed_generation >= generation
            && s.replicas == replicas
            && s.updated_replicas == replicas
            && s.ready_replicas == replicas
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sample(
    components: &[(&str, u32)],
    data: &std::path::Path,
    t0: Instant,
    cycles: usize,
) -> Sample {
    let components = components
        .iter()
        .map(|(name, pid)| {
            let (rss, anon, _) = skiff_testkit::rss_split_bytes(*pid).unwrap_or_default();
            Reading {
                name: (*name).to_string(),
                rss: rss as f64 / 1048576.0,
                anon: anon as f64 / 1048576.0,
                fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
                threads: std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count),
            }
        })
        .collect();
    Sample {
        at_s: t0.elapsed().as_secs_f64(),
        components,
        store_mib: dir_bytes(data) as f64 / 1048576.0,
        cycles,
    }
}

/// The bytes of every file under `dir`.
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn print_sample(s: &Sample, header: bool) {
    if header {
        let mut line = format!("{:>7} {:>7} {:>9}", "min", "cycles", "store MiB");
        for c in &s.components {
            line += &format!(" {:>32}", format!("{} MiB(anon)/fds/thr", c.name));
        }
        println!("{line}");
    }
    let mut line = format!(
        "{:>7.1} {:>7} {:>9.1}",
        s.at_s / 60.0,
        s.cycles,
        s.store_mib
    );
    for c in &s.components {
        line += &format!(
            " {:>32}",
            format!("{:.1}({:.1})/{}/{}", c.rss, c.anon, c.fds, c.threads)
        );
    }
    println!("{line}");
}

/// Objects of any soak namespace still there (kind, count).
async fn leftovers(channel: &Channel) -> anyhow::Result<Vec<(&'static str, usize)>> {
    async fn count<K: skiff::Resource>(channel: &Channel) -> anyhow::Result<usize> {
        let list = skiff_client::Api::<K>::new(channel.clone())
            .list(Default::default())
            .await?;
        let (_, items) = K::list_parts(list);
        Ok(items
            .iter()
            .filter(|o| o.namespace().starts_with("soak-") || o.name().starts_with("soak-"))
            .count())
    }
    Ok(vec![
        ("Namespace", count::<Namespace>(channel).await?),
        ("Pod", count::<Pod>(channel).await?),
        (
            "ReplicaSet",
            count::<skiff::pb::apps::v1::ReplicaSet>(channel).await?,
        ),
        ("Deployment", count::<Deployment>(channel).await?),
        ("Service", count::<Service>(channel).await?),
        (
            "Endpoints",
            count::<skiff::pb::core::v1::Endpoints>(channel).await?,
        ),
        ("ConfigMap", count::<ConfigMap>(channel).await?),
    ])
}

/// Least-squares slope of `ys` over `xs`, per hour (xs in seconds).
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den * 3600.0 }
}

/// Two decimals, for the JSON line.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The readings outside the churn.
struct Rest {
    /// Before it started (the hollow nodes up).
    before: Sample,
    /// After it stopped and compaction ran once...
    first: Sample,
    /// ...and twice.
    second: Sample,
}

/// Slopes over the churn after its first third, and the readings at rest.
fn report(samples: &[Sample], rest: &Rest, cycles: &[(f64, Cycle)], left: &[(&str, usize)]) {
    // Warm-up: the first third of the run.
    let end = samples.last().map_or(0.0, |s| s.at_s);
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= end / 3.0).collect();
    let slope = |f: &dyn Fn(&Sample) -> f64| {
        slope_per_hour(&steady.iter().map(|s| (s.at_s, f(s))).collect::<Vec<_>>())
    };
    let times: Vec<f64> = cycles
        .iter()
        .filter_map(|(_, c)| c.as_ref().ok().map(Duration::as_secs_f64))
        .collect();
    let failed = cycles.iter().filter(|(_, c)| c.is_err()).count();
    let k = times.len().min(5);
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    let (first, last) = (mean(&times[..k]), mean(&times[times.len() - k..]));
    println!();
    println!("{:<56} {:>12}", "measure (after the first third)", "value");
    let mut figures = serde_json::Map::new();
    if let Some(s) = samples.first() {
        for (i, c) in s.components.iter().enumerate() {
            let name = &c.name;
            let rss = slope(&|s| s.components[i].rss);
            let fds = slope(&|s| s.components[i].fds as f64);
            let before_rss = rest.before.components[i].rss;
            let churn_rss = samples.last().map_or(0.0, |s| s.components[i].rss);
            let (rest_rss, rest2_rss) =
                (rest.first.components[i].rss, rest.second.components[i].rss);
            let anon = |s: &Sample| s.components[i].anon;
            let (before_anon, rest2_anon) = (anon(&rest.before), anon(&rest.second));
            println!("{:<56} {:>12.1}", format!("{name} RSS slope, MiB/h"), rss);
            println!("{:<56} {:>12.1}", format!("{name} fds slope, per h"), fds);
            println!(
                "{:<56} {:>24}",
                format!("{name} RSS before / churning / at rest ×1 ×2"),
                format!("{before_rss:.1} / {churn_rss:.1} / {rest_rss:.1} {rest2_rss:.1}")
            );
            figures.insert(format!("{name}_rss_slope_mib_per_h"), json!(round(rss)));
            figures.insert(format!("{name}_fds_slope_per_h"), json!(round(fds)));
            figures.insert(format!("{name}_rss_before_mib"), json!(round(before_rss)));
            figures.insert(format!("{name}_rss_churn_mib"), json!(round(churn_rss)));
            figures.insert(format!("{name}_rss_rest_mib"), json!(round(rest_rss)));
            figures.insert(format!("{name}_rss_rest2_mib"), json!(round(rest2_rss)));
            println!(
                "{:<56} {:>24}",
                format!("{name} anon before / at rest ×2, MiB"),
                format!("{before_anon:.1} / {rest2_anon:.1}")
            );
            figures.insert(format!("{name}_anon_before_mib"), json!(round(before_anon)));
            figures.insert(format!("{name}_anon_rest2_mib"), json!(round(rest2_anon)));
        }
    }
    let store = slope(&|s| s.store_mib);
    let store_end = rest.first.store_mib;
    let store_rest2 = rest.second.store_mib;
    println!("{:<56} {:>12.1}", "store size slope, MiB/h", store);
    println!(
        "{:<56} {:>12}",
        "store size at rest ×1 / ×2, MiB",
        format!("{store_end:.1} / {store_rest2:.1}")
    );
    println!(
        "{:<56} {:>12}",
        "cycles done / failed",
        format!("{} / {failed}", cycles.len())
    );
    println!("{:<56} {:>12.2}", "cycle seconds, first 5 (mean)", first);
    println!("{:<56} {:>12.2}", "cycle seconds, last 5 (mean)", last);
    let leftover: usize = left.iter().map(|(_, n)| n).sum();
    let detail: Vec<String> = left
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "{:<56} {:>12}",
        "objects left behind",
        if detail.is_empty() {
            "0".to_string()
        } else {
            detail.join(", ")
        }
    );
    figures.insert("bench".into(), json!("soak"));
    figures.insert("minutes".into(), json!(round(end / 60.0)));
    figures.insert("cycles".into(), json!(cycles.len()));
    figures.insert("failed_cycles".into(), json!(failed));
    figures.insert("cycle_first_s".into(), json!(round(first)));
    figures.insert("cycle_last_s".into(), json!(round(last)));
    figures.insert("store_slope_mib_per_h".into(), json!(round(store)));
    figures.insert("store_end_mib".into(), json!(round(store_end)));
    figures.insert("store_rest2_mib".into(), json!(round(store_rest2)));
    figures.insert("objects_left".into(), json!(leftover));
    println!("{}", serde_json::Value::Object(figures));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_rise_per_hour() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i) * 60.0, 5.0 + f64::from(i)))
            .collect();
        assert!((slope_per_hour(&line) - 60.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 3.0)).collect();
        assert_eq!(slope_per_hour(&flat), 0.0);
        assert_eq!(slope_per_hour(&[(1.0, 1.0)]), 0.0);
    }
}
