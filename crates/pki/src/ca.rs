//! The cluster CA: creating and loading it, issuing certificates, signing
//! certificate signing requests, and reading certificates back.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long issued certificates are valid (Kubernetes' default: a year).
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A serving certificate this close to its end is issued again.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Cert {
        what: what.to_string(),
        source,
    }
}

/// The text of `path`, or None when there is no such file.
///
/// # Errors
/// Any other read failure.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `text` to `path` atomically (a temporary file, synced, renamed
/// over it) with `mode` (0o600 for keys and credentials), creating the
/// directory.
///
/// # Errors
/// The file cannot be written.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A name of its own (a leftover of another file, or of a crash,
    // never lends its mode), created new with `mode`.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        random_string(8)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // The mode asked, whatever the umask made of it.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, possibly followed by the certificates it chains
    /// through.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `NAME.crt` and `NAME.key` from `dir`, if both are there.
    ///
    /// # Errors
    /// Unreadable files.
    pub fn load(dir: &Path, name: &str) -> Result<Option<Self>> {
        let cert = read_optional(&dir.join(format!("{name}.crt")))?;
        let key = read_optional(&dir.join(format!("{name}.key")))?;
        Ok(cert
            .zip(key)
            .map(|(cert_pem, key_pem)| Self { cert_pem, key_pem }))
    }

    /// Writes `NAME.key` (owner only) then `NAME.crt` into `dir`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn save(&self, dir: &Path, name: &str) -> Result<()> {
        write_atomic(&dir.join(format!("{name}.key")), &self.key_pem, 0o600)?;
        write_atomic(&dir.join(format!("{name}.crt")), &self.cert_pem, 0o644)
    }
}

/// The cluster CA.
pub struct Ca {
    /// The CA certificate, PEM (what clients trust).
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks behind ours.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + length;
}

fn subject(user: &str, groups: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for group in groups {
        dn.push(DnType::OrganizationName, *group);
    }
    dn
}

fn client_usages(params: &mut CertificateParams, serving_too: bool) {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if serving_too {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
}

impl Ca {
    /// Loads the CA from `dir` (`ca.crt`, `ca.key`), creating it there
    /// first if there is none.
    ///
    /// # Errors
    /// Unreadable or malformed files; a directory that cannot be written.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if let (Some(cert_pem), Some(key_pem)) =
            (read_optional(&cert_path)?, read_optional(&key_path)?)
        {
            let key = KeyPair::from_pem(&key_pem).map_err(cert_error("reading ca.key"))?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_error("reading ca.crt"))?;
            return Ok(Self { cert_pem, issuer });
        }
        let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "skiff-ca");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("signing the CA"))?;
        // The key first: a certificate without its key is never left.
        write_atomic(&key_path, &key.serialize_pem(), 0o600)?;
        write_atomic(&cert_path, &cert.pem(), 0o644)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn issue(
        &self,
        params: &mut CertificateParams,
        length: Duration,
        what: &str,
    ) -> Result<Identity> {
        let key = KeyPair::generate().map_err(cert_error(what))?;
        validity(params, length);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error(what))?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate for `names` (DNS names or IP addresses),
    /// followed by the CA's certificate (so a client pinning the CA finds
    /// it in the handshake).
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_server(&self, names: &[String]) -> Result<Identity> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .filter_map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Some(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().ok().map(SanType::DnsName),
            })
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut identity = self.issue(
            &mut params,
            CERT_VALIDITY,
            "issuing the serving certificate",
        )?;
        identity.cert_pem.push_str(&self.cert_pem);
        Ok(identity)
    }

    /// A client certificate for user `user` in `groups` (CN and O, as
    /// Kubernetes reads client certificates), valid for [`CERT_VALIDITY`].
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<Identity> {
        self.issue_client_for(user, groups, CERT_VALIDITY, false)
    }

    /// A client certificate valid for `length`; with `serving_too` it may
    /// also serve TLS (a node's agent serves with its own identity; it has
    /// no names, so it can never pass for a host).
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_client_for(
        &self,
        user: &str,
        groups: &[&str],
        length: Duration,
        serving_too: bool,
    ) -> Result<Identity> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(user, groups);
        client_usages(&mut params, serving_too);
        self.issue(
            &mut params,
            length,
            &format!("issuing a certificate for {user:?}"),
        )
    }

    /// Signs the PEM certificate signing request `csr` for `user` in
    /// `groups`, valid for `length`, for client and serving use. Only the
    /// request's key is used: its subject and names are replaced, so a
    /// requester cannot name itself. The request must be signed by its
    /// key (proof that the requester holds it).
    ///
    /// # Errors
    /// A malformed or badly signed request; signing failed.
    pub fn sign_csr(
        &self,
        csr: &str,
        user: &str,
        groups: &[&str],
        length: Duration,
    ) -> Result<String> {
        verify_csr_signature(csr)?;
        let mut request = CertificateSigningRequestParams::from_pem(csr)
            .map_err(cert_error("reading the certificate signing request"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(user, groups);
        client_usages(&mut params, true);
        validity(&mut params, length);
        params.use_authority_key_identifier_extension = true;
        request.params = params;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(cert_error("signing the certificate request"))?;
        Ok(cert.pem())
    }
}

/// Checks that a PEM CSR is signed by the key it carries.
fn verify_csr_signature(csr: &str) -> Result<()> {
    use x509_parser::prelude::FromDer as _;
    let bad = |why: String| Error::Invalid(format!("certificate signing request: {why}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(bad(format!(
            "a PEM block {:?}, not CERTIFICATE REQUEST",
            pem.label
        )));
    }
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| bad(format!("malformed: {e}")))?;
    request
        .verify_signature()
        .map_err(|e| bad(format!("its signature does not match its key: {e}")))
}

/// Whether the PEM certificate `cert` carries a valid signature of the CA
/// `ca` (so it was issued by this cluster, not a previous one).
pub fn signed_by(cert: &str, ca: &str) -> bool {
    let der = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, p)| p.contents)
    };
    let (Some(cert), Some(ca)) = (der(cert), der(ca)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&cert),
        x509_parser::parse_x509_certificate(&ca),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// `n` random characters of `[a-z0-9]` (bootstrap token parts), from the
/// system's secure random source.
pub fn random_string(n: usize) -> String {
    use ring::rand::SecureRandom as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut byte = [0u8; 1];
    while out.len() < n {
        if rng.fill(&mut byte).is_err() {
            continue;
        }
        // 252 = 7 × 36: no letter is likelier than another.
        if byte[0] < 252 {
            out.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    out
}

/// A new key and a certificate signing request for it, both PEM; the
/// subject (common name `user`) is only a hint, the signer decides.
///
/// # Errors
/// Key generation or signing failed.
pub fn new_key_and_csr(user: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(cert_error("generating a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(user, &[]);
    let csr = params
        .serialize_request(&key)
        .map_err(cert_error("writing a certificate signing request"))?;
    let pem = csr
        .pem()
        .map_err(cert_error("writing a certificate signing request"))?;
    Ok((key.serialize_pem(), pem))
}

/// The pin of a certificate's public key, as kubeadm writes it:
/// `sha256:` and the hex SHA-256 of its DER SubjectPublicKeyInfo.
///
/// # Errors
/// Not a PEM certificate.
pub fn spki_hash(cert_pem: &str) -> Result<String> {
    let parsed =
        Parsed::from_pem(cert_pem).ok_or_else(|| Error::Invalid("not a PEM certificate".into()))?;
    Ok(parsed.spki_hash)
}

/// DER to PEM.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The pin (as [`spki_hash`]) of a DER SubjectPublicKeyInfo.
fn pin_of(spki: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The API server's serving identity in `dir`: loaded when it covers
/// `names` and has time left, else issued (and written) again.
///
/// # Errors
/// As [`Ca::load_or_create`].
pub fn serving_identity(ca: &Ca, dir: &Path, names: &[String]) -> Result<Identity> {
    if let Some(identity) = Identity::load(dir, "server")?
        && covers(&identity.cert_pem, names)
        && identity.cert_pem.contains(ca.cert_pem.trim())
    {
        return Ok(identity);
    }
    let identity = ca.issue_server(names)?;
    identity.save(dir, "server")?;
    Ok(identity)
}

/// Whether the certificate names every one of `names` and is valid for
/// longer than [`RENEW_BEFORE`].
fn covers(cert_pem: &str, names: &[String]) -> bool {
    let Some(parsed) = Parsed::from_pem(cert_pem) else {
        return false;
    };
    let fresh = parsed.not_after > time::OffsetDateTime::now_utc() + RENEW_BEFORE;
    fresh
        && names.iter().all(|n| match n.parse::<IpAddr>() {
            Ok(ip) => parsed.ips.contains(&ip),
            Err(_) => parsed.dns.contains(n),
        })
}

/// What Skiff reads back from a certificate.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Subject common name (the user).
    pub common_name: String,
    /// Subject organizations (the groups).
    pub organizations: Vec<String>,
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// The start of its validity.
    pub not_before: time::OffsetDateTime,
    /// The end of its validity.
    pub not_after: time::OffsetDateTime,
    /// The pin of its public key (`sha256:...`, see [`spki_hash`]).
    pub spki_hash: String,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl Parsed {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let text =
            |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().ok().map(str::to_string);
        let mut parsed = Self {
            common_name: subject
                .iter_common_name()
                .next()
                .and_then(text)
                .unwrap_or_default(),
            organizations: subject.iter_organization().filter_map(text).collect(),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            spki_hash: pin_of(cert.public_key().raw),
            is_ca: cert.is_ca(),
        };
        if let Ok(Some(sans)) = cert.subject_alternative_name() {
            for name in &sans.value.general_names {
                match name {
                    GeneralName::DNSName(d) => parsed.dns.push((*d).to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => parsed.ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => parsed
                            .ips
                            .push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(parsed)
    }

    /// Reads a PEM certificate (the first of the text).
    pub fn from_pem(pem: &str) -> Option<Self> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        Self::from_der(&pem.contents)
    }

    /// When the certificate should be replaced: `share` (0..1) of the way
    /// through its validity (kubelet rotates at 70–90 %).
    pub fn renew_at(&self, share: f64) -> time::OffsetDateTime {
        let life = self.not_after - self.not_before;
        self.not_before + life * share.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_loaded_after() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is its owner's only");
        // A certificate the reloaded CA signs names the same issuer.
        let client = again.issue_client("admin", &["system:masters"]).unwrap();
        let parsed = Parsed::from_pem(&client.cert_pem).unwrap();
        assert_eq!(parsed.common_name, "admin");
        assert_eq!(parsed.organizations, ["system:masters"]);
        assert!(!parsed.is_ca);
        assert!(Parsed::from_pem(&first.cert_pem).unwrap().is_ca);
    }

    #[test]
    fn the_serving_certificate_is_kept_while_it_covers_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = serving_identity(&ca, dir.path(), &names).unwrap();
        let again = serving_identity(&ca, dir.path(), &names).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem);
        assert!(
            first.cert_pem.ends_with(&ca.cert_pem),
            "the chain carries the CA"
        );
        let more = vec!["localhost".to_string(), "10.0.0.7".to_string()];
        let reissued = serving_identity(&ca, dir.path(), &more).unwrap();
        assert_ne!(first.cert_pem, reissued.cert_pem);
        assert!(covers(&reissued.cert_pem, &more));
        assert!(!covers(&reissued.cert_pem, &names));
        assert!(!format!("{reissued:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_signed_csr_carries_the_identity_the_signer_chose() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (_key, csr) = new_key_and_csr("system:masters-please").unwrap();
        let cert = ca
            .sign_csr(
                &csr,
                "system:node:n1",
                &["system:nodes"],
                Duration::from_secs(60),
            )
            .unwrap();
        let parsed = Parsed::from_pem(&cert).unwrap();
        assert_eq!(parsed.common_name, "system:node:n1");
        assert_eq!(parsed.organizations, ["system:nodes"]);
        assert!(parsed.dns.is_empty() && parsed.ips.is_empty());
        let life = parsed.not_after - parsed.not_before;
        assert!(life <= time::Duration::minutes(6), "{life}");
        assert!(parsed.renew_at(0.5) < parsed.not_after);
        assert!(signed_by(&cert, &ca.cert_pem));
        let other = tempfile::tempdir().unwrap();
        let stranger = Ca::load_or_create(other.path()).unwrap();
        assert!(!signed_by(&cert, &stranger.cert_pem));
    }

    #[test]
    fn a_csr_with_a_foreign_signature_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (_, csr) = new_key_and_csr("n").unwrap();
        // Flip a byte inside the signature (the end of the DER).
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let last = lines.len() - 2;
        let flipped: String = lines[last]
            .chars()
            .rev()
            .enumerate()
            .map(|(i, c)| match (i, c) {
                (3, 'A') => 'B',
                (3, _) => 'A',
                (_, c) => c,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        lines[last] = flipped;
        let tampered = lines.join("\n");
        let err = ca
            .sign_csr(&tampered, "n", &[], Duration::from_secs(60))
            .unwrap_err();
        assert!(
            err.to_string().contains("certificate signing request"),
            "{err}"
        );
        let err = ca
            .sign_csr("hello", "n", &[], Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("not PEM"), "{err}");
    }

    #[test]
    fn the_pin_is_the_sha256_of_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let pin = spki_hash(&ca.cert_pem).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
        // The same key, reloaded: the same pin; another CA: another.
        assert_eq!(
            spki_hash(&Ca::load_or_create(dir.path()).unwrap().cert_pem).unwrap(),
            pin
        );
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            spki_hash(&Ca::load_or_create(other.path()).unwrap().cert_pem).unwrap(),
            pin
        );
    }
}
