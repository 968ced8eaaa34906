use super::*;

/// A CA of its own in `dir/pki`: its certificate and key files.
fn ca_files(dir: &Path) -> (String, String) {
    let ca = skiff_pki::Ca::load_or_create(&dir.join("pki")).unwrap();
    let key = std::fs::read_to_string(dir.join("pki/ca.key")).unwrap();
    (ca.cert_pem, key)
}

#[test]
fn a_given_ca_is_taken_once_and_another_is_refused() {
    let given = tempfile::tempdir().unwrap();
    let (cert, key) = ca_files(given.path());
    let data = tempfile::tempdir().unwrap();
    let pki = data.path().join("pki");
    let ca_dir = given.path().join("pki");
    adopt_ca(&ca_dir, &pki).unwrap();
    assert_eq!(std::fs::read_to_string(pki.join("ca.crt")).unwrap(), cert);
    assert_eq!(std::fs::read_to_string(pki.join("ca.key")).unwrap(), key);
    // The server's own loading takes it, and issues from it.
    let loaded = skiff_pki::Ca::load_or_create(&pki).unwrap();
    assert_eq!(loaded.cert_pem, cert);
    // Again (a restart): the same CA is fine.
    adopt_ca(&ca_dir, &pki).unwrap();

    // cert-manager's names for the same pair.
    let renamed = tempfile::tempdir().unwrap();
    std::fs::write(renamed.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(renamed.path().join("tls.key"), &key).unwrap();
    adopt_ca(renamed.path(), &pki).unwrap();

    // Another CA over a data dir that has one: refused, nothing changed.
    let other = tempfile::tempdir().unwrap();
    ca_files(other.path());
    let refused = adopt_ca(&other.path().join("pki"), &pki).unwrap_err();
    assert!(
        refused.to_string().contains("holds another CA"),
        "{refused:#}"
    );
    assert_eq!(std::fs::read_to_string(pki.join("ca.crt")).unwrap(), cert);

    // Not a certificate: refused before anything is written.
    let junk = tempfile::tempdir().unwrap();
    std::fs::write(junk.path().join("ca.crt"), "not a certificate").unwrap();
    std::fs::write(junk.path().join("ca.key"), &key).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let refused = adopt_ca(junk.path(), &fresh.path().join("pki")).unwrap_err();
    assert!(
        refused.to_string().contains("not a PEM certificate"),
        "{refused:#}"
    );
    assert!(!fresh.path().join("pki/ca.crt").exists());
}
