//! The work queue controllers reconcile from.
//!
//! One slot per key: adding a queued key does nothing, a delayed add keeps
//! the earlier deadline, and a key is never handed to two workers at once
//! (an add while it is being processed is replayed when it is done).
//! Failures requeue with per-key exponential backoff, reset by `forget`.
//! Ready keys go out highest priority first (every key's is 0 unless
//! [`WorkQueue::set_priority`] says otherwise: the scheduler's pods), then
//! oldest first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// First retry delay after a failure.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// Longest retry delay.
const MAX_DELAY: Duration = Duration::from_secs(300);

struct Inner<T> {
    /// Keys ready to process, by priority (highest first), then oldest
    /// first.
    ready: BTreeMap<(Reverse<i32>, u64), T>,
    /// Keys whose priority is not 0.
    priorities: HashMap<T, i32>,
    /// The keys in `ready`.
    queued: HashSet<T>,
    /// Keys a worker holds now.
    processing: HashSet<T>,
    /// Keys added while being processed: requeued on `done`.
    dirty: HashSet<T>,
    /// Delayed keys by deadline (the sequence number breaks ties).
    delayed: BTreeMap<(Instant, u64), T>,
    /// Each delayed key's deadline.
    deadlines: HashMap<T, (Instant, u64)>,
    /// Consecutive failures per key.
    failures: HashMap<T, u32>,
    seq: u64,
    shut: bool,
}

/// A deduplicating, delaying, rate-limited work queue. Cheap to clone.
pub struct WorkQueue<T> {
    inner: Arc<Mutex<Inner<T>>>,
    notify: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            notify: Arc::clone(&self.notify),
        }
    }
}

impl<T: Hash + Eq + Clone> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone> Inner<T> {
    fn add(&mut self, key: T) -> bool {
        if let Some(deadline) = self.deadlines.remove(&key) {
            self.delayed.remove(&deadline);
        }
        if self.processing.contains(&key) {
            self.dirty.insert(key);
            false
        } else if self.queued.insert(key.clone()) {
            let priority = self.priorities.get(&key).copied().unwrap_or(0);
            self.seq += 1;
            self.ready.insert((Reverse(priority), self.seq), key);
            true
        } else {
            false
        }
    }

    /// Moves due delayed keys to `ready`; returns the next deadline.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(deadline, seq), _)) = self.delayed.first_key_value() {
            if deadline > now {
                return Some(deadline);
            }
            if let Some(key) = self.delayed.remove(&(deadline, seq)) {
                self.deadlines.remove(&key);
                self.add(key);
            }
        }
        None
    }
}

// === impl WorkQueue ===

impl<T: Hash + Eq + Clone> WorkQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                ready: BTreeMap::new(),
                priorities: HashMap::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                delayed: BTreeMap::new(),
                deadlines: HashMap::new(),
                failures: HashMap::new(),
                seq: 0,
                shut: false,
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A poisoned queue still holds consistent sets (no user code runs
        // under the lock).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` now.
    pub fn add(&self, key: T) {
        if self.lock().add(key) {
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`; if it is already waiting, the earlier
    /// deadline wins.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let deadline = Instant::now() + delay;
        let mut inner = self.lock();
        if inner.queued.contains(&key) {
            return;
        }
        if let Some(&(existing, seq)) = inner.deadlines.get(&key) {
            if existing <= deadline {
                return;
            }
            inner.delayed.remove(&(existing, seq));
        }
        inner.seq += 1;
        let slot = (deadline, inner.seq);
        inner.delayed.insert(slot, key.clone());
        inner.deadlines.insert(key, slot);
        drop(inner);
        // Wake a waiting worker so it sleeps until the new deadline.
        self.notify.notify_one();
    }

    /// Requeues `key` after its next backoff delay (5 ms doubling to 5 min).
    pub fn add_rate_limited(&self, key: T) {
        let failures = {
            let mut inner = self.lock();
            let n = inner.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = BASE_DELAY
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(MAX_DELAY);
        self.add_after(key, delay);
    }

    /// Sets the priority `key` is queued with from its next add on
    /// (higher goes first; 0, the default, also forgets it).
    pub fn set_priority(&self, key: &T, priority: i32) {
        let mut inner = self.lock();
        if priority == 0 {
            inner.priorities.remove(key);
        } else {
            inner.priorities.insert(key.clone(), priority);
        }
    }

    /// Clears `key`'s failure count (after a success).
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures of `key`.
    pub fn failures(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for the next key; None once the queue is shut down and empty.
    /// The caller must call [`WorkQueue::done`] with it.
    pub async fn next(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            let next_deadline = {
                let mut inner = self.lock();
                let next_deadline = inner.promote(Instant::now());
                if let Some((_, key)) = inner.ready.pop_first() {
                    inner.queued.remove(&key);
                    inner.processing.insert(key.clone());
                    if !inner.ready.is_empty() {
                        // More work: let another worker in.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                if inner.shut {
                    return None;
                }
                next_deadline
            };
            match next_deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &T) {
        let mut inner = self.lock();
        inner.processing.remove(key);
        if inner.dirty.remove(key) && inner.add(key.clone()) {
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// Keys ready now (for metrics and tests).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    /// Whether no key is ready now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys once the ready ones are drained.
    pub fn shut_down(&self) {
        self.lock().shut = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queued_key_is_queued_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priorities_go_first_then_the_oldest() {
        let q = WorkQueue::new();
        q.set_priority(&"urgent", 1000);
        q.set_priority(&"later", -5);
        q.add("later");
        q.add("first");
        q.add("second");
        q.add("urgent");
        // A delayed key keeps its priority when it becomes ready.
        q.set_priority(&"retried", 10);
        q.add_after("retried", Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut order = Vec::new();
        while let Some(k) = tokio::time::timeout(Duration::from_millis(1), q.next())
            .await
            .ok()
            .flatten()
        {
            order.push(k);
            q.done(&k);
        }
        assert_eq!(order, ["urgent", "retried", "first", "second", "later"]);
        // Back to 0: forgotten.
        q.set_priority(&"urgent", 0);
        q.add("plain");
        q.add("urgent");
        assert_eq!(q.next().await, Some("plain"));
    }

    #[tokio::test]
    async fn a_key_added_while_processing_comes_back_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        let k = q.next().await.unwrap();
        q.add("a");
        assert!(q.is_empty(), "never handed out twice at once");
        q.done(&k);
        assert_eq!(q.next().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_keeps_the_earlier_deadline() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(1));
        q.add_after("a", Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(q.next().await, Some("a"));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q = WorkQueue::new();
        for expected_ms in [5u64, 10, 20, 40] {
            q.add_rate_limited("k");
            let start = Instant::now();
            let k = q.next().await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_millis(expected_ms));
            q.done(&k);
        }
        assert_eq!(q.failures(&"k"), 4);
        q.forget(&"k");
        assert_eq!(q.failures(&"k"), 0);
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
