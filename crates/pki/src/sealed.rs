//! Secrets sealed with a passphrase, for keys that must travel through a
//! store several servers share (the cluster CA's key, the token signing
//! key): PBKDF2-HMAC-SHA256 (a fresh salt, 200,000 rounds) derives the key
//! of a ChaCha20-Poly1305 seal (a fresh nonce); the store only ever holds
//! the sealed bytes.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SecureRandom as _;

use crate::{Error, Result};

/// What every sealed value starts with (its format's version).
const MAGIC: &[u8] = b"skiff-sealed-v1\n";
const SALT: usize = 16;
const NONCE: usize = 12;
const ROUNDS: u32 = 200_000;

fn key(passphrase: &str, salt: &[u8]) -> Result<LessSafeKey> {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ROUNDS).expect("non-zero"),
        salt,
        passphrase.as_bytes(),
        &mut key,
    );
    UnboundKey::new(&CHACHA20_POLY1305, &key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Invalid("sealing key".into()))
}

/// Seals `plain` with `passphrase`, bound to `context` (where it is kept:
/// a value moved elsewhere does not open).
///
/// # Errors
/// No randomness.
pub fn seal(passphrase: &str, context: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    let mut salt = [0u8; SALT];
    let mut nonce = [0u8; NONCE];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| Error::Invalid("no randomness to seal with".into()))?;
    let mut sealed = plain.to_vec();
    key(passphrase, &salt)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from([MAGIC, context.as_bytes()].concat()),
            &mut sealed,
        )
        .map_err(|_| Error::Invalid("sealing".into()))?;
    Ok([MAGIC, &salt, &nonce, &sealed].concat())
}

/// Opens what [`seal`] sealed with `passphrase` for `context`.
///
/// # Errors
/// Another passphrase or context, or bytes that are not a sealed value
/// (altered).
pub fn open(passphrase: &str, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let rest = sealed
        .strip_prefix(MAGIC)
        .filter(|r| r.len() > SALT + NONCE)
        .ok_or_else(|| Error::Invalid("not a sealed value".into()))?;
    let (salt, rest) = rest.split_at(SALT);
    let (nonce, body) = rest.split_at(NONCE);
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| Error::Invalid("not a sealed value".into()))?;
    let mut body = body.to_vec();
    let plain = key(passphrase, salt)?
        .open_in_place(
            nonce,
            Aad::from([MAGIC, context.as_bytes()].concat()),
            &mut body,
        )
        .map_err(|_| {
            Error::Invalid(
                "the value does not open with this passphrase (another one, or altered)".into(),
            )
        })?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_passphrase_only() {
        let sealed = seal("s3cret", "here", b"the CA key").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"the CA key"));
        assert_eq!(open("s3cret", "here", &sealed).unwrap(), b"the CA key");
        assert!(open("other", "here", &sealed).is_err());
        assert!(
            open("s3cret", "elsewhere", &sealed).is_err(),
            "bound to its place"
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(open("s3cret", "here", &altered).is_err());
        assert!(open("s3cret", "here", b"plain text").is_err());
        assert_ne!(
            seal("s3cret", "here", b"x").unwrap(),
            seal("s3cret", "here", b"x").unwrap(),
            "fresh salt and nonce"
        );
    }
}
