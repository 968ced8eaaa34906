//! What a pod reads from the API besides itself: ConfigMaps, Secrets and
//! Services (for volumes and env) and projected service-account tokens,
//! renewed once 80 % of their life is gone as the kubelet does; and why a
//! pod's env or volumes could not be prepared ([`Error`], shown as
//! `CreateContainerConfigError`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::authentication::v1::service_account_tokens_client::ServiceAccountTokensClient;
use skiff::pb::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use skiff::pb::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccountTokenProjection,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::Api;

/// Why a pod's volumes could not be prepared: shown to the user as the
/// waiting reason `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A referenced ConfigMap or Secret (or key) is missing.
    #[error("{0}")]
    Missing(String),
    /// The volume type is not one this agent provides.
    #[error("volume {name:?}: {kind} volumes are not supported by the skiff agent")]
    Unsupported {
        /// The volume.
        name: String,
        /// Its type.
        kind: &'static str,
    },
    /// A claim has no volume yet: the pod waits.
    #[error("volume {name:?}: persistentvolumeclaim {claim:?} is not bound yet")]
    Unbound {
        /// The volume.
        name: String,
        /// The claim.
        claim: String,
    },
    /// A claim's volume cannot be used from this node.
    #[error("volume {name:?}: {problem}")]
    Claim {
        /// The volume.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A hostPath did not pass its type check.
    #[error("volume {name:?}: hostPath {path:?}: {problem}")]
    HostPath {
        /// The volume.
        name: String,
        /// The path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The API could not be asked.
    #[error("reading {what}: {status}")]
    Api {
        /// What was being read.
        what: String,
        /// What the API said.
        status: tonic::Status,
    },
    /// Writing to the node's disk failed.
    #[error("volume {name:?}: {source}")]
    Io {
        /// The volume.
        name: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// Reads ConfigMaps and Secrets for volumes and env.
#[derive(Clone)]
pub struct Sources {
    /// ConfigMaps.
    pub configmaps: Api<ConfigMap>,
    /// Secrets.
    pub secrets: Api<Secret>,
    /// Services, for the service environment variables.
    pub services: Api<skiff::pb::core::v1::Service>,
    /// Service-account tokens for projected volumes.
    pub tokens: Tokens,
    /// Claims, for persistentVolumeClaim volumes.
    pub claims: Api<PersistentVolumeClaim>,
    /// The volumes they are bound to.
    pub volumes: Api<PersistentVolume>,
}

/// Service-account tokens the pods' volumes hold, kept until due for
/// renewal.
#[derive(Clone)]
pub struct Tokens {
    client: ServiceAccountTokensClient<tonic::transport::Channel>,
    cache: Arc<Mutex<HashMap<TokenKey, Issued>>>,
}

/// Which token: (pod uid, audience, lifetime in seconds).
type TokenKey = (String, String, i64);
/// A token, when it was issued and its lifetime.
type Issued = (String, Instant, Duration);

/// Kubernetes' default lifetime of a projected token.
const TOKEN_SECS: i64 = 3600;
/// A token older than this is renewed whatever its lifetime.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Tokens {
    /// Tokens asked of the API over `channel`.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            client: ServiceAccountTokensClient::new(channel),
            cache: Arc::default(),
        }
    }

    /// The token `projection` asks for, for `pod`: the cached one while
    /// under 80 % of its life (and a day), else a new one bound to the pod.
    ///
    /// # Errors
    /// The API refused (no such service account, or tokens are not issued:
    /// a plaintext cluster).
    pub async fn get(
        &self,
        pod: &Pod,
        projection: &ServiceAccountTokenProjection,
    ) -> Result<String, Error> {
        let meta = pod.metadata.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let lifetime = projection.expiration_seconds.unwrap_or(TOKEN_SECS);
        let key = (meta.uid.clone(), projection.audience.clone(), lifetime);
        if let Ok(cache) = self.cache.lock()
            && let Some((token, issued, ttl)) = cache.get(&key)
            && issued.elapsed() < ttl.mul_f64(0.8).min(TOKEN_MAX_AGE)
        {
            return Ok(token.clone());
        }
        let account = if spec.service_account_name.is_empty() {
            "default".to_string()
        } else {
            spec.service_account_name.clone()
        };
        let request = TokenRequest {
            metadata: Some(ObjectMeta {
                name: account.clone(),
                namespace: meta.namespace.clone(),
                ..Default::default()
            }),
            spec: Some(TokenRequestSpec {
                audiences: if projection.audience.is_empty() {
                    Vec::new()
                } else {
                    vec![projection.audience.clone()]
                },
                expiration_seconds: Some(lifetime),
                bound_object_ref: Some(BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: meta.name.clone(),
                    uid: meta.uid.clone(),
                }),
            }),
            ..Default::default()
        };
        let issued = Instant::now();
        let token = self
            .client
            .clone()
            .create(request)
            .await
            .map_err(|status| Error::Api {
                what: format!("a token of service account {}/{account}", meta.namespace),
                status,
            })?
            .into_inner()
            .status
            .map(|s| s.token)
            .unwrap_or_default();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                key,
                (
                    token.clone(),
                    issued,
                    Duration::from_secs(lifetime.unsigned_abs()),
                ),
            );
        }
        Ok(token)
    }

    /// Drops the tokens of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(pod, _, _), _| pod != uid);
        }
    }
}

impl Sources {
    /// The Services of a namespace.
    ///
    /// # Errors
    /// The API could not be asked.
    pub async fn services(&self, ns: &str) -> Result<Vec<skiff::pb::core::v1::Service>, Error> {
        let list = self
            .services
            .list(skiff::pb::api::v1::ListRequest {
                namespace: ns.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| Error::Api {
                what: format!("services in {ns}"),
                status,
            })?;
        Ok(list.items)
    }

    /// One Service, None when there is none.
    ///
    /// # Errors
    /// The API could not be asked.
    pub async fn service(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<skiff::pb::core::v1::Service>, Error> {
        match self.services.get(ns, name).await {
            Ok(service) => Ok(Some(service)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Api {
                what: format!("service {ns}/{name}"),
                status,
            }),
        }
    }

    /// A ConfigMap's data, its binaryData too with `binary` (files have
    /// both; environment variables, as in Kubernetes, only `data`), or
    /// None when it does not exist.
    pub async fn configmap(
        &self,
        ns: &str,
        name: &str,
        binary: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        match self.configmaps.get(ns, name).await {
            Ok(cm) => {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                if binary {
                    data.extend(cm.binary_data.into_iter().map(|(k, v)| (k, v.to_vec())));
                }
                Ok(Some(data))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Api {
                what: format!("configmap {ns}/{name}"),
                status,
            }),
        }
    }

    /// A Secret's data, or None when it does not exist.
    pub async fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        match self.secrets.get(ns, name).await {
            Ok(s) => Ok(Some(
                s.data.into_iter().map(|(k, v)| (k, v.to_vec())).collect(),
            )),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Api {
                what: format!("secret {ns}/{name}"),
                status,
            }),
        }
    }
}
