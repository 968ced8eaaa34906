//! The etcd store, through etcd-client.
//!
//! Skiff's revisions are etcd's: a key's `mod_revision` is the object's
//! resourceVersion. Conditional writes are single transactions comparing
//! `create_revision` (create) or `mod_revision` (update/delete), so two
//! writers racing on a key have exactly one winner.

use bytes::Bytes;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{
    Error, Event, EventKind, KeyValue, ListOptions, ListResult, Result, Store, WatchStream,
    prefix_end,
};

/// Events buffered per watch stream.
const WATCH_BUFFER: usize = 1024;

/// How long one etcd call may take (to its answer's headers: a watch's
/// stream is not cut; a unary call, its whole answer): a member that hangs
/// (stopped, or its link black-holed) turns into an error the API server
/// answers with, not a request that never returns. Lists are paged
/// (`ListOptions::limit`), so each call is small.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects per etcd range call when a list asks for all.
const RANGE_PAGE: usize = 2000;
/// How long a connection to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on connections with calls open (a watch, always), and
/// how long one may go unanswered: a watch on a hung member is found dead
/// and resumed elsewhere. Not while idle: etcd counts pings on a
/// connection without calls as abuse (`too_many_pings`) and closes it.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(10));

/// The options every client connects with: the timeouts above, and
/// requests refused at once (UNAVAILABLE, "no leader") by a member that
/// has lost its leader, instead of waiting for one.
fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEPALIVE.0, KEEPALIVE.1)
        .with_keep_alive_while_idle(false)
        .with_require_leader(true)
}

/// Every store's id, to key the per-thread client cache.
static NEXT_STORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Per-thread etcd clients, by store id. A client's connection task
    /// runs on the runtime that created it; a client per thread keeps each
    /// API arbiter's etcd traffic on its own thread instead of hopping to
    /// a shared connection on another one.
    static CLIENTS: std::cell::RefCell<std::collections::HashMap<u64, Client>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A store backed by an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    id: u64,
    endpoints: std::sync::Arc<[String]>,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://127.0.0.1:2379`, ...).
    ///
    /// # Errors
    /// When no endpoint answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let store = Self {
            id: NEXT_STORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            endpoints: endpoints.into(),
        };
        // Fail now, not on the first request, if nothing answers.
        store.current_revision().await?;
        Ok(store)
    }

    /// This thread's client, connected on first use.
    async fn client(&self) -> Result<Client> {
        if let Some(client) = CLIENTS.with(|c| c.borrow().get(&self.id).cloned()) {
            return Ok(client);
        }
        let client = Client::connect(&*self.endpoints, Some(connect_options()))
            .await
            .map_err(Error::Etcd)?;
        CLIENTS.with(|c| c.borrow_mut().insert(self.id, client.clone()));
        Ok(client)
    }

    /// Runs `op` on `key` if it exists (and, with `expected`, was last
    /// modified at that revision), in one transaction.
    async fn guarded(
        &self,
        key: &str,
        expected: Option<i64>,
        op: TxnOp,
    ) -> Result<etcd_client::TxnResponse> {
        let mut kv = self.client().await?.kv_client();
        let txn = etcd_client::Txn::new()
            .when(guard(key, expected))
            .and_then([op])
            .or_else([TxnOp::get(key, None)]);
        let resp = kv.txn(txn).await.map_err(Error::Etcd)?;
        if !resp.succeeded() {
            return Err(Self::missing_or_conflict(
                key,
                expected,
                resp.op_responses(),
            ));
        }
        Ok(resp)
    }

    /// Reads `key` inside a failed transaction to tell a missing key from a
    /// conflicting one.
    fn missing_or_conflict(
        key: &str,
        expected: Option<i64>,
        responses: Vec<TxnOpResponse>,
    ) -> Error {
        let current = responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        match (current, expected) {
            (Some(current), Some(expected)) => Error::Conflict {
                key: key.to_string(),
                expected,
                current,
            },
            _ => Error::NotFound {
                key: key.to_string(),
            },
        }
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// Maps etcd's "compacted" / "future revision" refusals to ours.
fn map_revision_error(err: etcd_client::Error, requested: i64) -> Error {
    if let etcd_client::Error::GRpcStatus(status) = &err {
        let message = status.message();
        if message.contains("compacted") {
            return Error::Compacted {
                requested,
                compacted: 0,
            };
        }
        if message.contains("future revision") {
            return Error::FutureRevision {
                requested,
                current: 0,
            };
        }
    }
    Error::Etcd(err)
}

/// The guard for a conditional write: the key exists, and with `expected`
/// it was last modified at exactly that revision.
fn guard(key: &str, expected: Option<i64>) -> Vec<Compare> {
    let exists = Compare::create_revision(key, CompareOp::Greater, 0);
    match expected {
        Some(rev) => vec![exists, Compare::mod_revision(key, CompareOp::Equal, rev)],
        None => vec![exists],
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.client().await?.kv_client();
        let resp = kv.get(key, None).await.map_err(Error::Etcd)?;
        Ok(resp.kvs().first().map(to_kv))
    }

    /// An unlimited list is read in pages of [`RANGE_PAGE`] at one
    /// revision (etcd keeps it): each call stays well inside
    /// [`REQUEST_TIMEOUT`] however many objects there are.
    async fn list(&self, options: ListOptions) -> Result<ListResult> {
        let mut kv = self.client().await?.kv_client();
        let mut start = match &options.start_after {
            // The smallest key after `after`.
            Some(after) if after.as_str() >= options.prefix.as_str() => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => options.prefix.as_bytes().to_vec(),
        };
        let mut revision = options.revision;
        let mut kvs = Vec::new();
        loop {
            let want = if options.limit > 0 {
                options.limit - kvs.len()
            } else {
                RANGE_PAGE
            };
            let mut get = GetOptions::new()
                .with_range(prefix_end(&options.prefix))
                .with_limit(want as i64);
            if revision > 0 {
                get = get.with_revision(revision);
            }
            let resp = kv
                .get(start.clone(), Some(get))
                .await
                .map_err(|e| map_revision_error(e, revision))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            kvs.extend(resp.kvs().iter().map(to_kv));
            let full = options.limit > 0 && kvs.len() >= options.limit;
            if !resp.more() || full {
                return Ok(ListResult {
                    kvs,
                    revision,
                    more: resp.more(),
                });
            }
            let Some(last) = resp.kvs().last() else {
                return Ok(ListResult {
                    kvs,
                    revision,
                    more: false,
                });
            };
            start = last.key().to_vec();
            start.push(0);
        }
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        let mut kv = self.client().await?.kv_client();
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let resp = kv.txn(txn).await.map_err(Error::Etcd)?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<i64>) -> Result<i64> {
        let resp = self
            .guarded(key, expected, TxnOp::put(key, value.to_vec(), None))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        let delete = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let resp = self.guarded(key, expected, delete).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(to_kv),
                _ => None,
            })
            .ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })?;
        Ok((revision, prev))
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        let mut options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_prev_key()
            .with_progress_notify();
        if start_revision > 0 {
            options = options.with_start_revision(start_revision);
        }
        let mut client = self.client().await?.watch_client();
        let stream = client
            .watch(prefix, Some(options))
            .await
            .map_err(|e| map_revision_error(e, start_revision))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let (_sender, mut responses) = stream.split();
            // The watch's id, from etcd's answer to its creation.
            let mut id = None;
            // The last revision delivered or reported.
            let mut sent = (start_revision - 1).max(0);
            loop {
                let next = tokio::select! {
                    next = responses.next() => next,
                    () = tx.closed() => return,
                };
                let resp = match next {
                    Some(Ok(resp)) => resp,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(Error::Etcd(e))).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Err(Error::Closed)).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(Error::Compacted {
                            requested: start_revision,
                            compacted: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let reason = resp.cancel_reason().to_string();
                    let _ = tx
                        .send(Err(Error::Etcd(etcd_client::Error::WatchError(reason))))
                        .await;
                    return;
                }
                if resp.created() {
                    id = Some(resp.watch_id());
                }
                // No events, for this watch, and not the answer to its
                // creation (whose revision is the store's, not the
                // watch's): etcd's periodic progress report, which it sends
                // in order with the watch's events and only once the watch
                // has caught up. (Not asked for: etcd before 3.4.25 and
                // 3.5.8 answers a progress request at once, out of order
                // with events not yet sent; later ones hold it back or drop
                // it while a watch catches up.)
                if resp.events().is_empty() && !resp.created() {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    if id == Some(resp.watch_id()) && revision > sent {
                        sent = revision;
                        if tx.send(Ok(Event::progress(revision))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let kind = match event.event_type() {
                        EventType::Put => EventKind::Put,
                        EventType::Delete => EventKind::Delete,
                    };
                    let mut kv = to_kv(kv);
                    let prev = event.prev_kv().map(to_kv);
                    if kind == EventKind::Delete {
                        kv.create_revision = prev.as_ref().map_or(0, |p| p.create_revision);
                    }
                    sent = sent.max(kv.mod_revision);
                    if tx.send(Ok(Event { kind, kv, prev })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<i64> {
        let mut kv = self.client().await?.kv_client();
        // A one-key read of a key that never exists: cheap, and its header
        // carries the store's revision.
        let resp = kv
            .get(
                "\0skiff-revision-probe",
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(Error::Etcd)?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut kv = self.client().await?.kv_client();
        match kv.compact(revision, None).await {
            Ok(_) => Ok(()),
            // Already compacted past it: the goal is met.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => Ok(()),
            Err(e) => Err(map_revision_error(e, revision)),
        }
    }
}
