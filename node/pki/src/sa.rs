//! Service account tokens: Kubernetes-style ES256 JWTs signed with a key persisted as `sa.key`.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::Error;

/// The issuer upstream Kubernetes (and K3s) put in bound service account tokens.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Clock skew tolerated on `exp` and `nbf`, like the upstream validator (go-jose's default leeway).
pub const CLOCK_SKEW_LEEWAY_SECS: i64 = 60;

/// The claims of a service account token that k3rs issues and checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaClaims {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Service account UID.
    pub service_account_uid: String,
    /// Audiences (`aud`); empty means the API server's default audience is used by the caller.
    pub audiences: Vec<String>,
    /// Expiry (`exp`), Unix seconds.
    pub expires_unix: i64,
    /// Issue time (`iat`, also used as `nbf`), Unix seconds.
    pub issued_unix: i64,
    /// The pod the token is bound to: `(name, uid)`.
    pub pod: Option<(String, String)>,
}

impl SaClaims {
    /// The username the token authenticates as: `system:serviceaccount:<ns>:<name>`.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The groups the token authenticates with, as upstream.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".to_string(),
        ]
    }

    /// Whether `aud` contains `audience`.
    pub fn has_audience(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| a == audience)
    }
}

/// The service account signing key pair (ECDSA P-256, PKCS#8 PEM in `sa.key`).
#[derive(Clone)]
pub struct ServiceAccountKeys {
    private_pem: String,
    public_pem: String,
    key_id: String,
    key_pair: Arc<EcdsaKeyPair>,
}

impl fmt::Debug for ServiceAccountKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKeys {
    /// Generate a new key pair.
    pub fn generate() -> Result<Self, Error> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_pem(&kp.serialize_pem())
    }

    /// Load a key pair from a PKCS#8 PEM private key.
    pub fn from_pem(private_pem: &str) -> Result<Self, Error> {
        let kp = rcgen::KeyPair::from_pem(private_pem)
            .map_err(|e| Error::InvalidKey(format!("service account key: {e}")))?;
        let key_pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            kp.serialized_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| Error::InvalidKey(format!("service account key: {e}")))?;
        // Like upstream: kid = base64url(sha256(DER SubjectPublicKeyInfo)).
        let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
        let key_id = URL_SAFE_NO_PAD.encode(Sha256::digest(&spki));
        Ok(Self {
            private_pem: private_pem.to_string(),
            public_pem: kp.public_key_pem(),
            key_id,
            key_pair: Arc::new(key_pair),
        })
    }

    /// The private key, PKCS#8 PEM (the contents of `sa.key`).
    pub fn private_key_pem(&self) -> &str {
        &self.private_pem
    }

    /// The public key as a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> String {
        self.public_pem.clone()
    }

    /// The JWS `kid` put in token headers.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Sign a token for `claims`. `nbf` is set to `issued_unix`, `iss` to [`SA_ISSUER`] and a
    /// random `jti` is added, as upstream.
    pub fn issue(&self, claims: &SaClaims) -> Result<String, Error> {
        let header = json!({ "alg": "ES256", "kid": self.key_id });
        let mut k8s = serde_json::Map::new();
        k8s.insert("namespace".into(), json!(claims.namespace));
        if let Some((name, uid)) = &claims.pod {
            k8s.insert("pod".into(), json!({ "name": name, "uid": uid }));
        }
        k8s.insert(
            "serviceaccount".into(),
            json!({ "name": claims.service_account, "uid": claims.service_account_uid }),
        );
        let payload = json!({
            "aud": claims.audiences,
            "exp": claims.expires_unix,
            "iat": claims.issued_unix,
            "iss": SA_ISSUER,
            "jti": random_uuid(),
            "kubernetes.io": Value::Object(k8s),
            "nbf": claims.issued_unix,
            "sub": claims.username(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let sig = self
            .key_pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| Error::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Check a token's signature, issuer and validity window at `now_unix` (allowing
    /// [`CLOCK_SKEW_LEEWAY_SECS`]) and return its claims. Audience checks are left to the caller
    /// ([`SaClaims::has_audience`]).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<SaClaims, Error> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::MalformedJwt(
                "expected three dot-separated parts".into(),
            ));
        };
        let header: Value = decode_json(h, "header")?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != "ES256" {
            return Err(Error::UnsupportedAlgorithm(alg.to_string()));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| Error::MalformedJwt("signature is not base64url".into()))?;
        let public_key = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key_pair.public_key().as_ref(),
        );
        let signing_input = &token.trim()[..h.len() + 1 + p.len()];
        public_key
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| Error::BadSignature)?;

        let payload: Value = decode_json(p, "payload")?;
        let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss != SA_ISSUER {
            return Err(Error::WrongIssuer(iss.to_string()));
        }
        let exp = payload
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::MalformedJwt("missing exp".into()))?;
        if now_unix > exp.saturating_add(CLOCK_SKEW_LEEWAY_SECS) {
            return Err(Error::Expired);
        }
        if let Some(nbf) = payload.get("nbf").and_then(Value::as_i64) {
            if now_unix < nbf.saturating_sub(CLOCK_SKEW_LEEWAY_SECS) {
                return Err(Error::NotYetValid);
            }
        }
        let iat = payload.get("iat").and_then(Value::as_i64).unwrap_or(0);
        let audiences = match payload.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::MalformedJwt("aud is not a string".into()))
                })
                .collect::<Result<_, _>>()?,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(Error::MalformedJwt("aud is not a string or array".into())),
        };
        let k8s = payload
            .get("kubernetes.io")
            .ok_or_else(|| Error::MalformedJwt("missing kubernetes.io claims".into()))?;
        let str_at = |v: &Value, path: &[&str]| -> Option<String> {
            let mut cur = v;
            for key in path {
                cur = cur.get(key)?;
            }
            cur.as_str().map(str::to_string)
        };
        let missing = |what: &str| Error::MalformedJwt(format!("missing {what}"));
        let namespace = str_at(k8s, &["namespace"]).ok_or_else(|| missing("namespace"))?;
        let service_account =
            str_at(k8s, &["serviceaccount", "name"]).ok_or_else(|| missing("serviceaccount"))?;
        let service_account_uid = str_at(k8s, &["serviceaccount", "uid"]).unwrap_or_default();
        let pod = match k8s.get("pod") {
            Some(pod) if !pod.is_null() => Some((
                str_at(pod, &["name"]).ok_or_else(|| missing("pod name"))?,
                str_at(pod, &["uid"]).unwrap_or_default(),
            )),
            _ => None,
        };
        let claims = SaClaims {
            namespace,
            service_account,
            service_account_uid,
            audiences,
            expires_unix: exp,
            issued_unix: iat,
            pod,
        };
        let sub = payload.get("sub").and_then(Value::as_str).unwrap_or("");
        if sub != claims.username() {
            return Err(Error::MalformedJwt(
                "sub does not match kubernetes.io claims".into(),
            ));
        }
        Ok(claims)
    }
}

fn decode_json(part: &str, what: &str) -> Result<Value, Error> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Error::MalformedJwt(format!("{what} is not base64url")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| Error::MalformedJwt(format!("{what} is not JSON")))?;
    if !v.is_object() {
        return Err(Error::MalformedJwt(format!("{what} is not an object")));
    }
    Ok(v)
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::token::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> SaClaims {
        SaClaims {
            namespace: "kube-system".into(),
            service_account: "coredns".into(),
            service_account_uid: "uid-1".into(),
            audiences: vec![SA_ISSUER.into(), "k3s".into()],
            expires_unix: now + 3600,
            issued_unix: now,
            pod: Some(("coredns-abc".into(), "pod-uid".into())),
        }
    }

    #[test]
    fn issue_and_verify_round_trip() {
        let keys = ServiceAccountKeys::generate().unwrap();
        let now = 1_700_000_000;
        let c = claims(now);
        let token = keys.issue(&c).unwrap();
        assert_eq!(keys.verify(&token, now + 10).unwrap(), c);

        // Layout as upstream.
        let payload: Value = decode_json(token.split('.').nth(1).unwrap(), "p").unwrap();
        assert_eq!(payload["iss"], SA_ISSUER);
        assert_eq!(payload["sub"], "system:serviceaccount:kube-system:coredns");
        assert_eq!(payload["nbf"], now);
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["uid"], "uid-1");
        assert_eq!(payload["kubernetes.io"]["pod"]["name"], "coredns-abc");
        assert_eq!(payload["jti"].as_str().unwrap().len(), 36);
        let header: Value = decode_json(token.split('.').next().unwrap(), "h").unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], keys.key_id());

        // Without a pod binding.
        let c2 = SaClaims { pod: None, ..c };
        let t2 = keys.issue(&c2).unwrap();
        assert_eq!(keys.verify(&t2, now).unwrap(), c2);
        assert!(c2.has_audience("k3s"));
        assert_eq!(c2.groups()[1], "system:serviceaccounts:kube-system");
    }

    #[test]
    fn reload_from_pem_verifies_old_tokens() {
        let keys = ServiceAccountKeys::generate().unwrap();
        let token = keys.issue(&claims(100)).unwrap();
        let again = ServiceAccountKeys::from_pem(keys.private_key_pem()).unwrap();
        assert_eq!(again.key_id(), keys.key_id());
        assert_eq!(again.public_key_pem(), keys.public_key_pem());
        assert!(keys
            .public_key_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(again.verify(&token, 100).is_ok());
    }

    #[test]
    fn rejects_expired_and_not_yet_valid() {
        let keys = ServiceAccountKeys::generate().unwrap();
        let now = 1_700_000_000;
        let token = keys.issue(&claims(now)).unwrap();
        assert!(matches!(
            keys.verify(&token, now + 3600 + CLOCK_SKEW_LEEWAY_SECS + 1),
            Err(Error::Expired)
        ));
        assert!(keys.verify(&token, now + 3600 + 30).is_ok());
        assert!(matches!(
            keys.verify(&token, now - CLOCK_SKEW_LEEWAY_SECS - 1),
            Err(Error::NotYetValid)
        ));
    }

    #[test]
    fn rejects_tampered_and_foreign_tokens() {
        let keys = ServiceAccountKeys::generate().unwrap();
        let now = 1_700_000_000;
        let token = keys.issue(&claims(now)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        // Payload swapped for another namespace, old signature kept.
        let mut forged = claims(now);
        forged.namespace = "default".into();
        let other = keys.issue(&forged).unwrap();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(matches!(
            keys.verify(&tampered, now),
            Err(Error::BadSignature)
        ));

        // A flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[5] ^= 1;
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert!(matches!(
            keys.verify(&bad_sig, now),
            Err(Error::BadSignature)
        ));

        // Signed by another key.
        let stranger = ServiceAccountKeys::generate().unwrap();
        let foreign = stranger.issue(&claims(now)).unwrap();
        assert!(matches!(
            keys.verify(&foreign, now),
            Err(Error::BadSignature)
        ));

        // alg=none.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let none = format!("{none_header}.{}.", parts[1]);
        assert!(matches!(
            keys.verify(&none, now),
            Err(Error::UnsupportedAlgorithm(_))
        ));

        assert!(matches!(
            keys.verify("a.b", now),
            Err(Error::MalformedJwt(_))
        ));
        assert!(matches!(
            keys.verify("not base64!.x.y", now),
            Err(Error::MalformedJwt(_))
        ));
    }
}
