use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use super::*;

/// How long a test waits for what must happen at once.
const LIMIT: Duration = Duration::from_secs(10);

/// Waits (up to [`LIMIT`]) until `done` holds, sleeping between looks.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (up to [`LIMIT`]) until `done` holds, spinning: the next step
/// follows at once, while the watchers are still between steps of theirs.
fn spin_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// The watchers' results, failing the test if they do not all end in time.
fn ended(runtime: &tokio::runtime::Runtime, tasks: Vec<tokio::task::JoinHandle<u64>>) -> Vec<u64> {
    let all = async { tokio::time::timeout(LIMIT, futures::future::join_all(tasks)).await };
    let results = runtime
        .block_on(all)
        .expect("the watchers see the channel closed");
    results.into_iter().map(|r| r.unwrap()).collect()
}

/// A runtime on the test's thread (or the one that drives it).
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Spawns `count` watcher tasks on `runtime`, each receiving until its channel
/// closes, checking it sees 0, 1, 2, ... in order and counting in `seen`.
fn watchers(
    runtime: &tokio::runtime::Runtime,
    tx: &broadcast::Sender<u64>,
    channel: u64,
    count: usize,
    seen: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..count)
        .map(|_| {
            let mut live = Live::new(tx.subscribe(), channel);
            let seen = Arc::clone(seen);
            runtime.spawn(async move {
                let mut next = 0;
                loop {
                    match live.recv().await {
                        Ok(value) => {
                            assert_eq!(value, next, "every change, in order");
                            next += 1;
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(RecvError::Closed) => return next,
                        Err(RecvError::Lagged(n)) => panic!("lagged {n}"),
                    }
                }
            })
        })
        .collect()
}

#[test]
fn a_threads_watchers_wait_through_one_relay_and_each_sees_every_change() {
    let runtime = current_thread();
    let (tx, _) = broadcast::channel(16);
    let channel = channel_id();
    let seen = Arc::new(AtomicUsize::new(0));
    let tasks = watchers(&runtime, &tx, channel, 1000, &seen);
    // The runtime runs on a thread of its own; changes come from this one.
    let runtime = Arc::new(runtime);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let runtime = Arc::clone(&runtime);
        std::thread::spawn(move || runtime.block_on(stopped))
    };
    // The relay has started (the 8th watcher to wait started it); later
    // ones wait on it, or find the first change when they first look.
    wait_for("the relay", || tx.receiver_count() == 1001);
    for round in 0..50 {
        tx.send(round).unwrap();
        // Every waiting watcher is woken by each change: none is lost.
        wait_for("every watcher to see the change", || {
            seen.load(Ordering::SeqCst) == 1000 * (round as usize + 1)
        });
        assert_eq!(tx.receiver_count(), 1001, "still one relay");
    }
    // A closed channel (the cache restarted) wakes them to see it.
    drop(tx);
    assert!(ended(&runtime, tasks).iter().all(|&seen| seen == 50));
    stop.send(()).unwrap();
    driver.join().unwrap().unwrap();
}

#[test]
fn watchers_spread_over_threads_miss_no_change() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let (tx, _) = broadcast::channel(4);
    let channel = channel_id();
    let seen = Arc::new(AtomicUsize::new(0));
    let tasks = watchers(&runtime, &tx, channel, 64, &seen);
    // Changes as fast as they are taken: each lands while watchers are
    // between their look and their wait, or waiting, or woken.
    for round in 0..2000u64 {
        tx.send(round).unwrap();
        spin_until("every watcher to see the change", || {
            seen.load(Ordering::SeqCst) == 64 * (round as usize + 1)
        });
    }
    // 64 watchers on 4 threads: at least 8 waited on one of them.
    assert!(tx.receiver_count() > 64, "a relay on some worker");
    drop(tx);
    assert!(ended(&runtime, tasks).iter().all(|&seen| seen == 2000));
}

/// Waits (up to [`LIMIT`], yielding) until `tx`'s channel has `n`
/// receivers.
async fn receivers(tx: &broadcast::Sender<u64>, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tx.receiver_count() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} receivers",
            tx.receiver_count()
        );
        tokio::task::yield_now().await;
    }
}

/// `count` watchers of `tx` waiting on this runtime, each for one change.
async fn waiting(
    tx: &broadcast::Sender<u64>,
    channel: u64,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<u64, RecvError>>> {
    let tasks = (0..count)
        .map(|_| {
            let mut live = Live::new(tx.subscribe(), channel);
            tokio::spawn(async move { live.recv().await })
        })
        .collect();
    // Until every one has waited once (and so counted itself).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while counted(channel) != count {
        assert!(tokio::time::Instant::now() < deadline, "watchers waiting");
        tokio::task::yield_now().await;
    }
    tasks
}

/// The watchers of `channel` on this thread that hold its relay (those
/// that have waited here).
fn counted(channel: u64) -> usize {
    RELAYS.with(|relays| {
        let relays = relays.borrow();
        let relay = relays.get(&channel).and_then(Weak::upgrade);
        relay.map_or(0, |relay| Arc::strong_count(&relay) - 1)
    })
}

/// Each of `tasks` gets `value` (within [`LIMIT`]).
async fn each_gets(tasks: Vec<tokio::task::JoinHandle<Result<u64, RecvError>>>, value: u64) {
    for task in tasks {
        let got = tokio::time::timeout(LIMIT, task).await.expect("woken");
        assert_eq!(got.unwrap().unwrap(), value);
    }
}

#[test]
fn a_few_watchers_wait_on_the_channel_itself() {
    let runtime = current_thread();
    let (tx, _) = broadcast::channel(16);
    let channel = channel_id();
    runtime.block_on(async {
        let few = waiting(&tx, channel, RELAY_FROM - 1).await;
        assert_eq!(tx.receiver_count(), RELAY_FROM - 1, "no relay for a few");
        tx.send(7).unwrap();
        each_gets(few, 7).await;
    });
}

#[test]
fn a_relay_ends_once_its_watchers_are_gone() {
    let runtime = current_thread();
    let (tx, _) = broadcast::channel(16);
    let channel = channel_id();
    runtime.block_on(async {
        let many = waiting(&tx, channel, RELAY_FROM).await;
        receivers(&tx, RELAY_FROM + 1, "the watchers and their relay").await;
        for task in many {
            task.abort();
            let _ = task.await;
        }
        // The watchers are gone and the channel quiet: the relay ends now,
        // not at the next change.
        receivers(&tx, 0, "the relay outlived its watchers").await;
        // Watchers of the same channel later get a relay of their own.
        let many = waiting(&tx, channel, RELAY_FROM).await;
        receivers(&tx, RELAY_FROM + 1, "a new relay").await;
        tx.send(2).unwrap();
        each_gets(many, 2).await;
    });
}
