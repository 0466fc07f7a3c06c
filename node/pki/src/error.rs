//! The crate's error type.

use std::path::PathBuf;

/// Errors from creating, loading or using the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing or creating a file or directory failed.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen could not generate a key or certificate.
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),
    /// A PEM or DER certificate could not be parsed.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A private key could not be parsed or was rejected.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// A file the PKI needs is missing while its partner exists (e.g. `ca.crt` without `ca.key`).
    #[error("{} exists but {} is missing", present.display(), missing.display())]
    MissingFile {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A `--tls-san` or hostname value is not a valid DNS name.
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    /// The given or persisted node token is malformed.
    #[error("invalid token")]
    InvalidToken,
    /// The given token carries a CA hash that does not match this cluster's CA.
    #[error("token CA hash {given} does not match the cluster CA hash {actual}")]
    TokenCaMismatch {
        /// The hash carried by the token.
        given: String,
        /// The hash of this cluster's CA certificate.
        actual: String,
    },
    /// A client certificate carries no subject common name.
    #[error("certificate has no common name")]
    NoCommonName,
    /// A service account token is malformed (bad encoding, bad JSON, missing claims).
    #[error("malformed service account token: {0}")]
    MalformedJwt(String),
    /// A service account token uses an algorithm other than ES256.
    #[error("unsupported JWT algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A service account token's signature does not verify.
    #[error("service account token signature is invalid")]
    BadSignature,
    /// A service account token was issued by someone else.
    #[error("service account token issuer {0:?} is not accepted")]
    WrongIssuer(String),
    /// A service account token has expired.
    #[error("service account token has expired")]
    Expired,
    /// A service account token is not valid yet (`nbf` in the future).
    #[error("service account token is not valid yet")]
    NotYetValid,
    /// More groups than a certificate subject built here can carry.
    #[error("{0} groups requested; at most 2 are supported")]
    TooManyGroups(usize),
    /// Signing with ring failed.
    #[error("signing failed")]
    Sign,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Generate(e)
    }
}
