//! The identity services: `Certificates` (a node's join and any
//! certificate holder's renewal), `ServiceAccountTokens` (signed tokens
//! for service accounts, bound to a pod) and `Identity` (who am I, can I).
//! Each call has passed the authorization layer; the caller's identity
//! comes from the request's extensions.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::GetRequest;
use skiff::pb::authentication::v1::certificates_server::Certificates;
use skiff::pb::authentication::v1::identity_server::Identity;
use skiff::pb::authentication::v1::service_account_tokens_server::ServiceAccountTokens;
use skiff::pb::authentication::v1::{
    AccessReview, AccessReviewStatus, IssuedCertificate, JoinRequest, RenewRequest,
    RulesReviewRequest, RulesReviewStatus, TokenRequest, TokenRequestStatus, UserInfo,
    WhoAmIRequest,
};
use skiff::pb::core::v1::{Pod, ServiceAccount};
use skiff_pki::jwt::{Claims, KubernetesClaims, Ref};
use tonic::{Request, Response, Status};

use super::Security;
use super::attributes::Attributes;
use super::authn::{AUTHENTICATED, NODES};
use super::authz::{Authorizer, Decision};
use crate::registry::Registry;

/// A node whose lease is younger than this is alive (the node lifecycle
/// controller's default grace).
const LIVE_NODE_SECS: i64 = 40;

/// Token lifetimes: Kubernetes' default and bounds.
const TOKEN_DEFAULT_SECS: i64 = 3600;
const TOKEN_MIN_SECS: i64 = 600;
const TOKEN_MAX_SECS: i64 = 48 * 3600;

/// The caller, as the authentication layer found it.
fn caller<T>(request: &Request<T>) -> Result<UserInfo, Status> {
    request
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("Unauthorized: no identity"))
}

fn timestamp(at: time::OffsetDateTime) -> skiff::wkt::Timestamp {
    skiff::wkt::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: 0,
    }
}

/// The three services, sharing the API server's security material.
pub struct IdentityServices {
    /// Keys and the CA.
    pub security: Arc<Security>,
    /// Reads service accounts and pods.
    pub registry: Arc<Registry>,
    /// Answers `CanI`.
    pub authorizer: Arc<Authorizer>,
}

impl IdentityServices {
    fn issued(&self, cert: String, user: UserInfo) -> Result<IssuedCertificate, Status> {
        let parsed = skiff_pki::Parsed::from_pem(&cert)
            .ok_or_else(|| Status::internal("the issued certificate does not parse"))?;
        Ok(IssuedCertificate {
            certificate: cert,
            ca: self.security.ca.cert_pem.clone(),
            not_after: Some(timestamp(parsed.not_after)),
            user: Some(user),
        })
    }
}

#[tonic::async_trait]
impl Certificates for IdentityServices {
    async fn join(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<IssuedCertificate>, Status> {
        let who = caller(&request)?;
        let join = request.into_inner();
        skiff::validation::is_dns1123_subdomain(&join.node_name).map_err(|why| {
            Status::invalid_argument(format!(
                "nodeName: Invalid value: {:?}: {why}",
                join.node_name
            ))
        })?;
        // A token may not take over the name of a node that is alive (its
        // lease renewed lately): that would let it act as that node.
        let lease: Option<skiff::pb::coordination::v1::Lease> = self
            .registry
            .get(GetRequest {
                namespace: crate::registry::NODE_LEASE_NAMESPACE.into(),
                name: join.node_name.clone(),
            })
            .await
            .ok();
        let renewed = lease
            .and_then(|l| l.spec?.renew_time)
            .map_or(0, |t| t.seconds);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if now - renewed < LIVE_NODE_SECS {
            return Err(Status::already_exists(format!(
                "node {:?} is alive (its lease was renewed {}s ago): join under another name, or stop that node first",
                join.node_name,
                now - renewed
            )));
        }
        let user = format!("system:node:{}", join.node_name);
        let cert = self
            .security
            .ca
            .sign_csr(&join.csr, &user, &[NODES], self.security.node_cert_validity)
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        tracing::info!(node = %join.node_name, by = %who.username, "a node joined");
        self.issued(
            cert,
            UserInfo {
                username: user,
                groups: vec![NODES.into(), AUTHENTICATED.into()],
                uid: String::new(),
            },
        )
        .map(Response::new)
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<IssuedCertificate>, Status> {
        let who = caller(&request)?;
        let has_certificate = request
            .extensions()
            .get::<skiff_pki::tls::PeerInfo>()
            .and_then(skiff_pki::tls::PeerInfo::certificate)
            .is_some();
        if !has_certificate {
            return Err(Status::permission_denied(format!(
                "User {:?} authenticated by a token: only a certificate is renewed",
                who.username
            )));
        }
        let groups: Vec<&str> = who
            .groups
            .iter()
            .map(String::as_str)
            .filter(|g| *g != AUTHENTICATED)
            .collect();
        let validity = if groups.contains(&NODES) {
            self.security.node_cert_validity
        } else {
            skiff_pki::CERT_VALIDITY
        };
        let cert = self
            .security
            .ca
            .sign_csr(&request.get_ref().csr, &who.username, &groups, validity)
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        tracing::info!(user = %who.username, "certificate renewed");
        self.issued(cert, who).map(Response::new)
    }
}

#[tonic::async_trait]
impl ServiceAccountTokens for IdentityServices {
    async fn create(
        &self,
        request: Request<TokenRequest>,
    ) -> Result<Response<TokenRequest>, Status> {
        let mut token_request = request.into_inner();
        let meta = token_request.metadata.clone().unwrap_or_default();
        let namespace = if meta.namespace.is_empty() {
            "default".to_string()
        } else {
            meta.namespace.clone()
        };
        let account: ServiceAccount = self
            .registry
            .get(GetRequest {
                namespace: namespace.clone(),
                name: meta.name.clone(),
            })
            .await?;
        let account_uid = skiff::Resource::metadata(&account)
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        let spec = token_request.spec.clone().unwrap_or_default();
        let lifetime = spec.expiration_seconds.unwrap_or(TOKEN_DEFAULT_SECS);
        if !(TOKEN_MIN_SECS..=TOKEN_MAX_SECS).contains(&lifetime) {
            return Err(Status::invalid_argument(format!(
                "spec.expirationSeconds: Invalid value: {lifetime}: must be between {TOKEN_MIN_SECS} and {TOKEN_MAX_SECS}"
            )));
        }
        let pod = match spec.bound_object_ref.as_ref() {
            None => None,
            Some(bound) if bound.kind == "Pod" => {
                let pod: Pod = self
                    .registry
                    .get(GetRequest {
                        namespace: namespace.clone(),
                        name: bound.name.clone(),
                    })
                    .await?;
                let uid = skiff::Resource::metadata(&pod)
                    .map(|m| m.uid.clone())
                    .unwrap_or_default();
                if !bound.uid.is_empty() && bound.uid != uid {
                    return Err(Status::aborted(format!(
                        "spec.boundObjectRef.uid: pod {:?} has uid {uid:?}, not {:?}",
                        bound.name, bound.uid
                    )));
                }
                let runs_as = pod
                    .spec
                    .as_ref()
                    .map(|s| s.service_account_name.as_str())
                    .filter(|n| !n.is_empty())
                    .unwrap_or("default");
                if runs_as != meta.name {
                    return Err(Status::invalid_argument(format!(
                        "spec.boundObjectRef: pod {:?} runs as service account {runs_as:?}, not {:?}",
                        bound.name, meta.name
                    )));
                }
                Some(Ref {
                    name: bound.name.clone(),
                    uid,
                })
            }
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "spec.boundObjectRef.kind: Unsupported value: {:?}: supported values: \"Pod\"",
                    other.kind
                )));
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let expires = now + Duration::from_secs(lifetime.unsigned_abs());
        let mut audiences = spec.audiences.clone();
        if audiences.is_empty() {
            audiences.push(self.security.issuer.clone());
        }
        let claims = Claims {
            iss: self.security.issuer.clone(),
            sub: format!("system:serviceaccount:{namespace}:{}", meta.name),
            aud: audiences,
            exp: expires.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            kubernetes: KubernetesClaims {
                namespace,
                serviceaccount: Ref {
                    name: meta.name.clone(),
                    uid: account_uid,
                },
                pod,
            },
        };
        let token = self
            .security
            .token_key
            .sign(&claims)
            .map_err(|e| Status::internal(e.to_string()))?;
        token_request.api_version = "authentication.k8s.io/v1".into();
        token_request.kind = "TokenRequest".into();
        token_request.status = Some(TokenRequestStatus {
            token,
            expiration_timestamp: Some(timestamp(expires)),
        });
        Ok(Response::new(token_request))
    }
}

#[tonic::async_trait]
impl Identity for IdentityServices {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        caller(&request).map(Response::new)
    }

    async fn can_i(
        &self,
        request: Request<AccessReview>,
    ) -> Result<Response<AccessReviewStatus>, Status> {
        let who = caller(&request)?;
        let review = request.into_inner();
        let (resource, subresource) = match review.resource.split_once('/') {
            Some((r, s)) => (r.to_string(), s.to_string()),
            None => (review.resource.clone(), String::new()),
        };
        let attrs = Attributes {
            verb: review.verb,
            group: review.group,
            resource,
            subresource,
            namespace: review.namespace,
            name: review.name,
            ..Default::default()
        };
        let (allowed, reason) = match self.authorizer.authorize(&who, &attrs).await {
            Decision::Allow(why) => (true, why),
            Decision::Deny(why) => (false, why),
        };
        Ok(Response::new(AccessReviewStatus { allowed, reason }))
    }

    async fn rules_review(
        &self,
        request: Request<RulesReviewRequest>,
    ) -> Result<Response<RulesReviewStatus>, Status> {
        let who = caller(&request)?;
        let namespace = request.into_inner().namespace;
        Ok(Response::new(
            self.authorizer.rules_review(&who, &namespace),
        ))
    }
}
