//! A failed TLS connection explained: which check refused the server's certificate, the
//! names it was issued for, and what to change.

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError};

use super::TlsSettings;
use crate::error::describe_chain;

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
