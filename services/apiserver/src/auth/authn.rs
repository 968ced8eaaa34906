//! Who is calling: a client certificate from the cluster CA (the common
//! name is the user, the organizations its groups), or a bearer token in
//! the `authorization` metadata — a bootstrap token (`ID.SECRET`, a
//! Secret `kube-system/bootstrap-token-ID` made by `skiff token create`)
//! or a service account's signed token. As in Kubernetes, a certificate
//! wins when both are given.

use std::sync::Arc;

use skiff::pb::api::v1::GetRequest;
use skiff::pb::authentication::v1::UserInfo;
use skiff::pb::core::v1::{Pod, Secret, ServiceAccount};
use skiff_pki::jwt::{Claims, TokenKey};
use skiff_pki::tls::PeerInfo;
use tonic::Status;

use crate::registry::Registry;

/// Every authenticated caller's group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group that may do anything.
pub const MASTERS: &str = "system:masters";
/// Nodes' group.
pub const NODES: &str = "system:nodes";
/// Bootstrap tokens' group.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// Where bootstrap tokens live.
pub const BOOTSTRAP_NAMESPACE: &str = "kube-system";
/// The Secret type of bootstrap tokens.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The user of a server started `--insecure` (every call, like
/// Kubernetes' old insecure port).
pub const UNSECURED: &str = "system:unsecured";

/// The identity every call gets on a plaintext (`--insecure`) server.
pub fn unsecured() -> UserInfo {
    UserInfo {
        username: UNSECURED.into(),
        groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        uid: String::new(),
    }
}

/// Finds callers' identities.
pub struct Authenticator {
    /// Reads bootstrap-token Secrets, service accounts and pods.
    pub registry: Arc<Registry>,
    /// Checks service-account tokens.
    pub token_key: Arc<TokenKey>,
    /// The `iss` of the tokens this server issues and the audience it
    /// accepts.
    pub issuer: String,
}

fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(format!("Unauthorized: {why}"))
}

/// `ID.SECRET` with a 6- and a 16-character [a-z0-9] part.
fn bootstrap_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Authenticator {
    /// The caller of a request with `headers` on the connection `peer`;
    /// None when it presents no credential.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a token that is malformed, unknown, expired or
    /// no longer backed by its service account or pod.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Option<UserInfo>, Status> {
        if let Some(cert) = peer.and_then(PeerInfo::certificate) {
            let mut groups = cert.organizations;
            groups.push(AUTHENTICATED.into());
            return Ok(Some(UserInfo {
                username: cert.common_name,
                groups,
                uid: String::new(),
            }));
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                unauthenticated("the authorization metadata must be \"Bearer TOKEN\"")
            })?;
        match bootstrap_parts(token) {
            Some((id, secret)) => self.bootstrap(id, secret).await.map(Some),
            None => self.service_account(token).await.map(Some),
        }
    }

    async fn bootstrap(&self, id: &str, secret: &str) -> Result<UserInfo, Status> {
        let name = format!("bootstrap-token-{id}");
        let unknown =
            || unauthenticated(&format!("bootstrap token {id:?} is not known (deleted?)"));
        let stored: Secret = self
            .registry
            .get(GetRequest {
                namespace: BOOTSTRAP_NAMESPACE.into(),
                name,
            })
            .await
            .map_err(|_| unknown())?;
        let field = |key: &str| {
            stored
                .data
                .get(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        if stored.r#type != BOOTSTRAP_TOKEN_TYPE
            || field("token-id") != id
            || !same_secret(field("token-secret").as_bytes(), secret.as_bytes())
        {
            return Err(unknown());
        }
        if field("usage-bootstrap-authentication") != "true" {
            return Err(unauthenticated(&format!(
                "bootstrap token {id:?} is not for authentication"
            )));
        }
        let expiration = field("expiration");
        if !expiration.is_empty() {
            let at = time::OffsetDateTime::parse(
                &expiration,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|_| unknown())?;
            if at <= time::OffsetDateTime::now_utc() {
                return Err(unauthenticated(&format!(
                    "bootstrap token {id:?} expired at {expiration}"
                )));
            }
        }
        let mut groups = vec![BOOTSTRAPPERS.to_string()];
        groups.extend(
            field("auth-extra-groups")
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_string),
        );
        groups.push(AUTHENTICATED.into());
        Ok(UserInfo {
            username: format!("system:bootstrap:{id}"),
            groups,
            uid: id.to_string(),
        })
    }

    /// Checks a service account token's signature, times, audience, and
    /// that its service account (and pod) still exist with the same uid.
    async fn service_account(&self, token: &str) -> Result<UserInfo, Status> {
        let claims: Claims = self
            .token_key
            .verify(token, now_secs())
            .map_err(|e| unauthenticated(&e.to_string()))?;
        if claims.iss != self.issuer || !claims.aud.contains(&self.issuer) {
            return Err(unauthenticated(
                "the token was issued by or for someone else",
            ));
        }
        let k = &claims.kubernetes;
        let account: ServiceAccount = self
            .registry
            .get(GetRequest {
                namespace: k.namespace.clone(),
                name: k.serviceaccount.name.clone(),
            })
            .await
            .map_err(|_| {
                unauthenticated(&format!(
                    "service account {}/{} is gone",
                    k.namespace, k.serviceaccount.name
                ))
            })?;
        if skiff::Resource::metadata(&account).map(|m| m.uid.as_str())
            != Some(k.serviceaccount.uid.as_str())
        {
            return Err(unauthenticated(&format!(
                "service account {}/{} was re-created since the token was issued",
                k.namespace, k.serviceaccount.name
            )));
        }
        if let Some(bound) = &k.pod {
            let pod: Option<Pod> = self
                .registry
                .get(GetRequest {
                    namespace: k.namespace.clone(),
                    name: bound.name.clone(),
                })
                .await
                .ok();
            // A deleted pod's tokens keep working through its grace
            // period's start only (Kubernetes allows 60 s).
            let deleted_long_ago = |m: &skiff::pb::meta::v1::ObjectMeta| {
                m.deletion_timestamp
                    .as_ref()
                    .is_some_and(|t| t.seconds + 60 < now_secs())
            };
            let same = pod
                .as_ref()
                .and_then(skiff::Resource::metadata)
                .is_some_and(|m| m.uid == bound.uid && !deleted_long_ago(m));
            if !same {
                return Err(unauthenticated(&format!(
                    "the token's pod {}/{} is gone",
                    k.namespace, bound.name
                )));
            }
        }
        Ok(UserInfo {
            username: claims.sub,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", k.namespace),
                AUTHENTICATED.into(),
            ],
            uid: k.serviceaccount.uid.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_have_kubeadms_shape() {
        assert_eq!(
            bootstrap_parts("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(bootstrap_parts("ABCDEF.0123456789abcdef"), None);
        assert_eq!(bootstrap_parts("abcdef.0123456789abcde"), None);
        assert_eq!(bootstrap_parts("eyJhbGciOiJFUzI1NiJ9.e30.sig"), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
