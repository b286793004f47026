//! How `spark-fleet` reaches the fleet's MQTT broker: the `--broker` URL
//! and the flags that secure it (`--ca-file`, `--client-cert`,
//! `--client-key`, `--tls-server-name`, `--username`, `--password-file`),
//! turned into `rumqttc::MqttOptions` in one place for every command.
//!
//! Owns checking the flags against the URL, reading the password file, and
//! telling a connection failure that retrying cannot fix (a refused
//! certificate, refused credentials) from one that it may. The TLS set-up
//! itself is the uplink's ([`crate::uplink::tls`]): one verifier for the
//! daemon and the operator's tool. What each command does over the
//! connection is its own module's.
//!
//! **Architecture Invariant:** like `sparkd`, `spark-fleet` has no "accept
//! any certificate" path: `mqtts://` without `--ca-file` is refused before
//! connecting.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions};

use crate::config::{BrokerUrl, BrokerUrlError};
use crate::sys::credentials::CredentialError;
use crate::uplink::tls::{self, ClientAuth, TlsError, TlsSettings};

/// `--broker URL` and how to authenticate to it (flattened into each
/// subcommand's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// mqtt://HOST[:PORT] (default port 1883) or mqtts://HOST[:PORT] (8883, needs --ca-file).
    #[arg(long)]
    pub broker: String,
    #[command(flatten)]
    pub auth: BrokerAuth,
}

/// The flags securing a broker connection, for commands whose `--broker`
/// has a default or comes from elsewhere (`rollout resume`: the state file).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BrokerAuth {
    /// mqtts://: PEM CA bundle that must sign the broker's certificate (no
    /// system roots; required: there is no unverified TLS).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// mqtts://: client certificate chain (PEM) for brokers that require
    /// one (mutual TLS); with --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// mqtts://: the client certificate's private key (PEM); with --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// mqtts://: the name the broker's certificate must carry, when it is not
    /// the host in --broker (e.g. connecting by IP address or through a tunnel).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// MQTT user name.
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the MQTT password (one line; never on the command line);
    /// with --username.
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
}

impl BrokerAuth {
    fn any_tls_flag(&self) -> bool {
        self.ca_file.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.tls_server_name.is_some()
    }
}

/// The MQTT session parameters a command chooses.
#[derive(Debug, Clone)]
pub struct Session<'a> {
    pub client_id: &'a str,
    pub keep_alive: Duration,
    /// Largest packet read.
    pub max_incoming: usize,
    /// Largest packet sent.
    pub max_outgoing: usize,
}

/// Why `spark-fleet` cannot connect, or stopped trying.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("--broker")]
    Url(#[source] BrokerUrlError),
    #[error(
        "--broker {url} is TLS (mqtts://) but --ca-file is not given: the broker's certificate could not be verified \
         (spark-fleet never connects to an unverified broker)"
    )]
    NoCaFile { url: String },
    #[error(
        "--ca-file, --client-cert, --client-key and --tls-server-name are for mqtts:// brokers; \
         --broker {url} is plain mqtt://"
    )]
    TlsFlagsWithoutTls { url: String },
    #[error("setting up TLS for {url} (--ca-file, --client-cert, --client-key, --tls-server-name)")]
    Tls {
        url: String,
        // Boxed here and below: every command's error enum carries this one.
        #[source]
        source: Box<TlsError>,
    },
    #[error("reading the MQTT password (--password-file)")]
    Password(#[source] CredentialError),
    #[error("TLS with {url} failed: {reason}")]
    Handshake {
        url: String,
        reason: &'static str,
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("the broker {url} refused the connection ({code:?}): check --username and --password-file")]
    NotAuthorized { url: String, code: ConnectReturnCode },
}

/// The options for one connection to `url` secured by `auth`: plain TCP for
/// `mqtt://`; for `mqtts://`, the uplink's TLS client config (every file
/// read now, so a bad one fails before connecting).
pub fn mqtt_options(url: &str, auth: &BrokerAuth, session: &Session<'_>) -> Result<MqttOptions, BrokerError> {
    let parsed = BrokerUrl::parse(url).map_err(BrokerError::Url)?;
    let transport = if parsed.tls {
        let Some(ca_file) = auth.ca_file.clone() else {
            return Err(BrokerError::NoCaFile { url: url.to_string() });
        };
        let settings = TlsSettings {
            ca_file,
            client_auth: match (&auth.client_cert, &auth.client_key) {
                (Some(cert), Some(key)) => Some(ClientAuth { cert_file: cert.clone(), key_file: key.clone() }),
                // One without the other: clap refuses it; the uplink says so too.
                (Some(cert), None) => Some(ClientAuth { cert_file: cert.clone(), key_file: PathBuf::new() }),
                (None, Some(key)) => Some(ClientAuth { cert_file: PathBuf::new(), key_file: key.clone() }),
                (None, None) => None,
            },
            server_name: auth.tls_server_name.clone(),
        };
        let config = tls::client_config(&settings)
            .map_err(|source| BrokerError::Tls { url: url.to_string(), source: Box::new(source) })?;
        Some(tls::transport(config))
    } else {
        // A CA file given for a plain URL: the operator believes the link is
        // encrypted; it would not be.
        if auth.any_tls_flag() {
            return Err(BrokerError::TlsFlagsWithoutTls { url: url.to_string() });
        }
        None
    };
    let mut opts = MqttOptions::new(session.client_id, parsed.host, parsed.port);
    opts.set_keep_alive(session.keep_alive);
    opts.set_max_packet_size(session.max_incoming, session.max_outgoing);
    if let Some(t) = transport {
        opts.set_transport(t);
    }
    if let Some(user) = &auth.username {
        let password = match &auth.password_file {
            Some(p) => crate::sys::credentials::read_secret(p).map_err(BrokerError::Password)?,
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    Ok(opts)
}

impl BrokerArgs {
    /// [`mqtt_options`] for `--broker` and its flags.
    pub fn mqtt_options(&self, session: &Session<'_>) -> Result<MqttOptions, BrokerError> {
        mqtt_options(&self.broker, &self.auth, session)
    }
}

/// A connection failure that reconnecting will not fix, as the error to stop
/// with: the TLS handshake failed (the broker's certificate, its name, our
/// client certificate) or the broker refused the credentials. `None`: a
/// network or protocol failure, worth retrying.
pub fn permanent_failure(url: &str, e: &ConnectionError) -> Option<BrokerError> {
    if let Some(source) = tls::rustls_error(e) {
        return Some(BrokerError::Handshake {
            url: url.to_string(),
            reason: explain(source),
            source: Box::new(source.clone()),
        });
    }
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => Some(BrokerError::NotAuthorized { url: url.to_string(), code: *code }),
        _ => None,
    }
}

/// A TLS failure in the operator's words (the flags, not `sparkd`'s config keys).
fn explain(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    match e {
        R::InvalidCertificate(C::UnknownIssuer) => "the broker's certificate is not signed by a CA in --ca-file",
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the broker's certificate is not issued for the name checked (--tls-server-name, else the host in --broker)"
        }
        R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the broker's certificate has expired (or this machine's clock is wrong)"
        }
        R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet (or this machine's clock is wrong)"
        }
        R::InvalidCertificate(_) => "the broker's certificate was rejected",
        R::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied) => {
            "the broker rejected the client certificate (--client-cert): is it signed by a CA the broker trusts?"
        }
        R::AlertReceived(A::CertificateRequired) => {
            "the broker requires a client certificate (--client-cert and --client-key)"
        }
        R::AlertReceived(A::HandshakeFailure) => {
            "the broker ended the TLS handshake: does it require a client certificate (--client-cert), \
             or share no cipher suite?"
        }
        R::AlertReceived(A::CertificateExpired) => "the broker says the client certificate has expired",
        R::AlertReceived(A::CertificateRevoked) => "the broker says the client certificate is revoked",
        R::InvalidMessage(_) => "the broker did not answer with TLS: is the port a plain mqtt:// listener?",
        _ => "the TLS handshake failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session<'static> {
        Session { client_id: "t", keep_alive: Duration::from_secs(30), max_incoming: 1 << 20, max_outgoing: 1 << 16 }
    }

    #[test]
    fn mqtts_without_a_ca_file_is_refused_naming_the_flag() {
        let err = mqtt_options("mqtts://broker.example", &BrokerAuth::default(), &session()).unwrap_err();
        assert!(matches!(err, BrokerError::NoCaFile { .. }), "{err:?}");
        assert!(err.to_string().contains("--ca-file"), "{err}");
    }

    #[test]
    fn tls_flags_on_a_plain_url_are_refused() {
        let auth = BrokerAuth { ca_file: Some("/etc/ca.pem".into()), ..BrokerAuth::default() };
        let err = mqtt_options("mqtt://broker.example", &auth, &session()).unwrap_err();
        assert!(matches!(err, BrokerError::TlsFlagsWithoutTls { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_ca_file_is_a_tls_error_naming_the_file() {
        let auth = BrokerAuth { ca_file: Some("/nonexistent/ca.pem".into()), ..BrokerAuth::default() };
        let err = mqtt_options("mqtts://broker.example", &auth, &session()).unwrap_err();
        assert!(
            matches!(&err, BrokerError::Tls { source, .. } if matches!(**source, TlsError::Read { .. })),
            "{err:?}"
        );
        assert!(crate::error_chain(&err).contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn plain_options_carry_the_session_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let auth = BrokerAuth { username: Some("ops".into()), password_file: Some(pw), ..BrokerAuth::default() };
        let o = mqtt_options("mqtt://127.0.0.1:1999", &auth, &session()).unwrap();
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1999));
        assert_eq!(o.client_id(), "t");
        assert_eq!(o.keep_alive(), Duration::from_secs(30));
        assert_eq!(o.max_packet_size(), 1 << 20);
        let login = o.credentials().expect("credentials set");
        assert_eq!((login.username.as_str(), login.password.as_str()), ("ops", "s3cret"));
    }

    #[test]
    fn an_unreadable_password_file_is_an_error_not_an_empty_password() {
        let auth = BrokerAuth {
            username: Some("ops".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..BrokerAuth::default()
        };
        let err = mqtt_options("mqtt://h", &auth, &session()).unwrap_err();
        assert!(matches!(err, BrokerError::Password(_)), "{err:?}");
    }

    #[test]
    fn refused_credentials_are_permanent_and_network_errors_are_not() {
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(matches!(permanent_failure("mqtt://h", &e), Some(BrokerError::NotAuthorized { .. })));
        let e = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(permanent_failure("mqtt://h", &e).is_none());
        let e = ConnectionError::NetworkTimeout;
        assert!(permanent_failure("mqtt://h", &e).is_none());
    }
}
