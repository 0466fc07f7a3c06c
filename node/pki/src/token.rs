//! K3s-format node tokens: `K10<sha256 of CA PEM, hex>::server:<secret>`.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the CA certificate PEM bytes, as carried by K10 tokens.
pub fn ca_hash(ca_cert_pem: &str) -> String {
    hex(&Sha256::digest(ca_cert_pem.as_bytes()))
}

/// Format a full node token for the given CA and secret.
pub fn format_token(ca_cert_pem: &str, secret: &str) -> String {
    format!("K10{}::server:{}", ca_hash(ca_cert_pem), secret)
}

/// Parse a token given on the command line or presented by a joining node.
///
/// Accepts the full K3s form `K10<hash>::<user>:<secret>` (returning `Some(hash)` and the
/// secret) or a bare secret (returning `None` and the secret). Returns `None` for an empty
/// token, a K10 token whose hash is not hex, or an empty secret.
pub fn parse_token(token: &str) -> Option<(Option<String>, String)> {
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if let Some(rest) = token.strip_prefix("K10") {
        if let Some((hash, creds)) = rest.split_once("::") {
            if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            // `<user>:<secret>`; without a user part the whole thing is the secret.
            let secret = creds.split_once(':').map_or(creds, |(_, s)| s);
            if secret.is_empty() {
                return None;
            }
            return Some((Some(hash.to_ascii_lowercase()), secret.to_string()));
        }
    }
    Some((None, token.to_string()))
}

/// A new random secret: 16 random bytes as 32 hex characters (as K3s generates).
pub(crate) fn random_secret() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex(&b)
}

/// Compare two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_bare_tokens() {
        let full = format_token("pem", "s3cret");
        let (hash, secret) = parse_token(&full).unwrap();
        assert_eq!(hash.as_deref(), Some(ca_hash("pem").as_str()));
        assert_eq!(secret, "s3cret");
        assert_eq!(parse_token("  bare\n"), Some((None, "bare".to_string())));
        assert_eq!(parse_token(""), None);
        assert_eq!(parse_token("K10zz::server:x"), None);
        assert_eq!(parse_token("K10ab::server:"), None);
        assert_eq!(
            parse_token("K10ab::node:pw:with:colons"),
            Some((Some("ab".into()), "pw:with:colons".into()))
        );
        assert_eq!(parse_token("K10abc"), Some((None, "K10abc".into())));
    }

    #[test]
    fn token_format() {
        let t = format_token("-----BEGIN CERTIFICATE-----\n", "abc");
        assert!(t.starts_with("K10"));
        let (hash, rest) = t[3..].split_once("::server:").unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(rest, "abc");
        assert_eq!(random_secret().len(), 32);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
