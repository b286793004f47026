//! TLS for the MQTT uplink (`mqtts://`): builds the rustls client config from
//! PEM files and explains TLS failures in words.
//!
//! Owns reading the CA bundle, the client certificate chain and its key, and
//! how the broker's certificate is checked (chain to `mqtt.ca_file`, name
//! `mqtt.tls_server_name` or the URL's host). Knows nothing about MQTT
//! sessions: the uplink hands the result to rumqttc as its transport.
//!
//! **Architecture Invariant:** there is no "accept any certificate" path. An
//! `mqtts://` URL without a usable CA bundle is a start failure.
//!
//! The crypto provider is *ring*, chosen per config (rumqttc is built with
//! `use-rustls-no-provider`, and no process-wide default is installed).
//!
//! Server name: rumqttc 0.25 always passes the URL's host to rustls, both as
//! SNI and as the name to verify; it has no override. When
//! `tls_server_name` is set, [`FixedNameVerifier`] verifies the certificate
//! against that name instead (the full webpki check, only the name differs).
//! SNI still carries the URL's host (none for an IP address).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What `mqtts://` needs, resolved from `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM CA bundle that must sign the broker's certificate.
    pub ca_file: PathBuf,
    /// Client certificate chain (PEM) and its key for mutual TLS.
    pub client_auth: Option<ClientAuth>,
    /// Name the broker's certificate must carry; `None`: the URL's host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub cert_file: PathBuf,
    /// Already resolved through [`credential_path`].
    pub key_file: PathBuf,
}

impl TlsSettings {
    /// From the `[mqtt]` keys. The key file is a credential: a relative name
    /// is looked up in `$CREDENTIALS_DIRECTORY` first.
    pub fn from_config(mqtt: &crate::config::MqttConfig) -> Self {
        let set = |p: &Path| !p.as_os_str().is_empty();
        Self {
            ca_file: mqtt.ca_file.clone(),
            client_auth: (set(&mqtt.client_cert_file) || set(&mqtt.client_key_file)).then(|| ClientAuth {
                cert_file: mqtt.client_cert_file.clone(),
                key_file: credential_path(&mqtt.client_key_file),
            }),
            server_name: (!mqtt.tls_server_name.is_empty()).then(|| mqtt.tls_server_name.clone()),
        }
    }
}

pub use crate::sys::credentials::credential_path;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "mqtt.url is mqtts:// but mqtt.ca_file is not set: the broker's certificate could not be verified \
         (sparkd never accepts an unverified broker)"
    )]
    NoCaFile,
    #[error("mqtt.client_cert_file and mqtt.client_key_file go together; only one is set")]
    HalfClientAuth,
    #[error("reading the {what} {path}")]
    Read {
        what: FileKind,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} is not valid PEM")]
    Pem {
        what: FileKind,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} {path} holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` section)")]
    NoCertificate { what: FileKind, path: PathBuf },
    #[error("the CA file (mqtt.ca_file) {path}: certificate #{index} is not a usable CA certificate")]
    BadCaCertificate {
        path: PathBuf,
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("the client key (mqtt.client_key_file) {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the client key (mqtt.client_key_file) {path} is not a usable private key")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client certificate (mqtt.client_cert_file) {path} is not a usable certificate")]
    BadClientCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client key (mqtt.client_key_file) {key} does not belong to the client certificate {cert}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("mqtt.tls_server_name {name:?} is not a DNS name or IP address")]
    BadServerName { name: String },
    #[error("setting up TLS")]
    Setup(#[source] rustls::Error),
}

/// Which file an error is about, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    CaFile,
    ClientCert,
    ClientKey,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CaFile => "CA file (mqtt.ca_file)",
            Self::ClientCert => "client certificate (mqtt.client_cert_file)",
            Self::ClientKey => "client key (mqtt.client_key_file)",
        })
    }
}

/// Builds the client config: TLS 1.2/1.3 with ring, the broker verified
/// against `ca_file` only (no system roots), and the client certificate when
/// given. Reads every file now, so a bad one is a start failure.
pub fn client_config(s: &TlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
    if s.ca_file.as_os_str().is_empty() {
        return Err(TlsError::NoCaFile);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(root_store(&s.ca_file)?);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match &s.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.as_str())
                .map_err(|_| TlsError::BadServerName { name: name.clone() })?
                .to_owned();
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Setup(rustls::Error::General(e.to_string())))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(FixedNameVerifier { inner, name }))
        }
    };
    let config = match &s.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            if auth.cert_file.as_os_str().is_empty() || auth.key_file.as_os_str().is_empty() {
                return Err(TlsError::HalfClientAuth);
            }
            let chain = certificates(&auth.cert_file, FileKind::ClientCert)?;
            let key = private_key(&auth.key_file)?;
            // Load the key first on its own so a bad key and a key that does
            // not match the certificate are told apart.
            provider
                .key_provider
                .load_private_key(key.clone_key())
                .map_err(|source| TlsError::BadKey { path: auth.key_file.clone(), source })?;
            builder.with_client_auth_cert(chain, key).map_err(|source| match source {
                rustls::Error::InconsistentKeys(_) => {
                    TlsError::KeyMismatch { cert: auth.cert_file.clone(), key: auth.key_file.clone(), source }
                }
                source => TlsError::BadClientCertificate { path: auth.cert_file.clone(), source },
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The rumqttc transport for a built config.
pub fn transport(config: Arc<ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config))
}

/// Largest PEM file read: a full system CA bundle is about 200 KiB.
const MAX_PEM_BYTES: u64 = 4 << 20;

fn read_file(path: &Path, what: FileKind) -> Result<Vec<u8>, TlsError> {
    crate::sys::capped_read::read_capped(path, MAX_PEM_BYTES).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path, what: FileKind) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(path, FileKind::CaFile)?.into_iter().enumerate() {
        // Every certificate must parse: a bundle half-ignored is a
        // configuration error found later, the hard way.
        roots.add(cert).map_err(|source| TlsError::BadCaCertificate {
            path: path.to_path_buf(),
            index: i + 1,
            source,
        })?;
    }
    Ok(roots)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, FileKind::ClientKey)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey { path: path.to_path_buf() }),
        Err(source) => Err(TlsError::Pem { what: FileKind::ClientKey, path: path.to_path_buf(), source }),
    }
}

/// Verifies the broker's certificate exactly as rustls's webpki verifier
/// does, but against the configured name rather than the name rumqttc passes
/// (the URL's host).
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// The rustls error anywhere in `e`'s source chain (rumqttc wraps rustls's
/// error in `io::Error`s, whose `source()` skips it, so each `io::Error` is
/// opened with `get_ref`).
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        if tls.is_some() {
            return tls;
        }
        cur = err.source();
    }
    None
}

/// A plain-words reason for a TLS failure found anywhere in `e`'s source chain.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    Some(match rustls_error(e)? {
        R::InvalidCertificate(C::UnknownIssuer) => "the broker's certificate is not signed by a CA in mqtt.ca_file",
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the broker's certificate is not issued for the name sparkd checks \
             (mqtt.tls_server_name, else the host in mqtt.url)"
        }
        R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the broker's certificate has expired (or this device's clock is wrong)"
        }
        R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet (is this device's clock set?)"
        }
        R::InvalidCertificate(_) => "the broker's certificate was rejected",
        R::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied) => {
            "the broker rejected sparkd's client certificate (mqtt.client_cert_file): \
             is it signed by a CA the broker trusts?"
        }
        R::AlertReceived(A::CertificateRequired) => {
            "the broker requires a client certificate (set mqtt.client_cert_file and mqtt.client_key_file)"
        }
        R::AlertReceived(A::HandshakeFailure) => {
            "the broker ended the TLS handshake: does it require a client certificate, \
             or share no cipher suite with sparkd?"
        }
        R::AlertReceived(A::CertificateExpired) => "the broker says sparkd's client certificate has expired",
        R::AlertReceived(A::CertificateRevoked) => "the broker says sparkd's client certificate is revoked",
        R::AlertReceived(A::ProtocolVersion) => "the broker speaks no TLS version sparkd accepts (1.2, 1.3)",
        R::InvalidMessage(_) => "the broker did not answer with TLS: is the port a plain mqtt:// listener?",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ca: &Path) -> TlsSettings {
        TlsSettings { ca_file: ca.to_path_buf(), client_auth: None, server_name: None }
    }

    #[test]
    fn no_ca_file_is_refused() {
        let err = client_config(&settings(Path::new(""))).unwrap_err();
        assert!(matches!(err, TlsError::NoCaFile), "{err}");
    }

    #[test]
    fn unreadable_ca_file_names_the_file() {
        let err = client_config(&settings(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert_eq!(err.to_string(), "reading the CA file (mqtt.ca_file) /nonexistent/ca.pem");
    }

    #[test]
    fn a_ca_file_naming_an_endless_file_is_refused_with_the_cap() {
        let err = client_config(&settings(Path::new("/dev/zero"))).unwrap_err();
        let TlsError::Read { source, .. } = &err else { panic!("{err:?}") };
        assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(source.to_string().contains(&MAX_PEM_BYTES.to_string()), "{source}");
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "just text\n").unwrap();
        let err = client_config(&settings(&p)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { what: FileKind::CaFile, .. }), "{err}");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }

    #[test]
    fn garbage_inside_a_certificate_section_is_a_pem_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        let err = client_config(&settings(&p)).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. } | TlsError::BadCaCertificate { .. }), "{err:?}");
    }

    #[test]
    fn absolute_credential_names_are_never_redirected() {
        assert_eq!(credential_path(Path::new("/etc/sparkd/key.pem")), PathBuf::from("/etc/sparkd/key.pem"));
    }
}
