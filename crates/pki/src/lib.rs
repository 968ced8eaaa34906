//! Skiff's certificates.
//!
//! On first start the API server creates the cluster CA in its data dir
//! (`pki/ca.crt`, `pki/ca.key`, the key readable by its owner only) and
//! a serving certificate for its names and addresses; later starts load
//! them (a serving certificate that misses a name or ends within
//! [`RENEW_BEFORE`] is issued again). Client identities are certificates
//! from the same CA: the common name is the user (`admin`,
//! `system:node:NAME`), the organizations its groups, as Kubernetes reads
//! them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long issued certificates are valid (Kubernetes' default: a year).
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate this close to its end is issued again.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Generating, signing or parsing.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Cert {
        what: what.to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `text` to `path` atomically (a temporary file renamed over it),
/// with `mode` (0o600 for keys).
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate.
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

impl Ca {
    /// Loads the CA from `dir` (`ca.crt`, `ca.key`), creating it there
    /// first if there is none.
    ///
    /// # Errors
    /// Unreadable or malformed files; a directory that cannot be written.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if let (Some(cert_pem), Some(key_pem)) = (read(&cert_path)?, read(&key_path)?) {
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
        write(&key_path, &key.serialize_pem(), 0o600)?;
        write(&cert_path, &cert.pem(), 0o644)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn issue(&self, params: &mut CertificateParams, what: &str) -> Result<Identity> {
        let key = KeyPair::generate().map_err(cert_error(what))?;
        validity(params, CERT_VALIDITY);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error(what))?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
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
        self.issue(&mut params, "issuing the serving certificate")
    }

    /// A client certificate for user `user` in `groups` (CN and O, as
    /// Kubernetes reads client certificates).
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<Identity> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for group in groups {
            dn.push(DnType::OrganizationName, *group);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&mut params, &format!("issuing a certificate for {user:?}"))
    }
}

/// The API server's serving identity in `dir`: loaded when it covers
/// `names` and has time left, else issued (and written) again.
///
/// # Errors
/// As [`Ca::load_or_create`].
pub fn serving_identity(ca: &Ca, dir: &Path, names: &[String]) -> Result<Identity> {
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    if let (Some(cert_pem), Some(key_pem)) = (read(&cert_path)?, read(&key_path)?)
        && covers(&cert_pem, names)
    {
        return Ok(Identity { cert_pem, key_pem });
    }
    let identity = ca.issue_server(names)?;
    write(&key_path, &identity.key_pem, 0o600)?;
    write(&cert_path, &identity.cert_pem, 0o644)?;
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
#[derive(Debug)]
pub struct Parsed {
    /// Subject common name (the user).
    pub common_name: String,
    /// Subject organizations (the groups).
    pub organizations: Vec<String>,
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// The end of its validity.
    pub not_after: time::OffsetDateTime,
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
            common_name: subject.iter_common_name().next().and_then(text)?,
            organizations: subject.iter_organization().filter_map(text).collect(),
            dns: Vec::new(),
            ips: Vec::new(),
            not_after: cert.validity().not_after.to_datetime(),
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
    }

    #[test]
    fn the_serving_certificate_is_kept_while_it_covers_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = serving_identity(&ca, dir.path(), &names).unwrap();
        let again = serving_identity(&ca, dir.path(), &names).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem);
        let more = vec!["localhost".to_string(), "10.0.0.7".to_string()];
        let reissued = serving_identity(&ca, dir.path(), &more).unwrap();
        assert_ne!(first.cert_pem, reissued.cert_pem);
        assert!(covers(&reissued.cert_pem, &more));
        assert!(!covers(&reissued.cert_pem, &names));
        assert!(format!("{reissued:?}").find("PRIVATE").is_none());
    }
}
