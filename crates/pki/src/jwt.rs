//! Service-account tokens: JSON Web Tokens (RFC 7519) signed with ES256
//! (ECDSA P-256, SHA-256) by the API server's `sa.key`, with Kubernetes'
//! claims, so a token read from a pod looks like one from Kubernetes.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};

use crate::ca::{read_optional, write_atomic};
use crate::{Error, Result};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 60;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A service account (or pod) a token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    /// Its name.
    pub name: String,
    /// Its uid: a token outlives no object re-created under the name.
    pub uid: String,
}

/// Kubernetes' private claims (`kubernetes.io`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: Ref,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued it.
    pub iss: String,
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub sub: String,
    /// Who it is for.
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not valid before.
    pub nbf: i64,
    /// The service account (and pod) it stands for.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    typ: String,
}

/// The key that signs and checks service-account tokens.
pub struct TokenKey {
    pair: EcdsaKeyPair,
    /// Names the key in tokens' headers (its public key's pin), so keys
    /// can be told apart after a change.
    key_id: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Loads the key at `path` (PKCS#8 PEM), creating it first if there
    /// is none (readable by its owner only).
    ///
    /// # Errors
    /// An unreadable or malformed key; a file that cannot be written.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = match read_optional(path)? {
            Some(text) => match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
                Ok(PrivateKeyDer::Pkcs8(der)) => der.secret_pkcs8_der().to_vec(),
                _ => {
                    return Err(Error::Invalid(format!(
                        "{}: not a PKCS#8 private key",
                        path.display()
                    )));
                }
            },
            None => {
                let doc =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| Error::Token("generating the signing key failed".into()))?;
                write_atomic(path, &crate::ca::pem("PRIVATE KEY", doc.as_ref()), 0o600)?;
                doc.as_ref().to_vec()
            }
        };
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|e| {
                    Error::Invalid(format!("{}: not an ECDSA P-256 key: {e}", path.display()))
                })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let key_id = B64.encode(&digest.as_ref()[..16]);
        Ok(Self { pair, key_id })
    }

    /// Signs `claims`.
    ///
    /// # Errors
    /// Signing failed.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let header = Header {
            alg: "ES256".into(),
            kid: self.key_id.clone(),
            typ: "JWT".into(),
        };
        let signing_input = format!("{}.{}", part(&header)?, part(claims)?);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| Error::Token("signing failed".into()))?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }

    /// Checks `token`'s signature and times (at `now`, seconds since the
    /// epoch) and returns its claims.
    ///
    /// # Errors
    /// Malformed, signed by another key or algorithm, expired or not yet
    /// valid (the message says which).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims> {
        let bad = |why: &str| Error::Token(why.to_string());
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a JWT (three base64url parts)"));
        };
        let decoded = |part: &str| B64.decode(part).map_err(|_| bad("bad base64url"));
        let head: Header =
            serde_json::from_slice(&decoded(header)?).map_err(|_| bad("bad header"))?;
        if head.alg != "ES256" {
            return Err(bad("not signed with ES256"));
        }
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        );
        public
            .verify(format!("{header}.{payload}").as_bytes(), &decoded(sig)?)
            .map_err(|_| bad("signature does not match the cluster's key"))?;
        let claims: Claims =
            serde_json::from_slice(&decoded(payload)?).map_err(|_| bad("bad claims"))?;
        if claims.exp + LEEWAY_SECS < now {
            return Err(bad("expired"));
        }
        if claims.nbf - LEEWAY_SECS > now {
            return Err(bad("not valid yet"));
        }
        Ok(claims)
    }
}

/// One base64url JSON part of a token.
fn part<T: Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_vec(value).map_err(|e| Error::Token(e.to_string()))?;
    Ok(B64.encode(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64, exp: i64) -> Claims {
        Claims {
            iss: "skiff".into(),
            sub: "system:serviceaccount:default:robot".into(),
            aud: vec!["skiff".into()],
            exp,
            iat: now,
            nbf: now,
            kubernetes: KubernetesClaims {
                namespace: "default".into(),
                serviceaccount: Ref {
                    name: "robot".into(),
                    uid: "u1".into(),
                },
                pod: Some(Ref {
                    name: "p".into(),
                    uid: "u2".into(),
                }),
            },
        }
    }

    #[test]
    fn a_token_verifies_with_its_key_and_only_while_valid() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::load_or_create(&dir.path().join("sa.key")).unwrap();
        let now = 1_800_000_000;
        let token = key.sign(&claims(now, now + 600)).unwrap();
        assert_eq!(key.verify(&token, now).unwrap(), claims(now, now + 600));
        // Reloaded from disk: the same key.
        let again = TokenKey::load_or_create(&dir.path().join("sa.key")).unwrap();
        assert!(again.verify(&token, now + 10).is_ok());
        let err = key.verify(&token, now + 600 + LEEWAY_SECS + 1).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let err = key.verify(&token, now - LEEWAY_SECS - 1).unwrap_err();
        assert!(err.to_string().contains("not valid yet"), "{err}");
    }

    #[test]
    fn another_key_or_a_changed_claim_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::load_or_create(&dir.path().join("a.key")).unwrap();
        let other = TokenKey::load_or_create(&dir.path().join("b.key")).unwrap();
        let now = 1_800_000_000;
        let token = key.sign(&claims(now, now + 600)).unwrap();
        let err = other.verify(&token, now).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        // Swap in claims naming someone else: the signature no longer fits.
        let mut forged = claims(now, now + 600);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert!(key.verify(&tampered, now).is_err());
        assert!(key.verify("not-a-token", now).is_err());
        // alg "none" is never accepted.
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none"}"#), parts[1]);
        let err = key.verify(&none, now).unwrap_err();
        assert!(err.to_string().contains("ES256"), "{err}");
    }
}
