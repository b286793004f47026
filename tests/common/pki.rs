//! Test certificates made with the `openssl` CLI, for the TLS broker rig
//! (`Broker::start_tls`): shared by `mqtt_tls` (sparkd) and `fleet_tls`
//! (spark-fleet).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::TlsListener;

/// Test certificates in a temp dir: a test CA, a server certificate for
/// `localhost`/127.0.0.1 (`server`), one for `broker.example`
/// (`other-server`), a client certificate (`client`), and an unrelated CA
/// (`rogue-ca`) with a client certificate of its own (`rogue-client`).
/// `cert(name)` is `name.pem`, `key(name)` is `name.key`.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let pki = Pki { dir: tempfile::tempdir().expect("tempdir") };
        pki.ca("ca", "spark-test-ca");
        pki.ca("rogue-ca", "rogue-test-ca");
        pki.leaf("server", "ca", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth");
        pki.leaf(
            "other-server",
            "ca",
            "broker.example",
            "subjectAltName=DNS:broker.example\nextendedKeyUsage=serverAuth",
        );
        pki.leaf("client", "ca", "test-dev", "extendedKeyUsage=clientAuth");
        pki.leaf("rogue-client", "rogue-ca", "test-dev", "extendedKeyUsage=clientAuth");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.key"))
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("openssl is not installed: run scripts/setup.sh");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn ca(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, cn: &str, ext: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        let ext_file = format!("{name}.ext");
        std::fs::write(
            self.path(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n"),
        )
        .expect("write ext");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ]);
    }

    /// The broker's listener: server certificate `server`, clients must
    /// present a certificate from `ca`.
    pub fn listener<'a>(&'a self, server_cert: &'a Path, server_key: &'a Path, ca: &'a Path) -> TlsListener<'a> {
        TlsListener { cafile: ca, certfile: server_cert, keyfile: server_key, require_certificate: true }
    }
}

/// A path as a TOML string.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// `[mqtt]` keys for mutual TLS: trust `ca`, present `client`'s certificate.
pub fn mtls_keys(pki: &Pki, ca: &str, client: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ca_file", toml_path(&pki.cert(ca))),
        ("client_cert_file", toml_path(&pki.cert(client))),
        ("client_key_file", toml_path(&pki.key(client))),
    ]
}
