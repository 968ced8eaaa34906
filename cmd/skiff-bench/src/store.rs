//! `skiff-bench store`: the embedded store alone, without the API server in
//! front: creates/s of Pod-sized values at each concurrency on the journal
//! and on a redb file (the engine of stores made before the journal),
//! beside raw etcd puts of the same bytes in the same run; then the
//! journal's recovery: the time to open a store that holds N MiB of
//! history (no compaction, so every change is replayed or indexed), from
//! the page cache and (as root) from disk.

// The shared helpers and imports of the bench binary.
use super::*;

use skiff_store::{EmbeddedStore, Store as _};

use crate::soak::dir_bytes;

/// Creates of `value` under fresh keys at `concurrency`.
async fn store_creates(
    store: EmbeddedStore,
    concurrency: usize,
    seconds: f64,
    value: bytes::Bytes,
) -> anyhow::Result<Figures> {
    let store = Arc::new(store);
    drive(concurrency, seconds, move |w, i| {
        let store = Arc::clone(&store);
        let value = value.clone();
        async move {
            let key = format!("/registry/pods/default/w{w}-{i}");
            store.create(&key, value).await.context("create")?;
            Ok(())
        }
    })
    .await
}

/// Writes dirty pages out and empties the kernel's page cache.
fn drop_caches() -> anyhow::Result<()> {
    let synced = std::process::Command::new("sync").status()?;
    anyhow::ensure!(synced.success(), "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("/proc/sys/vm/drop_caches")?;
    Ok(())
}

/// Opens the store at `path` once the last handle's writer has let it go:
/// the time of the open that succeeded.
async fn timed_open(path: &std::path::Path) -> anyhow::Result<(EmbeddedStore, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        match EmbeddedStore::open(path) {
            Ok(store) => return Ok((store, started.elapsed())),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) async fn bench_store(
    seconds: f64,
    levels: Vec<usize>,
    history_mib: u64,
) -> anyhow::Result<()> {
    let etcd = skiff_testkit::Etcd::start()?;
    let dir = tempfile::tempdir()?;
    // The bytes the API server stores for a bench Pod, as raw etcd writes.
    let value = bytes::Bytes::from(bench_pod("raw".into()).encode_to_vec());
    api::print_header();
    let mut rows = Vec::new();
    for &c in &levels {
        eprintln!("measuring concurrency {c} ({seconds}s each)...");
        let raw = api::raw_etcd(&etcd.endpoint, api::RawOp::Put, c, seconds).await?;
        let journal = EmbeddedStore::open(dir.path().join(format!("journal-{c}")))?;
        let journal = store_creates(journal, c, seconds, value.clone()).await?;
        let redb = EmbeddedStore::open_redb(dir.path().join(format!("redb-{c}.redb")))?;
        let redb = store_creates(redb, c, seconds, value.clone()).await?;
        api::print_rows(
            c,
            &raw,
            &[("raw etcd put", raw), ("journal", journal), ("redb", redb)],
        );
        rows.push(json!({
            "concurrency": c,
            "raw_etcd_puts_per_sec": raw.per_sec,
            "journal_creates_per_sec": journal.per_sec,
            "journal_p50_ms": journal.p50_ms,
            "journal_p99_ms": journal.p99_ms,
            "redb_creates_per_sec": redb.per_sec,
            "redb_p50_ms": redb.p50_ms,
            "redb_p99_ms": redb.p99_ms,
            "ratio_journal_vs_raw": journal.per_sec / raw.per_sec,
            "ratio_redb_vs_raw": redb.per_sec / raw.per_sec,
        }));
    }

    // Recovery: fill a journal with history (2 KB values, 128 writers,
    // 10,000 keys overwritten in turn), then time its reopening.
    let path = dir.path().join("recovery");
    let store = Arc::new(EmbeddedStore::open(&path)?);
    let big = bytes::Bytes::from(vec![b'x'; 2000]);
    let target = history_mib << 20;
    let started = Instant::now();
    let mut next_report = 0.1;
    while dir_bytes(&path) < target {
        let writes = (0..128).map(|w| {
            let store = Arc::clone(&store);
            let big = big.clone();
            tokio::spawn(async move {
                for i in 0..64 {
                    let key = format!("/registry/configmaps/default/k{}", (w * 64 + i) % 10_000);
                    match store.update(&key, big.clone(), None).await {
                        Err(skiff_store::Error::NotFound { .. }) => {
                            store.create(&key, big.clone()).await?;
                        }
                        other => {
                            other?;
                        }
                    }
                }
                anyhow::Ok(())
            })
        });
        for write in futures::future::join_all(writes).await {
            write??;
        }
        #[allow(clippy::cast_precision_loss)]
        let done = dir_bytes(&path) as f64 / target as f64;
        if done >= next_report {
            eprintln!(
                "filling the journal: {:.0}% ({} MiB, {:.0} s)",
                done * 100.0,
                dir_bytes(&path) >> 20,
                started.elapsed().as_secs_f64()
            );
            next_report += 0.1;
        }
    }
    let revision = store.current_revision().await?;
    let on_disk = dir_bytes(&path);
    drop(store);
    let (store, warm) = timed_open(&path).await?;
    anyhow::ensure!(
        store.current_revision().await? == revision,
        "revisions lost on reopen"
    );
    let oldest = store.oldest_kept(0).await?;
    drop(store);
    // Again with the files out of the page cache, as after a reboot (root
    // only: dropping the caches is the kernel's).
    let cold = match drop_caches() {
        Ok(()) => Some(timed_open(&path).await?.1),
        Err(e) => {
            eprintln!("not measured from a cold cache: {e}");
            None
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let mib = on_disk as f64 / 1048576.0;
    println!(
        "recovery: {mib:.0} MiB of log ({revision} revisions, history from {oldest}) opened in {:.2} s from the page cache ({:.0} MiB/s){}",
        warm.as_secs_f64(),
        mib / warm.as_secs_f64(),
        cold.map_or(String::new(), |cold| format!(
            ", {:.2} s from disk ({:.0} MiB/s)",
            cold.as_secs_f64(),
            mib / cold.as_secs_f64()
        ))
    );
    println!(
        "{}",
        json!({
            "bench": "store",
            "seconds": seconds,
            "results": rows,
            "recovery": {
                "log_mib": mib,
                "revisions": revision,
                "open_seconds_cached": warm.as_secs_f64(),
                "open_seconds_cold": cold.map(|c| c.as_secs_f64()),
            },
        })
    );
    Ok(())
}
