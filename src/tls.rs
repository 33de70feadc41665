//! TLS to Postgres and Redis, over rustls (with the ring provider) only.
//!
//! Managed databases and caches are reached over the network, so their
//! connections must be encryptable and verifiable from the URL alone, the
//! way every Postgres client does it: `sslmode` and `sslrootcert` (plus
//! `sslcert` / `sslkey` for client certificates) in the query of a
//! `postgres://` URL, with libpq's meaning of each mode:
//!
//! | `sslmode` | TLS | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not verified |
//! | `require` | always | not verified; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | chain to a trusted root |
//! | `verify-full` | always | chain, and the host name (or IP) in the URL |
//!
//! Trusted roots are the `sslrootcert` file when given, else the Mozilla
//! roots built in (webpki-roots), so a managed service with a public CA
//! needs no file. The application pools (sqlx) read these parameters
//! themselves; the migration runner (refinery over tokio-postgres) gets them
//! from [`PgTls`], which applies the same rules to its own connector.
//!
//! Redis takes `rediss://` URLs, verified against the same built-in roots or
//! against a CA file named by a setting ([`redis_root_cert`]).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS setting that cannot be used. Never repeats a URL (it may hold a
/// password); file paths are not secret.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// An unknown `sslmode`.
    #[error("invalid sslmode {0:?} (disable, prefer, require, verify-ca or verify-full)")]
    InvalidMode(String),
    /// A certificate or key file that cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file holds (root certificate, client key…).
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A file with no usable certificate or key.
    #[error("no usable {what} in {path}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
    },
    /// Only one of the client certificate and key.
    #[error("sslcert and sslkey go together")]
    HalfClientCert,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS, without checking the server's certificate.
    Require,
    /// TLS, with the server's certificate checked against the roots.
    VerifyCa,
    /// As `VerifyCa`, and the host name must match the certificate.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::InvalidMode(other.to_owned())),
        })
    }
}

/// The TLS parameters of a `postgres://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// As written in the URL (`prefer` when absent).
    pub mode: SslMode,
    /// `sslrootcert`: roots to verify the server with (default: the web PKI).
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: the client certificate.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's key.
    pub client_key: Option<PathBuf>,
}

/// Query parameters only sqlx understands; tokio-postgres rejects unknown
/// ones, so they are removed before the URL reaches it.
const SQLX_ONLY: &[&str] = &["statement-cache-capacity"];

impl PgTls {
    /// Splits a `postgres://` URL into its TLS parameters and the URL
    /// without them (nor the other parameters tokio-postgres does not know).
    pub fn split_url(url: &str) -> Result<(String, PgTls), TlsError> {
        let mut tls = PgTls {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
        };
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = || {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            match key {
                "sslmode" => tls.mode = decoded().parse()?,
                "sslrootcert" => tls.root_cert = Some(decoded().into()),
                "sslcert" => tls.client_cert = Some(decoded().into()),
                "sslkey" => tls.client_key = Some(decoded().into()),
                key if SQLX_ONLY.contains(&key) => {}
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((url, tls))
    }

    /// The mode in force: libpq treats `require` with a root certificate as
    /// `verify-ca`.
    pub fn effective_mode(&self) -> SslMode {
        match self.mode {
            SslMode::Require if self.root_cert.is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }

    /// The rustls configuration implementing [`Self::effective_mode`].
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match self.effective_mode() {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
            SslMode::VerifyCa => {
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider)
                        .build()
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
            }
            SslMode::VerifyFull => builder.with_root_certificates(self.roots()?),
        };
        Ok(match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client certificate")?;
                let key =
                    PrivateKeyDer::from_pem_slice(&read(key, "client key")?).map_err(|_| {
                        TlsError::Pem {
                            what: "private key",
                            path: key.clone(),
                        }
                    })?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => return Err(TlsError::HalfClientCert),
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        match &self.root_cert {
            Some(path) => root_store(path),
            None => Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
        }
    }
}

/// The trusted roots in a PEM file.
pub fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(read_certs(path, "root certificate")?);
    if added == 0 {
        return Err(TlsError::Pem {
            what: "root certificate",
            path: path.to_owned(),
        });
    }
    Ok(store)
}

/// The PEM bytes of the CA file that Redis's certificate is verified
/// against (`SKIPJACK_REDIS_CA_FILE`), checked to hold a certificate.
pub fn redis_root_cert(path: &Path) -> Result<Vec<u8>, TlsError> {
    root_store(path)?;
    read(path, "Redis CA file")
}

/// The process-wide rustls provider (ring): set once, so that libraries
/// that build their own configurations (the Redis client) find it.
pub fn install_provider() {
    // Err only when one is installed already.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
}

fn provider() -> Arc<CryptoProvider> {
    install_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            what,
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// `prefer` and `require` without a root: encryption against passive
/// eavesdroppers, no authentication of the server (libpq's meaning). The
/// handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the
/// certificate is not compared with the host. The webpki verifier checks
/// the chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_tls_parameters_off_the_url() {
        let (url, tls) = PgTls::split_url(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&options=-c%20a%3Db&statement-cache-capacity=0",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db:5432/app?application_name=x&options=-c%20a%3Db"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (url, tls) = PgTls::split_url("postgres://db/app?sslmode=disable").unwrap();
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgres://db/app", SslMode::Disable)
        );
        let (_, tls) = PgTls::split_url("postgres://db/app").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert!(matches!(
            PgTls::split_url("postgres://db/app?sslmode=allow"),
            Err(TlsError::InvalidMode(m)) if m == "allow"
        ));
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let (_, tls) = PgTls::split_url("postgres://db/app?sslmode=require").unwrap();
        assert_eq!(tls.effective_mode(), SslMode::Require);
        let (_, tls) =
            PgTls::split_url("postgres://db/app?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(tls.effective_mode(), SslMode::VerifyCa);
    }
}
