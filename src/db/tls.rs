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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{describe_chain, Error, Result};

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

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
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

fn webpki_verifier(
    root: &RootCert,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    match root {
        RootCert::None => {}
        RootCert::File(path) => {
            for cert in read_certs("sslrootcert", path)? {
                roots.add(cert).map_err(|e| {
                    Error::usage(format!(
                        "sslrootcert file {} holds a certificate that is not a usable CA \
                         certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Error::usage(
                    "sslrootcert=system found no trusted CA certificates on this machine: \
                     install them (apt-get install ca-certificates), or set SSL_CERT_FILE to \
                     a PEM file of CA certificates",
                ));
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::usage(format!("the CA certificates cannot be used: {e}")))
}

/// `prefer`/`require`/`allow` without a CA certificate: the server's certificate is not
/// checked (as in libpq), but its handshake signatures are.
#[derive(Debug)]
struct Unverified {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// `verify-ca`: the chain up to a trusted CA, not the host name. webpki checks the chain
/// first and the name last, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls error somewhere in a connection error's chain of causes.
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// The server answered the SSL request with "no" (tokio-postgres's `Require`).
pub(crate) fn server_refused_ssl(e: &tokio_postgres::Error) -> bool {
    describe_chain(e).contains("server does not support TLS")
}

/// A failure of TLS itself (handshake, certificate, alert), after which `prefer` tries
/// again without it.
pub(crate) fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "error performing TLS handshake" || rustls_error(e).is_some()
}

/// The names a certificate is for, from rustls's `DnsName("x")` / `IpAddress(1.2.3.4)`.
fn presented_names(presented: &[String]) -> String {
    let names: Vec<String> = presented
        .iter()
        .map(|p| {
            let inner = p
                .strip_prefix("DnsName(\"")
                .and_then(|s| s.strip_suffix("\")"))
                .or_else(|| {
                    p.strip_prefix("IpAddress(")
                        .and_then(|s| s.strip_suffix(')'))
                })
                .unwrap_or(p);
            format!("'{inner}'")
        })
        .collect();
    if names.is_empty() {
        "no host name at all".into()
    } else {
        names.join(", ")
    }
}

fn server_name(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn when(t: &UnixTime) -> String {
    chrono::DateTime::from_timestamp(t.as_secs() as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{} s after 1970", t.as_secs()))
}

/// A TLS failure in words an operator can act on, or `None` when `e` is not about TLS.
pub(crate) fn explain(tls: &TlsSettings, e: &tokio_postgres::Error) -> Option<String> {
    let mode = tls.mode;
    if server_refused_ssl(e) {
        return Some(format!(
            "the server does not support SSL (sslmode={mode}): turn ssl on in the server's \
             postgresql.conf, or use sslmode=prefer to allow an unencrypted connection"
        ));
    }
    if describe_chain(e).contains("no hostname provided for TLS handshake") {
        return Some(
            "TLS needs the server's host name: give host=NAME (hostaddr= alone is not enough)"
                .into(),
        );
    }
    let r = rustls_error(e)?;
    let root = tls.describe_root();
    let client = match &tls.client_cert {
        Some(c) => format!("sslcert={}", c.cert.display()),
        None => "no sslcert".into(),
    };
    Some(match r {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a trusted CA ({root}): point \
                 sslrootcert at the CA certificate that signed it (a managed database's \
                 provider publishes it)"
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "the server's certificate is for {}, not '{}' (sslmode={mode}): connect with \
                 a host name the certificate names",
                presented_names(presented),
                server_name(expected)
            ),
            CertificateError::NotValidForName => format!(
                "the server's certificate is not for this host name (sslmode={mode}): connect \
                 with a host name the certificate names"
            ),
            CertificateError::ExpiredContext { not_after, .. } => format!(
                "the server's certificate expired on {}: the server needs a renewed certificate",
                when(not_after)
            ),
            CertificateError::Expired => {
                "the server's certificate has expired: the server needs a renewed certificate"
                    .into()
            }
            CertificateError::NotValidYetContext { not_before, .. } => format!(
                "the server's certificate is valid only from {}: check this machine's clock",
                when(not_before)
            ),
            CertificateError::NotValidYet => {
                "the server's certificate is not valid yet: check this machine's clock".into()
            }
            other => format!("the server's certificate was refused ({other:?}, {root})"),
        },
        rustls::Error::AlertReceived(a) => match a {
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied => format!(
                "the server refused this client's certificate (TLS alert {a:?}, {client}): use \
                 a client certificate signed by a CA the server trusts (its ssl_ca_file)"
            ),
            other => format!("the server ended the TLS handshake (TLS alert {other:?})"),
        },
        other => format!("the TLS handshake failed: {other}"),
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
