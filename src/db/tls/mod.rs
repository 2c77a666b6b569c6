//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` on rustls
//! (the ring provider; no OpenSSL).
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow` | only when the server refuses an unencrypted session | as `require` |
//! | `prefer` (default) | when the server supports it; else (and when TLS fails) not | as `require` |
//! | `require` | always | not, unless a CA certificate file is there: then as `verify-ca` |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the host name |
//!
//! The CA certificates are `sslrootcert` (a PEM file), its default
//! `~/.postgresql/root.crt` when that exists, or `sslrootcert=system` (the system's trusted
//! CAs; `SSL_CERT_FILE`/`SSL_CERT_DIR` override where they are read from), which makes
//! `verify-full` the default and refuses weaker modes. The client certificate is `sslcert` /
//! `sslkey`, by default `~/.postgresql/postgresql.crt` / `.key` when the certificate file
//! exists. As in libpq, TLS is never used over a Unix socket.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

mod explain;
mod verify;

pub(crate) use explain::{explain, is_tls_failure};
use verify::{webpki_verifier, ChainOnly, Unverified};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Every mode, weakest first.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode named `s`, if any.
    pub fn parse(s: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CA certificates that sign the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// None given and no `~/.postgresql/root.crt`: the certificate is not checked (only
    /// possible below `verify-ca`).
    None,
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The system's trusted CAs (`sslrootcert=system`).
    System,
}

/// A client certificate and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS settings of a connection configuration, resolved (defaults applied, files
/// found) but not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: RootCert,
    pub client_cert: Option<ClientCert>,
}

impl Default for TlsSettings {
    /// libpq's default without any files: `prefer`.
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: RootCert::None,
            client_cert: None,
        }
    }
}

/// One given setting and where it came from (`sslmode` in the address, or `PGSSLMODE`).
#[derive(Debug, Clone)]
pub struct Given {
    pub value: String,
    pub from: &'static str,
}

/// The TLS settings as given, before defaults.
#[derive(Debug, Clone, Default)]
pub struct GivenTls {
    pub sslmode: Option<Given>,
    pub sslrootcert: Option<Given>,
    pub sslcert: Option<Given>,
    pub sslkey: Option<Given>,
}

fn valid_modes() -> String {
    let names: Vec<&str> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
    format!(
        "{} or {}",
        names[..names.len() - 1].join(", "),
        names[names.len() - 1]
    )
}

impl TlsSettings {
    /// Applies libpq's defaults to the given settings; `home` is where `~/.postgresql` is.
    /// Checks that the files named exist, without reading them.
    pub fn resolve(given: &GivenTls, home: Option<&Path>) -> Result<TlsSettings> {
        let mode = match &given.sslmode {
            Some(g) => Some(SslMode::parse(&g.value).ok_or_else(|| {
                Error::usage(format!(
                    "{} '{}' is not an SSL mode: use {}",
                    g.from,
                    g.value,
                    valid_modes()
                ))
            })?),
            None => None,
        };
        if mode == Some(SslMode::Disable) {
            // Nothing is read: libpq never looks at the files without TLS.
            return Ok(TlsSettings {
                mode: SslMode::Disable,
                root_cert: RootCert::None,
                client_cert: None,
            });
        }
        let dot = home.map(|h| h.join(".postgresql"));
        let root_cert = match &given.sslrootcert {
            Some(g) if g.value == "system" => RootCert::System,
            Some(g) => RootCert::File(existing_file(g.from, &g.value)?),
            None => match dot.as_ref().map(|d| d.join("root.crt")) {
                Some(p) if p.exists() => RootCert::File(p),
                _ => RootCert::None,
            },
        };
        let mode = match (mode, &root_cert) {
            (None, RootCert::System) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
            (Some(m), RootCert::System) if m != SslMode::VerifyFull => {
                return Err(Error::usage(format!(
                    "sslmode={m} may not be used with sslrootcert=system: any site can get a \
                     certificate the system trusts, so only sslmode=verify-full protects here"
                )))
            }
            (Some(m), _) => m,
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert == RootCert::None {
            let default = dot
                .map(|d| d.join("root.crt").display().to_string())
                .unwrap_or_else(|| "~/.postgresql/root.crt".into());
            return Err(Error::usage(format!(
                "sslmode={mode} needs the CA certificate that signed the server's certificate, \
                 and there is none: set sslrootcert (or PGSSLROOTCERT) to its file, put it in \
                 {default}, or use sslrootcert=system for the system's trusted CAs"
            )));
        }
        let cert = match &given.sslcert {
            Some(g) => Some(existing_file(g.from, &g.value)?),
            None => dot
                .as_ref()
                .map(|d| d.join("postgresql.crt"))
                .filter(|p| p.exists()),
        };
        let client_cert = match (cert, &given.sslkey) {
            (Some(cert), Some(k)) => Some(ClientCert {
                cert,
                key: existing_file(k.from, &k.value)?,
            }),
            (Some(cert), None) => {
                let key = dot
                    .as_ref()
                    .map(|d| d.join("postgresql.key"))
                    .filter(|p| p.exists())
                    .ok_or_else(|| {
                        Error::usage(format!(
                            "the client certificate {} has no private key: set sslkey (or \
                             PGSSLKEY) to its key file",
                            cert.display()
                        ))
                    })?;
                Some(ClientCert { cert, key })
            }
            (None, Some(k)) => {
                return Err(Error::usage(format!(
                    "{} is set but there is no client certificate: set sslcert (or PGSSLCERT) \
                     to the certificate of that key",
                    k.from
                )))
            }
            (None, None) => None,
        };
        Ok(TlsSettings {
            mode,
            root_cert,
            client_cert,
        })
    }

    /// What the server's certificate is checked against, for messages.
    pub fn describe_root(&self) -> String {
        match &self.root_cert {
            RootCert::None => "no sslrootcert".into(),
            RootCert::File(p) => format!("sslrootcert={}", p.display()),
            RootCert::System => "sslrootcert=system: the system's trusted CAs".into(),
        }
    }

    /// The rustls connector these settings call for: reads the certificate and key files
    /// (a file that cannot be read or parsed is a usage error naming it). Build it once per
    /// configuration; connections share it.
    pub fn connector(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::usage(format!("TLS is not available: {e}")))?;
        let algs = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable => Arc::new(Unverified { algs }),
            _ => match &self.root_cert {
                RootCert::None => Arc::new(Unverified { algs }),
                root => {
                    let webpki = webpki_verifier(root, &provider)?;
                    if self.mode == SslMode::VerifyFull {
                        webpki
                    } else {
                        Arc::new(ChainOnly { inner: webpki })
                    }
                }
            },
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (self.mode, &self.client_cert) {
            (SslMode::Disable, _) | (_, None) => builder.with_no_client_auth(),
            (_, Some(cc)) => {
                let chain = read_certs("sslcert", &cc.cert)?;
                let key = read_key(&cc.key)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::usage(format!(
                        "the client certificate {} and key {} cannot be used together ({e}): \
                         check that the key belongs to the certificate",
                        cc.cert.display(),
                        cc.key.display()
                    ))
                })?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The path `value` of setting `from`, which must name an existing file.
fn existing_file(from: &str, value: &str) -> Result<PathBuf> {
    let path = PathBuf::from(value);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(Error::usage(format!(
            "{from} {value} is not a file: point it at a PEM file"
        ))),
        Err(e) => Err(Error::usage(format!(
            "{from} {value} cannot be read: {e}: point it at a PEM file"
        ))),
    }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::usage(format!(
            "{what} file {} cannot be read: {e}",
            path.display()
        ))
    })
}

pub(super) fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(what, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::usage(format!(
                "{what} file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::usage(format!(
            "{what} file {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a private key, refusing one that others may read, as libpq does.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::usage(format!(
            "sslkey file {} cannot be read: {e}",
            path.display()
        ))
    })?;
    let mode = meta.mode();
    let too_open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(Error::usage(format!(
            "sslkey file {} has group or world access (mode {:o}): run chmod 600 on it (0640 \
             at most if root owns it)",
            path.display(),
            mode & 0o777
        )));
    }
    let bytes = read_file("sslkey", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        Error::usage(format!(
            "sslkey file {} holds no usable private key ({e}): expected an unencrypted PEM key \
             (PKCS#8, RSA or EC)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(mode: Option<&str>, root: Option<&str>) -> GivenTls {
        GivenTls {
            sslmode: mode.map(|v| Given {
                value: v.into(),
                from: "sslmode",
            }),
            sslrootcert: root.map(|v| Given {
                value: v.into(),
                from: "sslrootcert",
            }),
            ..Default::default()
        }
    }

    #[test]
    fn modes_round_trip_and_unknown_ones_list_the_valid() {
        for m in SslMode::ALL {
            assert_eq!(SslMode::parse(m.as_str()), Some(m));
        }
        let e = TlsSettings::resolve(&given(Some("verify_full"), None), None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "sslmode 'verify_full' is not an SSL mode: use disable, allow, prefer, require, \
             verify-ca or verify-full"
        );
    }

    #[test]
    fn defaults_follow_libpq() {
        let home = tempfile::tempdir().unwrap();
        let t = TlsSettings::resolve(&given(None, None), Some(home.path())).unwrap();
        assert_eq!(t, TlsSettings::default());
        // A root.crt in ~/.postgresql is used by default.
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        let root = home.path().join(".postgresql/root.crt");
        std::fs::write(&root, "x").unwrap();
        let t = TlsSettings::resolve(&given(Some("require"), None), Some(home.path())).unwrap();
        assert_eq!(t.root_cert, RootCert::File(root));
        // system: verify-full by default, weaker modes refused.
        let t = TlsSettings::resolve(&given(None, Some("system")), None).unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        let e = TlsSettings::resolve(&given(Some("verify-ca"), Some("system")), None).unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        // disable reads nothing, also not a missing file.
        let t = TlsSettings::resolve(&given(Some("disable"), Some("/nonexistent")), None).unwrap();
        assert_eq!(t.root_cert, RootCert::None);
    }

    #[test]
    fn verify_without_a_ca_or_with_a_missing_file_is_a_usage_error() {
        let home = tempfile::tempdir().unwrap();
        let e =
            TlsSettings::resolve(&given(Some("verify-full"), None), Some(home.path())).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let e = TlsSettings::resolve(&given(Some("require"), Some("/no/such/ca.pem")), None)
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");
    }
}
