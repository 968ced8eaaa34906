//! The gRPC face of the API: one tonic service per kind, all generated
//! from `for_each_kind!`, each forwarding to the API actors.

use std::marker::PhantomData;

use skiff::pb::api::v1::{DeleteRequest, GetRequest, ListRequest, WatchRequest};
use skiff::pb::core::v1::Binding;
use skiff::pb::policy::v1::Eviction;
use tonic::{Request, Response, Status};

use crate::actor::{ActorHandle, Op, Reply};
use crate::registry::{Delivery, WatchStream};
use crate::strategy::Strategy;

pub use skiff::names::DRY_RUN_HEADER;

/// The gRPC metadata naming a write's field manager (Kubernetes'
/// `fieldManager`): its fields are recorded as that manager's.
pub const FIELD_MANAGER_HEADER: &str = "x-skiff-field-manager";

/// A watch as gRPC sends it: each change's shared encoding, copied.
pub type GrpcWatch<K> = futures::stream::Map<
    WatchStream<K>,
    fn(crate::error::Result<Delivery<K>>) -> Result<<K as skiff::Resource>::WatchEvent, Status>,
>;

fn grpc_event<K: Strategy>(
    event: crate::error::Result<Delivery<K>>,
) -> Result<K::WatchEvent, Status> {
    event.map(Delivery::into_event).map_err(Status::from)
}

/// Whether the request asks for a dry run.
fn dry_run<T>(req: &Request<T>) -> Result<bool, Status> {
    match req.metadata().get(DRY_RUN_HEADER).map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok("All")) => Ok(true),
        Some(other) => Err(Status::invalid_argument(format!(
            "{DRY_RUN_HEADER}: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

/// A dry run only Create and Update honour: elsewhere it is refused
/// rather than ignored (which would write).
fn refuse_dry_run<T>(req: &Request<T>, method: &str) -> Result<(), Status> {
    if req.metadata().contains_key(DRY_RUN_HEADER) {
        return Err(Status::invalid_argument(format!(
            "{DRY_RUN_HEADER}: a dry run is supported on Create and Update, not on {method}"
        )));
    }
    Ok(())
}

/// The service of kind `K`.
pub struct KindService<K> {
    actor: ActorHandle,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Strategy> KindService<K> {
    /// A service forwarding to `actor`.
    pub fn new(actor: ActorHandle) -> Self {
        Self {
            actor,
            _kind: PhantomData,
        }
    }

    async fn object(&self, op: Op<K>) -> Result<Response<K>, Status> {
        match self.actor.call(op).await? {
            Reply::Object(obj) => Ok(Response::new(*obj)),
            _ => Err(Status::internal("unexpected reply kind")),
        }
    }

    /// A write as the caller: the `x-skiff-field-manager` it names, else
    /// its user name (then its creates are not tracked: controllers create
    /// much and apply nothing).
    async fn written<T>(&self, req: &Request<T>, op: Op<K>) -> Result<Response<K>, Status> {
        let named = req
            .metadata()
            .get(FIELD_MANAGER_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|m| !m.is_empty())
            .map(|m| crate::apply::Writer {
                manager: m.chars().take(128).collect(),
                explicit: true,
            });
        let writer = named.or_else(|| {
            crate::auth::caller(req.extensions()).map(|user| crate::apply::Writer {
                manager: user.username.clone(),
                explicit: false,
            })
        });
        crate::apply::as_writer(writer, self.object(op)).await
    }

    async fn create(&self, req: Request<K>) -> Result<Response<K>, Status> {
        if dry_run(&req)? {
            return self
                .object(Op::CreateDryRun(Box::new(req.into_inner())))
                .await;
        }
        let (metadata, extensions, obj) = req.into_parts();
        let head = Request::from_parts(metadata, extensions, ());
        self.written(&head, Op::Create(Box::new(obj))).await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<K>, Status> {
        self.object(Op::Get(req.into_inner())).await
    }

    async fn update(&self, req: Request<K>) -> Result<Response<K>, Status> {
        if dry_run(&req)? {
            return self
                .object(Op::UpdateDryRun(Box::new(req.into_inner())))
                .await;
        }
        let (metadata, extensions, obj) = req.into_parts();
        let head = Request::from_parts(metadata, extensions, ());
        self.written(&head, Op::Update(Box::new(obj))).await
    }

    async fn update_status(&self, req: Request<K>) -> Result<Response<K>, Status> {
        refuse_dry_run(&req, "UpdateStatus")?;
        self.object(Op::UpdateStatus(Box::new(req.into_inner())))
            .await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<K>, Status> {
        refuse_dry_run(&req, "Delete")?;
        self.object(Op::Delete(req.into_inner())).await
    }

    async fn bind(&self, req: Request<Binding>) -> Result<Response<K>, Status> {
        refuse_dry_run(&req, "Bind")?;
        self.object(Op::Bind(Box::new(req.into_inner()))).await
    }

    async fn evict(&self, req: Request<Eviction>) -> Result<Response<K>, Status> {
        let eviction = req.into_inner();
        let dry_run = match eviction
            .delete_options
            .as_ref()
            .map(|o| o.dry_run.as_slice())
        {
            None | Some([]) => false,
            Some([all]) if all == "All" => true,
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "deleteOptions.dryRun: Unsupported value: {other:?}: supported values: \"All\""
                )));
            }
        };
        self.object(Op::Evict(Box::new(eviction), dry_run)).await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<K::List>, Status> {
        match self.actor.call(Op::<K>::List(req.into_inner())).await? {
            Reply::List(list) => Ok(Response::new(list)),
            _ => Err(Status::internal("unexpected reply kind")),
        }
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<GrpcWatch<K>>, Status> {
        use futures::StreamExt as _;
        match self.actor.call(Op::<K>::Watch(req.into_inner())).await? {
            Reply::Watch(stream) => Ok(Response::new(stream.map(grpc_event::<K> as fn(_) -> _))),
            _ => Err(Status::internal("unexpected reply kind")),
        }
    }
}

/// Implements a kind's generated service trait by delegating to
/// [`KindService`]; `status` kinds also get UpdateStatus, `pod` kinds
/// UpdateStatus, Bind and Evict.
macro_rules! kind_service {
    (pod $ty:path, $tr:path) => {
        kind_service!(@impl $ty, $tr, {
            async fn update_status(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                KindService::update_status(self, req).await
            }
            async fn bind(&self, req: Request<Binding>) -> Result<Response<$ty>, Status> {
                KindService::bind(self, req).await
            }
            async fn evict(&self, req: Request<Eviction>) -> Result<Response<$ty>, Status> {
                KindService::evict(self, req).await
            }
        });
    };
    (status $ty:path, $tr:path) => {
        kind_service!(@impl $ty, $tr, {
            async fn update_status(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                KindService::update_status(self, req).await
            }
        });
    };
    (plain $ty:path, $tr:path) => {
        kind_service!(@impl $ty, $tr, {});
    };
    (@impl $ty:path, $tr:path, { $($extra:tt)* }) => {
        #[tonic::async_trait]
        impl $tr for KindService<$ty> {
            async fn create(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                KindService::create(self, req).await
            }
            async fn get(&self, req: Request<GetRequest>) -> Result<Response<$ty>, Status> {
                KindService::get(self, req).await
            }
            async fn list(
                &self,
                req: Request<ListRequest>,
            ) -> Result<Response<<$ty as skiff::Resource>::List>, Status> {
                KindService::list(self, req).await
            }
            async fn update(&self, req: Request<$ty>) -> Result<Response<$ty>, Status> {
                KindService::update(self, req).await
            }
            async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<$ty>, Status> {
                KindService::delete(self, req).await
            }
            type WatchStream = GrpcWatch<$ty>;
            async fn watch(
                &self,
                req: Request<WatchRequest>,
            ) -> Result<Response<Self::WatchStream>, Status> {
                KindService::watch(self, req).await
            }
            $($extra)*
        }
    };
}

macro_rules! all_kinds {
    ($($st:ident $kind:ident, $ty:path, $tr:path, $srv:ty;)*) => {
        $( kind_service!($st $ty, $tr); )*

        /// Every kind's service, forwarding to `actor`.
        pub fn routes(actor: &ActorHandle) -> tonic::service::Routes {
            let mut routes = tonic::service::RoutesBuilder::default();
            $( routes.add_service(<$srv>::new(KindService::<$ty>::new(actor.clone()))); )*
            routes.routes()
        }

        /// Fully qualified names of every kind's service.
        pub const SERVICE_NAMES: &[&str] = &[$( <$ty as skiff::Resource>::SERVICE, )*];
    };
}

skiff::for_each_kind!(all_kinds);
