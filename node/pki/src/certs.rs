//! Certificate issuance and inspection.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::files::{self, PUBLIC_MODE, SECRET_MODE};
use crate::{file_names, ClusterPki, Error, PkiOptions};
use crate::{CA_VALIDITY_DAYS, LEAF_VALIDITY_DAYS, RENEW_BEFORE_DAYS};

/// The organization attribute's OID (2.5.4.10), for second and later groups: rcgen keeps one
/// value per attribute type, so extra `O` values go in as custom attributes with the same OID.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// Who a client certificate authenticates as: CN is the user, each O a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject common name.
    pub user: String,
    /// Subject organization values, in order.
    pub groups: Vec<String>,
}

/// A loaded CA able to sign.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
    pem: String,
}

impl Ca {
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| Error::InvalidKey(format!("CA key: {e}")))?;
        let der = first_cert_der(cert_pem)?;
        {
            let cert = parse_der(&der)?;
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(Error::InvalidKey(
                    "CA key does not match the CA certificate".into(),
                ));
            }
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| Error::InvalidCertificate(format!("CA certificate: {e}")))?;
        Ok(Self {
            issuer,
            der,
            pem: cert_pem.to_string(),
        })
    }
}

/// What a leaf certificate must look like.
pub(crate) struct LeafSpec<'a> {
    pub common_name: &'a str,
    pub groups: &'a [&'a str],
    pub sans: &'a [San],
    /// Server auth EKU (serving certs) instead of client auth.
    pub server_auth: bool,
    /// Append the CA certificate to the stored PEM (a chain for TLS servers).
    pub chain_ca: bool,
}

/// A subject alternative name in comparable form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, Error> {
        Ok(match self {
            San::Dns(d) => SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|_| Error::InvalidSan(d.clone()))?,
            ),
            San::Ip(ip) => SanType::IpAddress(*ip),
        })
    }

    fn parse(value: &str) -> Result<San, Error> {
        let v = value.trim();
        if let Ok(ip) = v.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
        if !ok {
            return Err(Error::InvalidSan(value.to_string()));
        }
        Ok(San::Dns(v.to_ascii_lowercase()))
    }
}

/// The SANs the serving certificate must carry, deduplicated, in a stable order.
pub(crate) fn serving_sans(opts: &PkiOptions) -> Result<Vec<San>, Error> {
    let mut out: Vec<San> = Vec::new();
    let mut push = |s: San| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    if !opts.hostname.trim().is_empty() {
        push(San::parse(&opts.hostname)?);
    }
    push(San::Dns("localhost".into()));
    for ip in &opts.node_ips {
        push(San::Ip(*ip));
    }
    push(San::Ip(IpAddr::from([127, 0, 0, 1])));
    for name in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        push(San::Dns(name.into()));
    }
    push(San::Ip(opts.service_ip));
    for s in &opts.sans {
        if s.trim().is_empty() {
            continue;
        }
        push(San::parse(s)?);
    }
    Ok(out)
}

/// Load `ca.crt`/`ca.key` or create them. Returns `(cert_pem, key_pem, created)`.
pub(crate) fn load_or_create_ca(
    dir: &Path,
    now: OffsetDateTime,
) -> Result<(String, String, bool), Error> {
    let cert_path = dir.join(file_names::CA_CERT);
    let key_path = dir.join(file_names::CA_KEY);
    match (
        files::read_optional(&cert_path)?,
        files::read_optional(&key_path)?,
    ) {
        (Some(c), Some(k)) => Ok((c, k, false)),
        (Some(_), None) => Err(Error::MissingFile {
            present: cert_path,
            missing: key_path,
        }),
        (None, Some(_)) => Err(Error::MissingFile {
            present: key_path,
            missing: cert_path,
        }),
        (None, None) => {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(
                DnType::CommonName,
                format!("k3rs-server-ca@{}", now.unix_timestamp()),
            );
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.serial_number = Some(random_serial());
            params.not_before = now - Duration::minutes(5);
            params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
            let cert = params.self_signed(&key)?;
            let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
            files::write_atomic(&key_path, key_pem.as_bytes(), SECRET_MODE)?;
            files::write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
            tracing::info!(path = %cert_path.display(), "created cluster CA");
            Ok((cert_pem, key_pem, true))
        }
    }
}

/// Reuse the leaf at `cert_path`/`key_path` if it still fits `spec` and `ca`, else issue and
/// write a new one. Returns `(cert_pem, key_pem)` as stored.
pub(crate) fn load_or_issue_leaf(
    ca: &Ca,
    ca_new: bool,
    cert_path: &Path,
    key_path: &Path,
    spec: &LeafSpec<'_>,
    now: OffsetDateTime,
) -> Result<(String, String), Error> {
    let existing = (
        files::read_optional(cert_path)?,
        files::read_optional(key_path)?,
    );
    if let (Some(cert_pem), Some(key_pem)) = &existing {
        if ca_new {
            tracing::info!(path = %cert_path.display(), "re-issuing certificate: new CA");
        } else {
            match leaf_mismatch(ca, cert_pem, key_pem, spec, now) {
                None => return Ok((cert_pem.clone(), key_pem.clone())),
                Some(reason) => {
                    tracing::info!(path = %cert_path.display(), reason, "re-issuing certificate")
                }
            }
        }
    }
    let (mut cert_pem, key_pem) = issue_leaf(ca, spec, now)?;
    if spec.chain_ca {
        cert_pem.push_str(&ca.pem);
    }
    files::write_atomic(key_path, key_pem.as_bytes(), SECRET_MODE)?;
    files::write_atomic(cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
    Ok((cert_pem, key_pem))
}

/// Why an existing leaf must be replaced, or `None` if it can be reused.
fn leaf_mismatch(
    ca: &Ca,
    cert_pem: &str,
    key_pem: &str,
    spec: &LeafSpec<'_>,
    now: OffsetDateTime,
) -> Option<&'static str> {
    let Ok(der) = first_cert_der(cert_pem) else {
        return Some("certificate does not parse");
    };
    let Ok(cert) = parse_der(&der) else {
        return Some("certificate does not parse");
    };
    let Ok(ca_cert) = parse_der(&ca.der) else {
        return Some("CA does not parse");
    };
    if cert.issuer() != ca_cert.subject()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Some("not signed by the current CA");
    }
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return Some("key does not parse");
    };
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Some("key does not match certificate");
    }
    let renew_at = now + Duration::days(RENEW_BEFORE_DAYS);
    if cert.validity().not_after.timestamp() < renew_at.unix_timestamp() {
        return Some("expires soon");
    }
    if spec.chain_ca && !cert_pem.ends_with(&ca.pem) {
        return Some("chain does not end with the current CA");
    }
    let Ok(identity) = identity_of(&cert) else {
        return Some("no common name");
    };
    if identity.user != spec.common_name || identity.groups != spec.groups {
        return Some("subject changed");
    }
    let have: BTreeSet<San> = cert_sans(&cert).into_iter().collect();
    let want: BTreeSet<San> = spec.sans.iter().cloned().collect();
    if have != want {
        return Some("subject alternative names changed");
    }
    None
}

fn issue_leaf(
    ca: &Ca,
    spec: &LeafSpec<'_>,
    now: OffsetDateTime,
) -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name);
    let mut groups = spec.groups.iter();
    if let Some(first) = groups.next() {
        dn.push(DnType::OrganizationName, *first);
    }
    if let Some(second) = groups.next() {
        dn.push(DnType::CustomDnType(ORGANIZATION_OID.to_vec()), *second);
    }
    if groups.next().is_some() {
        return Err(Error::TooManyGroups(spec.groups.len()));
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if spec.server_auth {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.subject_alt_names = spec
        .sans
        .iter()
        .map(San::to_rcgen)
        .collect::<Result<_, _>>()?;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issue a client certificate (client auth EKU, `CN=common_name`, one `O` per group, valid
/// [`LEAF_VALIDITY_DAYS`](crate::LEAF_VALIDITY_DAYS)) signed by the cluster CA. At most two
/// groups are supported. Returns `(cert_pem, key_pem)`.
pub fn issue_client_cert(
    ca: &ClusterPki,
    common_name: &str,
    groups: &[&str],
) -> Result<(String, String), Error> {
    let ca = Ca::from_pem(&ca.ca_cert_pem, &ca.ca_key_pem)?;
    issue_leaf(
        &ca,
        &LeafSpec {
            common_name,
            groups,
            sans: &[],
            server_auth: false,
            chain_ca: false,
        },
        OffsetDateTime::now_utc(),
    )
}

/// The user (subject CN) and groups (subject O values) of a DER client certificate.
/// This does not check the signature: the TLS layer has done that.
pub fn client_identity(cert_der: &[u8]) -> Result<ClientIdentity, Error> {
    identity_of(&parse_der(cert_der)?)
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<ClientIdentity, Error> {
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(Error::NoCommonName)?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Ok(ClientIdentity { user, groups })
}

fn cert_sans(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?))),
                16 => Some(San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::InvalidCertificate(e.to_string()))
}

/// DER of the first certificate in a PEM bundle.
pub(crate) fn first_cert_der(pem: &str) -> Result<Vec<u8>, Error> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| Error::InvalidCertificate(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
    }
    Err(Error::InvalidCertificate("no CERTIFICATE PEM block".into()))
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}
