//! `Api<K>`: the uniform object API of one kind, over one gRPC channel.
//!
//! Every kind's service has the same methods, so one generic client serves
//! them all: the method path is `/<K::SERVICE>/<Method>`.

use std::marker::PhantomData;

use skiff::Resource;
use skiff::pb::api::v1::{DeleteRequest, GetRequest, ListRequest, WatchRequest};
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

/// A typed client for kind `K`. Cheap to clone (the channel is shared).
pub struct Api<K> {
    grpc: tonic::client::Grpc<Channel>,
    /// Ask the server to check writes without making them.
    dry_run: bool,
    /// `Bearer TOKEN` sent with every call (a service account's token),
    /// for clients without a certificate.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            grpc: self.grpc.clone(),
            dry_run: self.dry_run,
            bearer: self.bearer.clone(),
            _kind: PhantomData,
        }
    }
}

// === impl Api ===

impl<K: Resource> Api<K> {
    /// A client of kind `K` over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            dry_run: false,
            bearer: None,
            _kind: PhantomData,
        }
    }

    /// The same client, authenticating every call with `token` (sent as
    /// `authorization: Bearer TOKEN`); a token that is not printable
    /// ASCII is sent as none, and the server says Unauthenticated.
    pub fn with_bearer_token(mut self, token: &str) -> Self {
        self.bearer = format!("Bearer {token}").parse().ok();
        self
    }

    /// The metadata every call carries: the caller's trace, the dry run,
    /// the bearer token.
    fn request<Req>(&self, req: Req) -> tonic::Request<Req> {
        let mut request = tonic::Request::new(req);
        // The caller's trace goes on to the server (and, through the
        // objects it writes, to whoever acts on them).
        skiff_telemetry::inject(request.metadata_mut());
        if self.dry_run {
            request.metadata_mut().insert(
                "x-skiff-dry-run",
                tonic::metadata::MetadataValue::from_static("All"),
            );
        }
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    /// The same client, asking the server to check Create and Update
    /// without writing (server-side dry run).
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    fn path(method: &str) -> Result<http::uri::PathAndQuery, tonic::Status> {
        format!("/{}/{method}", K::SERVICE)
            .parse()
            .map_err(|e| tonic::Status::internal(format!("bad method path: {e}")))
    }

    async fn unary<Req, Resp>(&self, method: &str, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("API server unavailable: {e}")))?;
        let path = Self::path(method)?;
        let codec = ProstCodec::<Req, Resp>::default();
        Ok(grpc
            .unary(self.request(req), path, codec)
            .await?
            .into_inner())
    }

    /// Creates an object.
    ///
    /// # Errors
    /// The API's status (ALREADY_EXISTS, INVALID_ARGUMENT, ...).
    pub async fn create(&self, obj: K) -> Result<K, tonic::Status> {
        self.unary("Create", obj).await
    }

    /// Reads one object.
    ///
    /// # Errors
    /// NOT_FOUND and the like.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<K, tonic::Status> {
        let req = GetRequest {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.unary("Get", req).await
    }

    /// Lists one page.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad selectors, OUT_OF_RANGE for an expired
    /// continue token.
    pub async fn list(&self, req: ListRequest) -> Result<K::List, tonic::Status> {
        self.unary("List", req).await
    }

    /// Replaces an object (compare-and-swap on its resourceVersion).
    ///
    /// # Errors
    /// ABORTED when the object changed since it was read.
    pub async fn update(&self, obj: K) -> Result<K, tonic::Status> {
        self.unary("Update", obj).await
    }

    /// Replaces an object's status.
    ///
    /// # Errors
    /// As [`Api::update`].
    pub async fn update_status(&self, obj: K) -> Result<K, tonic::Status> {
        self.unary("UpdateStatus", obj).await
    }

    /// Deletes an object.
    ///
    /// # Errors
    /// NOT_FOUND, ABORTED on failed preconditions.
    pub async fn delete(&self, req: DeleteRequest) -> Result<K, tonic::Status> {
        self.unary("Delete", req).await
    }

    /// Binds an object (a pod) to a node: the binding subresource.
    ///
    /// # Errors
    /// ABORTED when it is bound already; UNIMPLEMENTED for kinds without
    /// a binding subresource.
    pub async fn bind(&self, binding: skiff::pb::core::v1::Binding) -> Result<K, tonic::Status> {
        self.unary("Bind", binding).await
    }

    /// Evicts an object (a pod): deletes it unless a disruption budget
    /// covering it allows no disruption now.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED while a budget refuses (retry later, as kubectl
    /// does every 5 s); NOT_FOUND; UNIMPLEMENTED for kinds without an
    /// eviction subresource.
    pub async fn evict(
        &self,
        eviction: skiff::pb::policy::v1::Eviction,
    ) -> Result<K, tonic::Status> {
        self.unary("Evict", eviction).await
    }

    /// Opens a watch stream.
    ///
    /// # Errors
    /// OUT_OF_RANGE when the version has expired (list again).
    pub async fn watch(
        &self,
        req: WatchRequest,
    ) -> Result<tonic::Streaming<K::WatchEvent>, tonic::Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("API server unavailable: {e}")))?;
        let path = Self::path("Watch")?;
        let codec = ProstCodec::<WatchRequest, K::WatchEvent>::default();
        Ok(grpc
            .server_streaming(self.request(req), path, codec)
            .await?
            .into_inner())
    }
}
