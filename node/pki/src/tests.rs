//! Tests of `load_or_create` and certificate issuance against real files.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;

use x509_parser::extensions::GeneralName;

use super::*;
use crate::certs::{first_cert_der, parse_der};

fn opts(dir: &Path) -> PkiOptions {
    PkiOptions {
        dir: dir.join("server/tls"),
        hostname: "node-1".into(),
        sans: vec!["api.example.com".into(), "192.0.2.10".into()],
        node_ips: vec!["10.0.2.15".parse().unwrap()],
        service_ip: "10.43.0.1".parse().unwrap(),
        token_secret: None,
    }
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn create_then_reload_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path());
    let a = load_or_create(&o).unwrap();
    let files_a = read_all(&o.dir);
    let b = load_or_create(&o).unwrap();
    let files_b = read_all(&o.dir);
    assert_eq!(files_a, files_b);
    assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
    assert_eq!(a.ca_key_pem, b.ca_key_pem);
    assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
    assert_eq!(a.serving_key_pem, b.serving_key_pem);
    assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
    assert_eq!(a.admin_key_pem, b.admin_key_pem);
    assert_eq!(a.node_token, b.node_token);
    assert_eq!(
        a.service_account.public_key_pem(),
        b.service_account.public_key_pem()
    );

    // Modes: keys and token 0600, certs 0644.
    use file_names::*;
    for f in [CA_KEY, SERVING_KEY, ADMIN_KEY, SA_KEY, TOKEN] {
        assert_eq!(mode(&o.dir.join(f)), 0o600, "{f}");
    }
    for f in [CA_CERT, SERVING_CERT, ADMIN_CERT] {
        assert_eq!(mode(&o.dir.join(f)), 0o644, "{f}");
    }
    // No temporary files left behind.
    assert_eq!(
        files_a.len(),
        8,
        "{:?}",
        files_a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    // ca.crt bytes are what the token hashes.
    assert_eq!(
        std::fs::read_to_string(o.dir.join(CA_CERT)).unwrap(),
        a.ca_cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(o.dir.join(TOKEN)).unwrap().trim(),
        a.node_token
    );
}

#[test]
fn token_format_and_secret_handling() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    let a = load_or_create(&o).unwrap();
    let rest = a.node_token.strip_prefix("K10").unwrap();
    let (hash, secret) = rest.split_once("::server:").unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(hash, a.ca_hash());
    assert_eq!(secret, a.token_secret());
    assert!(!secret.is_empty());
    assert!(a.check_token(&a.node_token));
    assert!(a.check_token(secret));
    assert!(!a.check_token("wrong"));
    assert!(!a.check_token(&format!("K10{}::server:{secret}", "0".repeat(64))));

    // A given --token wins and is persisted; the rest of the PKI is untouched.
    o.token_secret = Some("mysecret".into());
    let b = load_or_create(&o).unwrap();
    assert_eq!(b.node_token, format!("K10{hash}::server:mysecret"));
    assert_eq!(b.ca_cert_pem, a.ca_cert_pem);
    o.token_secret = None;
    let c = load_or_create(&o).unwrap();
    assert_eq!(c.node_token, b.node_token);

    // A full token for this CA is accepted; one for another CA is rejected.
    o.token_secret = Some(format!("K10{hash}::server:other"));
    assert_eq!(load_or_create(&o).unwrap().token_secret(), "other");
    o.token_secret = Some(format!("K10{}::server:x", "ab".repeat(32)));
    assert!(matches!(
        load_or_create(&o),
        Err(Error::TokenCaMismatch { .. })
    ));
}

#[test]
fn san_change_reissues_only_serving_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    let a = load_or_create(&o).unwrap();
    o.sans.push("2001:db8::1".into());
    o.sans.push("extra.example.com".into());
    let b = load_or_create(&o).unwrap();
    assert_ne!(a.serving_cert_pem, b.serving_cert_pem);
    assert_ne!(a.serving_key_pem, b.serving_key_pem);
    assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
    assert_eq!(a.ca_key_pem, b.ca_key_pem);
    assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
    assert_eq!(a.admin_key_pem, b.admin_key_pem);
    assert_eq!(a.node_token, b.node_token);
    assert_eq!(
        a.service_account.private_key_pem(),
        b.service_account.private_key_pem()
    );
    let sans = serving_sans_of(&b);
    assert!(sans.contains("IP:2001:db8::1"));
    assert!(sans.contains("DNS:extra.example.com"));
    // Same SANs in another order (and a duplicate) do not re-issue.
    o.sans.reverse();
    o.sans.push("node-1".into());
    let c = load_or_create(&o).unwrap();
    assert_eq!(b.serving_cert_pem, c.serving_cert_pem);
}

fn serving_sans_of(pki: &ClusterPki) -> BTreeSet<String> {
    let der = first_cert_der(&pki.serving_cert_pem).unwrap();
    let cert = parse_der(&der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => {
                let ip: IpAddr = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).unwrap().into(),
                    _ => <[u8; 16]>::try_from(*b).unwrap().into(),
                };
                format!("IP:{ip}")
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

#[test]
fn serving_cert_verifies_against_ca_and_has_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = load_or_create(&opts(tmp.path())).unwrap();
    let ca_der = first_cert_der(&pki.ca_cert_pem).unwrap();
    let ca = parse_der(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert!(ca.verify_signature(None).is_ok(), "CA is self-signed");
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
        / (365 * 86400);
    assert!(years >= 9, "CA valid {years} years");
    assert_eq!(
        ca.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );

    let der = first_cert_der(&pki.serving_cert_pem).unwrap();
    let cert = parse_der(&der).unwrap();
    assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
    assert_eq!(cert.issuer(), ca.subject());
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    // The chain holds the leaf then the CA.
    assert!(pki.serving_cert_pem.ends_with(&pki.ca_cert_pem));

    let want: BTreeSet<String> = [
        "DNS:node-1",
        "DNS:localhost",
        "IP:10.0.2.15",
        "IP:127.0.0.1",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP:10.43.0.1",
        "DNS:api.example.com",
        "IP:192.0.2.10",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(serving_sans_of(&pki), want);

    // The serving key matches the certificate.
    let key = rcgen::KeyPair::from_pem(&pki.serving_key_pem).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn admin_and_issued_client_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = load_or_create(&opts(tmp.path())).unwrap();
    let ca_der = first_cert_der(&pki.ca_cert_pem).unwrap();
    let ca = parse_der(&ca_der).unwrap();

    let admin_der = first_cert_der(&pki.admin_cert_pem).unwrap();
    assert_eq!(
        client_identity(&admin_der).unwrap(),
        ClientIdentity {
            user: "system:admin".into(),
            groups: vec!["system:masters".into()],
        }
    );
    let admin = parse_der(&admin_der).unwrap();
    assert!(admin.verify_signature(Some(ca.public_key())).is_ok());
    let eku = admin.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    for groups in [
        &[][..],
        &["system:nodes"][..],
        &["system:nodes", "system:authenticated"][..],
    ] {
        let (cert_pem, key_pem) = issue_client_cert(&pki, "system:node:node-1", groups).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let der = first_cert_der(&cert_pem).unwrap();
        let id = client_identity(&der).unwrap();
        assert_eq!(id.user, "system:node:node-1");
        assert_eq!(id.groups, groups);
        assert!(parse_der(&der)
            .unwrap()
            .verify_signature(Some(ca.public_key()))
            .is_ok());
    }
    assert!(matches!(
        issue_client_cert(&pki, "x", &["a", "b", "c"]),
        Err(Error::TooManyGroups(3))
    ));
    assert!(client_identity(b"garbage").is_err());
}

#[test]
fn missing_leaf_or_partial_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path());
    let a = load_or_create(&o).unwrap();
    // A deleted admin key re-issues the admin pair only.
    std::fs::remove_file(o.dir.join(file_names::ADMIN_KEY)).unwrap();
    let b = load_or_create(&o).unwrap();
    assert_ne!(a.admin_cert_pem, b.admin_cert_pem);
    assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
    // A CA cert without its key is an error, not a silent new CA.
    std::fs::remove_file(o.dir.join(file_names::CA_KEY)).unwrap();
    assert!(matches!(load_or_create(&o), Err(Error::MissingFile { .. })));
}

#[test]
fn new_ca_reissues_leaves_and_token_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path());
    let a = load_or_create(&o).unwrap();
    std::fs::remove_file(o.dir.join(file_names::CA_KEY)).unwrap();
    std::fs::remove_file(o.dir.join(file_names::CA_CERT)).unwrap();
    let b = load_or_create(&o).unwrap();
    assert_ne!(a.ca_cert_pem, b.ca_cert_pem);
    assert_ne!(a.serving_cert_pem, b.serving_cert_pem);
    assert_ne!(a.admin_cert_pem, b.admin_cert_pem);
    assert_eq!(a.token_secret(), b.token_secret());
    assert_eq!(b.node_token, format_token(&b.ca_cert_pem, b.token_secret()));
}

#[test]
fn invalid_san_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.sans.push("bad name".into());
    assert!(matches!(load_or_create(&o), Err(Error::InvalidSan(_))));
}

#[test]
fn debug_does_not_leak_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = load_or_create(&opts(tmp.path())).unwrap();
    let s = format!("{pki:?}");
    assert!(!s.contains("PRIVATE KEY"));
    assert!(!s.contains(pki.token_secret()));
}
