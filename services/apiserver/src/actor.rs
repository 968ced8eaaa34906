//! The API actor: the one door to the registry.
//!
//! gRPC handlers never touch the registry themselves: they send a [`Call`]
//! to an [`ApiActor`] and await its reply. Several actors, each on its own
//! arbiter (thread), share the registry so that the API uses every core.
//! A panic while serving a call is caught and answered with INTERNAL, so
//! one bad request cannot take an actor down; the actors run under a
//! supervisor that restarts one that stops.
//!
//! Why an actor hop and not the registry called directly behind the same
//! panic catch (#19 asked for the faster of the two): measured with
//! `skiff-bench api` on the 2-core machine, the same commit built both
//! ways, runs alternated (creates/s, two runs each):
//!
//! | store, clients | actor (this) | direct call |
//! | --- | --- | --- |
//! | embedded, 1 | 1,041 / 1,133 | 530 / 527 |
//! | embedded, 16 | 5,157 / 6,491 | 1,828 / 1,870 |
//! | embedded, 128 | 9,593 / 11,640 | 1,715 / 1,881 |
//! | etcd, 16 | 1,898 / 2,400 | 1,534 / 1,735 |
//! | etcd, 128 | 1,989 / 2,296 | 1,907 / 1,856 |
//!
//! The typed message per operation stays.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture, Supervised, Supervisor};
use futures::FutureExt as _;
use skiff::pb::api::v1::{DeleteRequest, GetRequest, ListRequest, WatchRequest};
use skiff::pb::core::v1::Binding;
use skiff::pb::policy::v1::Eviction;
use tracing::Instrument as _;

use crate::error::{ApiError, Result};
use crate::registry::{Registry, WatchStream};
use crate::strategy::Strategy;

/// One API operation on kind `K`. Objects travel boxed: a Pod is 1.3 KB,
/// and every future between the connection and the registry would hold a
/// copy of it (moved again at each step; memmove was ~12 % of the API
/// threads' time on creates).
pub enum Op<K: Strategy> {
    /// Create an object.
    Create(Box<K>),
    /// Read an object.
    Get(GetRequest),
    /// List objects.
    List(ListRequest),
    /// Replace an object's spec and metadata.
    Update(Box<K>),
    /// Everything Create does but the write (`x-skiff-dry-run: All`).
    CreateDryRun(Box<K>),
    /// Everything Update does but the write.
    UpdateDryRun(Box<K>),
    /// Replace an object's status.
    UpdateStatus(Box<K>),
    /// Delete an object.
    Delete(DeleteRequest),
    /// Watch objects.
    Watch(WatchRequest),
    /// Bind an object to a node (pods).
    Bind(Box<Binding>),
    /// Evict an object (pods): delete it unless a disruption budget
    /// forbids it; with `true`, only check.
    Evict(Box<Eviction>, bool),
}

/// What an operation returns (the object boxed, as in [`Op`]).
pub enum Reply<K: Strategy> {
    /// One object.
    Object(Box<K>),
    /// A page of objects.
    List(K::List),
    /// A stream of changes.
    Watch(WatchStream<K>),
}

impl<K: Strategy> Reply<K> {
    fn boxed(obj: K) -> Self {
        Self::Object(Box::new(obj))
    }
}

/// A message to the API actor: an operation and the caller's tracing span
/// (spans do not follow `Addr::send` by themselves).
pub struct Call<K: Strategy> {
    /// What to do.
    pub op: Op<K>,
    /// The gRPC request's span.
    pub span: tracing::Span,
    /// Who writes, for field ownership (task-locals do not follow
    /// `Addr::send` either).
    pub writer: Option<crate::apply::Writer>,
}

impl<K: Strategy> Message for Call<K> {
    type Result = Result<Reply<K>>;
}

/// Serves calls against the shared registry.
pub struct ApiActor {
    registry: Arc<Registry>,
}

impl Actor for ApiActor {
    type Context = Context<Self>;
}

impl Supervised for ApiActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!("API actor restarting");
    }
}

impl<K: Strategy> Handler<Call<K>> for ApiActor {
    type Result = ResponseFuture<Result<Reply<K>>>;

    fn handle(&mut self, call: Call<K>, _ctx: &mut Self::Context) -> Self::Result {
        let registry = Arc::clone(&self.registry);
        let span = call.span;
        let writer = call.writer;
        // One call each for the creates and for the updates (dry run,
        // status only: flags of the same call).
        let dry_run = matches!(call.op, Op::CreateDryRun(_) | Op::UpdateDryRun(_));
        let status_only = matches!(call.op, Op::UpdateStatus(_));
        // Boxed here, once: the operation's future is large (a Pod's
        // create, ~8 KB; its update, ~10 KB), and each wrapper below would
        // otherwise move all of it again (the writer's scope holds it
        // twice over).
        let work: futures::future::BoxFuture<'static, Result<Reply<K>>> = Box::pin(async move {
            match call.op {
                Op::Create(obj) | Op::CreateDryRun(obj) => {
                    registry.create_with(*obj, dry_run).await.map(Reply::boxed)
                }
                Op::Update(obj) | Op::UpdateDryRun(obj) | Op::UpdateStatus(obj) => registry
                    .update_with(*obj, status_only, dry_run)
                    .await
                    .map(Reply::boxed),
                Op::Get(req) => registry.get(req).await.map(Reply::boxed),
                Op::List(req) => registry.list::<K>(req).await.map(Reply::List),
                Op::Delete(req) => registry.delete(req).await.map(Reply::boxed),
                Op::Watch(req) => registry.watch::<K>(req).await.map(Reply::Watch),
                Op::Bind(binding) => registry.bind::<K>(*binding).await.map(Reply::boxed),
                Op::Evict(eviction, dry_run) => registry
                    .evict::<K>(*eviction, dry_run)
                    .await
                    .map(Reply::boxed),
            }
        });
        let work = crate::apply::as_writer(writer, work);
        Box::pin(
            AssertUnwindSafe(work.instrument(span))
                .catch_unwind()
                .map(|outcome| {
                    outcome.unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(panic = %what, "API call panicked");
                        Err(ApiError::Internal(format!(
                            "the server failed serving this call: {what}"
                        )))
                    })
                }),
        )
    }
}

/// The API actors, one per arbiter (thread). Each arbiter also serves its
/// share of the gRPC connections (see `ApiServer::start`), so a call goes
/// from its connection to the actor on the same thread: no cross-thread
/// hop on the hot path.
pub struct ActorPool {
    actors: Vec<(Addr<ApiActor>, actix::ArbiterHandle)>,
    /// Keeps the arbiters' threads alive.
    _arbiters: Vec<actix::Arbiter>,
}

impl ActorPool {
    /// Starts `count` supervised actors, each on a new arbiter. Must run
    /// inside an actix `System`.
    pub fn start(registry: Arc<Registry>, count: usize) -> Self {
        let mut actors = Vec::new();
        let mut arbiters = Vec::new();
        for _ in 0..count.max(1) {
            let arbiter = actix::Arbiter::new();
            let registry = Arc::clone(&registry);
            let handle = arbiter.handle();
            let addr = Supervisor::start_in_arbiter(&handle, move |_| ApiActor { registry });
            actors.push((addr, handle));
            arbiters.push(arbiter);
        }
        Self {
            actors,
            _arbiters: arbiters,
        }
    }

    /// Whether every actor is alive (for the health service).
    pub fn healthy(&self) -> bool {
        self.actors.iter().all(|(addr, _)| addr.connected())
    }

    /// Number of actors (and arbiters).
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    /// Whether the pool is empty (never: `start` makes at least one).
    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    /// The handle of actor `i` and the arbiter it runs on.
    pub fn get(&self, i: usize) -> (ActorHandle, actix::ArbiterHandle) {
        let (addr, arbiter) = &self.actors[i % self.actors.len()];
        (ActorHandle { addr: addr.clone() }, arbiter.clone())
    }
}

/// A way to call one API actor.
#[derive(Clone)]
pub struct ActorHandle {
    addr: Addr<ApiActor>,
}

impl ActorHandle {
    /// Sends one operation to the actor and awaits its reply.
    ///
    /// # Errors
    /// The operation's own errors; UNAVAILABLE if the actor is gone.
    pub async fn call<K: Strategy>(&self, op: Op<K>) -> Result<Reply<K>> {
        let call = Call {
            op,
            span: tracing::Span::current(),
            writer: crate::apply::writer(),
        };
        self.addr
            .send(call)
            .await
            .map_err(|e| ApiError::Unavailable(format!("API actor unavailable: {e}")))?
    }
}
