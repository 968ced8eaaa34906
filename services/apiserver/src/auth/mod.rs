//! Authentication and authorization, as one tower layer around every
//! route (no handler checks anything itself), and the identity services.
//!
//! Every call: who is calling ([`authn`]: a client certificate of the
//! cluster CA, a bootstrap token or a service account's token; nobody
//! gets UNAUTHENTICATED except on health checks), what it asks to do
//! ([`attributes`]: from the gRPC path and the first message's namespace
//! and name), and may it ([`authz`]: `system:masters`, the node rules,
//! then [`rbac`]; a refusal is PERMISSION_DENIED naming the identity and
//! the action). The caller's [`UserInfo`] then rides in the request's
//! extensions for the services that need it ([`services`]: join, renew,
//! service-account tokens, who am I, can I).
//!
//! A server started `--insecure` (plaintext) has no authentication: every
//! call is `system:unsecured` in `system:masters`, as Kubernetes' old
//! insecure port was.

pub mod attributes;
pub mod authn;
pub mod authz;
pub mod rbac;
pub mod services;

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use skiff::pb::authentication::v1::UserInfo;
use skiff_pki::Ca;
use skiff_pki::tls::{ClientCerts, PeerInfo, ServerTls, SwappableIdentity};
use tonic::Status;
use tonic::body::Body;

use attributes::Attributes;
use authn::{Authenticator, MASTERS};
use authz::{Authorizer, Decision};

/// The issuer (and audience) of service-account tokens, Kubernetes'.
pub const TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The API server's identity towards agents.
pub const APISERVER_USER: &str = "system:apiserver";

/// The API server's keys and certificates.
pub struct Security {
    /// What it serves, and the CA clients' certificates must chain to.
    pub tls: ServerTls,
    /// The cluster CA: signs nodes' certificates.
    pub ca: Arc<Ca>,
    /// Signs and checks service-account tokens.
    pub token_key: Arc<skiff_pki::jwt::TokenKey>,
    /// The tokens' issuer and accepted audience.
    pub issuer: String,
    /// How long node certificates from Join and Renew are valid.
    pub node_cert_validity: Duration,
    /// The certificate it presents to agents (logs, exec, stats).
    pub agent_client: SwappableIdentity,
    /// Where the files are (for renewals while running).
    dir: std::path::PathBuf,
    /// The names the serving certificate must carry.
    names: Vec<String>,
    /// When the certificate towards agents ends.
    agent_client_until: std::sync::Mutex<time::OffsetDateTime>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").finish_non_exhaustive()
    }
}

impl Security {
    /// Loads the CA, keys and certificates from `dir` (the server's
    /// `pki`), creating what is missing: the CA, a serving certificate
    /// for `names` (host names and addresses clients reach it by), the
    /// certificate it presents to agents, and the token signing key.
    ///
    /// # Errors
    /// Unreadable or malformed files, or a directory that cannot be
    /// written.
    pub fn load_or_create(dir: &Path, names: &[String]) -> skiff_pki::Result<Self> {
        let ca = Ca::load_or_create(dir)?;
        let serving = skiff_pki::serving_identity(&ca, dir, names)?;
        // Only held in memory: a fresh one at every start.
        let agent_client = ca.issue_client(APISERVER_USER, &[])?;
        let agent_client_until = skiff_pki::Parsed::from_pem(&agent_client.cert_pem)
            .map_or_else(time::OffsetDateTime::now_utc, |p| p.not_after);
        let token_key = skiff_pki::jwt::TokenKey::load_or_create(&dir.join("sa.key"))?;
        Ok(Self {
            tls: ServerTls::new(&serving, &ca.cert_pem, ClientCerts::Optional)?,
            agent_client: SwappableIdentity::new(Some(&agent_client))?,
            ca: Arc::new(ca),
            token_key: Arc::new(token_key),
            issuer: TOKEN_ISSUER.into(),
            node_cert_validity: skiff_pki::CERT_VALIDITY,
            dir: dir.to_path_buf(),
            names: names.to_vec(),
            agent_client_until: std::sync::Mutex::new(agent_client_until),
        })
    }

    /// Renews, while running, the serving certificate (rewritten in the
    /// pki dir) and the certificate towards agents when they are within
    /// [`skiff_pki::RENEW_BEFORE`] of their end; new connections get them.
    ///
    /// # Errors
    /// Issuing or writing failed (the old ones stay in use).
    pub fn renew_if_due(&self) -> skiff_pki::Result<()> {
        let serving = skiff_pki::serving_identity(&self.ca, &self.dir, &self.names)?;
        self.tls.identity().set(&serving)?;
        let soon = time::OffsetDateTime::now_utc() + skiff_pki::RENEW_BEFORE;
        if let Ok(mut until) = self.agent_client_until.lock()
            && *until < soon
        {
            let fresh = self.ca.issue_client(APISERVER_USER, &[])?;
            self.agent_client.set(&fresh)?;
            if let Some(parsed) = skiff_pki::Parsed::from_pem(&fresh.cert_pem) {
                *until = parsed.not_after;
            }
            tracing::info!("renewed the certificate the API server presents to agents");
        }
        Ok(())
    }
}

/// Authenticates and authorizes calls.
pub struct Checker {
    /// None on a plaintext server: every call is `system:unsecured`.
    authn: Option<Authenticator>,
    authz: Arc<Authorizer>,
}

impl Checker {
    /// A checker; without `authn`, every caller is `system:masters`.
    pub fn new(authn: Option<Authenticator>, authz: Arc<Authorizer>) -> Self {
        Self { authn, authz }
    }

    /// Who is calling: None for a caller with no credentials.
    ///
    /// # Errors
    /// Credentials that do not check out (UNAUTHENTICATED).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Option<UserInfo>, Status> {
        match &self.authn {
            None => Ok(Some(authn::unsecured())),
            Some(authn) => authn.authenticate(headers, peer).await,
        }
    }

    /// Whether `user` may do what `attrs` say: `system:masters` may do
    /// anything; everyone else as the node rules and RBAC say, without
    /// granting more than they hold (RBAC's escalation check).
    ///
    /// # Errors
    /// Kubernetes' wording of the refusal (`pods "web" is forbidden: User
    /// "u" cannot get resource "pods" ...`).
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        let decision = match self.authz.authorize(user, attrs).await {
            Decision::Allow(why) => match self.authz.no_escalation(user, attrs).await {
                Ok(()) => Decision::Allow(why),
                Err(why) => Decision::Deny(why),
            },
            denied => denied,
        };
        match decision {
            Decision::Allow(why) => {
                tracing::trace!(user = %user.username, %why, "allowed");
                Ok(())
            }
            Decision::Deny(why) => {
                tracing::info!(user = %user.username, verb = %attrs.verb, resource = %attrs.full_resource(), namespace = %attrs.namespace, name = %attrs.name, "forbidden");
                Err(attrs.forbidden(&user.username, &why))
            }
        }
    }

    /// Everything `user` may do in `namespace` (see
    /// [`Authorizer::rules_review`]).
    pub fn rules_review(
        &self,
        user: &UserInfo,
        namespace: &str,
    ) -> skiff::pb::authentication::v1::RulesReviewStatus {
        self.authz.rules_review(user, namespace)
    }

    /// RBAC's escalation check alone (for a write authorized before its
    /// object was known).
    ///
    /// # Errors
    /// What the writer would grant that it does not hold.
    pub async fn no_escalation(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        self.authz
            .no_escalation(user, attrs)
            .await
            .map_err(|why| attrs.forbidden(&user.username, &why))
    }

    /// Lets a gRPC `request` through with its caller in its extensions,
    /// or says why not.
    async fn check(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let path = request.uri().path().to_string();
        let user = self
            .authenticate(request.headers(), request.extensions().get::<PeerInfo>())
            .await?;
        let Some(user) = user else {
            if attributes::is_public(&path) {
                return Ok(request);
            }
            return Err(Status::unauthenticated(UNAUTHENTICATED));
        };
        // Masters may do anything: their bodies are not read.
        let mut request =
            if user.groups.iter().any(|g| g == MASTERS) || attributes::is_public(&path) {
                request
            } else {
                let (attrs, request) = attributes::read(request).await;
                if let Some(attrs) = attrs? {
                    self.authorize(&user, &attrs)
                        .await
                        .map_err(Status::permission_denied)?;
                }
                request
            };
        request.extensions_mut().insert(user);
        Ok(request)
    }

    /// Lets a Kubernetes HTTP API `request` through with its caller in its
    /// extensions (each request is authorized where its object is read:
    /// [`crate::http`]), or answers 401 with a Status.
    async fn check_http(
        &self,
        mut request: http::Request<Body>,
    ) -> Result<http::Request<Body>, http::Response<Body>> {
        let user = self
            .authenticate(request.headers(), request.extensions().get::<PeerInfo>())
            .await
            .map_err(|status| crate::http::failure(&crate::http::Failure::from_grpc(&status)))?;
        match user {
            Some(user) => {
                request.extensions_mut().insert(user);
                Ok(request)
            }
            None if crate::http::is_public(request.uri().path()) => Ok(request),
            None => Err(crate::http::failure(&crate::http::Failure::new(
                401,
                "Unauthorized",
                "Unauthorized",
            ))),
        }
    }
}

/// What a caller without credentials is told.
const UNAUTHENTICATED: &str = "Unauthorized: present a client certificate of the cluster CA (a client config from `skiff up`, or an agent's from `skiff agent --token`) or a token (authorization: Bearer TOKEN)";

/// The tower layer putting a [`Checker`] in front of every route.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Checker>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            checker: Arc::clone(&self.0),
            inner,
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Auth<S> {
    checker: Arc<Checker>,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Auth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let checker = Arc::clone(&self.checker);
        // By path, never by a header the caller chooses: a gRPC method's
        // path always gets the gRPC checks, whatever its content-type says.
        let kubernetes = crate::http::is_api_path(request.uri().path());
        Box::pin(async move {
            if kubernetes {
                return match checker.check_http(request).await {
                    Ok(request) => inner.call(request).await,
                    Err(response) => Ok(response),
                };
            }
            match checker.check(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Who the caller of a request is (set by the layer).
pub fn caller(extensions: &http::Extensions) -> Option<&UserInfo> {
    extensions.get::<UserInfo>()
}

/// Kubernetes' annotation that keeps a default role or binding as an
/// administrator edited it.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// Creates the default RBAC policy objects, and brings back to the default
/// the ones that drifted (a newer Skiff's policy) unless annotated
/// `rbac.authorization.kubernetes.io/autoupdate: "false"`, as Kubernetes'
/// bootstrap policy does.
///
/// # Errors
/// The store cannot be written.
pub async fn bootstrap_policy(registry: &crate::Registry) -> crate::error::Result<()> {
    let (roles, bindings) = rbac::default_policy();
    for role in roles {
        reconcile_default(registry, role, |current, wanted| {
            current.rules = wanted.rules.clone();
        })
        .await?;
    }
    for binding in bindings {
        reconcile_default(registry, binding, |current, wanted| {
            current.subjects = wanted.subjects.clone();
            current.role_ref = wanted.role_ref.clone();
        })
        .await?;
    }
    Ok(())
}

async fn reconcile_default<K: crate::strategy::Strategy>(
    registry: &crate::Registry,
    wanted: K,
    adopt: impl Fn(&mut K, &K),
) -> crate::error::Result<()> {
    let name = wanted.name().to_string();
    match registry
        .get::<K>(skiff::pb::api::v1::GetRequest {
            namespace: String::new(),
            name: name.clone(),
        })
        .await
    {
        Err(crate::ApiError::NotFound { .. }) => match registry.create(wanted).await {
            Ok(_) | Err(crate::ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
        Ok(current) => {
            let kept = current
                .metadata()
                .and_then(|m| m.annotations.get(AUTOUPDATE))
                .is_some_and(|v| v == "false");
            let mut next = current.clone();
            adopt(&mut next, &wanted);
            if kept || next == current {
                return Ok(());
            }
            tracing::info!(kind = K::KIND, %name, "default RBAC policy updated");
            match registry.update(next).await {
                Ok(_) | Err(crate::ApiError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_near_their_end_are_renewed_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string()];
        let security = Security::load_or_create(dir.path(), &names).unwrap();
        let served = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        // Nothing is due: nothing changes.
        security.renew_if_due().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("server.crt")).unwrap(),
            served
        );
        let before = *security.agent_client_until.lock().unwrap();
        // The agent-facing certificate "ends now": it is issued again.
        *security.agent_client_until.lock().unwrap() = time::OffsetDateTime::now_utc();
        security.renew_if_due().unwrap();
        assert!(*security.agent_client_until.lock().unwrap() >= before);
        // A serving certificate missing a name is issued again.
        let more = Security {
            names: vec!["127.0.0.1".to_string(), "10.9.8.7".to_string()],
            ..security
        };
        more.renew_if_due().unwrap();
        assert_ne!(
            std::fs::read_to_string(dir.path().join("server.crt")).unwrap(),
            served
        );
    }
}
