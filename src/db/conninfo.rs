//! Pulls libpq's TLS keys (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) out of a
//! connection string, and hands the rest to tokio-postgres unchanged.
//!
//! tokio-postgres knows `sslmode` only as disable/prefer/require and none of the other keys,
//! so they are taken out here, from both forms libpq accepts: the URL
//! (`postgres://…?sslmode=verify-full&sslrootcert=…`, percent-encoded) and the `key=value`
//! string (values unquoted or in single quotes, `\` escaping the next character). The other
//! parameters are passed on as their original text, so that tokio-postgres sees exactly
//! what it saw before.

use std::borrow::Cow;

/// The TLS keys this module takes out of a connection string.
pub const SSL_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The TLS keys a connection string gave (the last occurrence of a key wins, as in libpq).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SslKeys {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl SslKeys {
    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            _ => &mut self.sslkey,
        };
        // An empty value means "not set", as for libpq.
        *slot = Some(value).filter(|v| !v.is_empty());
    }
}

/// A connection string without its TLS keys, and those keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The string for tokio-postgres.
    pub rest: String,
    pub ssl: SslKeys,
}

/// Splits `s` (a URL or a `key=value` string). The message of an error never quotes the
/// string, which may hold a password.
pub fn split(s: &str) -> Result<Split, String> {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(body) = s.strip_prefix(prefix) {
            return Ok(split_url(prefix, body));
        }
    }
    split_key_value(s)
}

fn split_url(prefix: &str, body: &str) -> Split {
    let mut ssl = SslKeys::default();
    // As tokio-postgres reads a URL: the credentials end at the first '@', the query starts
    // at the first '?' after them.
    let creds_end = body.find('@').map(|i| i + 1).unwrap_or(0);
    let Some(q) = body[creds_end..].find('?').map(|i| i + creds_end) else {
        return Split {
            rest: format!("{prefix}{body}"),
            ssl,
        };
    };
    let mut kept = vec![];
    for param in body[q + 1..].split('&') {
        let taken = param.split_once('=').and_then(|(k, v)| {
            let key = decode(k);
            SSL_KEYS
                .contains(&key.as_ref())
                .then(|| (key.into_owned(), decode(v).into_owned()))
        });
        match taken {
            Some((k, v)) => ssl.set(&k, v),
            None => kept.push(param),
        }
    }
    let mut rest = format!("{prefix}{}", &body[..q]);
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Split { rest, ssl }
}

fn decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// The `key=value` grammar tokio-postgres (and libpq) read: whitespace between parameters
/// and around `=`, a value either in single quotes or up to the next whitespace, `\`
/// escaping the character after it.
fn split_key_value(s: &str) -> Result<Split, String> {
    let mut ssl = SslKeys::default();
    let mut kept: Vec<&str> = vec![];
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && (b[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !(b[i] as char).is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        i = skip_ws(i);
        if b.get(i) != Some(&b'=') {
            return Err(format!("a parameter without \"=\" at byte {start}"));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if b.get(i) == Some(&b'\'') {
            let quote_at = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(format!("an unterminated quoted value at byte {quote_at}")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !(b[i] as char).is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    value.push(b[i + 1]);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        if SSL_KEYS.contains(&key) {
            ssl.set(key, String::from_utf8_lossy(&value).into_owned());
        } else {
            kept.push(&s[start..i]);
        }
    }
    Ok(Split {
        rest: kept.join(" "),
        ssl,
    })
}

/// A value quoted for a libpq `key=value` string.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_keys_are_taken_out_and_decoded() {
        let s = split(
            "postgres://bob:p%40ss@db.example:6543/q?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Fjrq%2Fca%20file.pem&sslcert=/c.crt&sslkey=/c.key",
        )
        .unwrap();
        assert_eq!(
            s.rest,
            "postgres://bob:p%40ss@db.example:6543/q?application_name=x"
        );
        assert_eq!(s.ssl.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.ssl.sslrootcert.as_deref(), Some("/etc/jrq/ca file.pem"));
        assert_eq!(s.ssl.sslcert.as_deref(), Some("/c.crt"));
        assert_eq!(s.ssl.sslkey.as_deref(), Some("/c.key"));
    }

    #[test]
    fn url_without_other_parameters_loses_its_question_mark() {
        let s = split("postgresql://db/q?sslmode=require").unwrap();
        assert_eq!(s.rest, "postgresql://db/q");
        assert_eq!(s.ssl.sslmode.as_deref(), Some("require"));
        let s = split("postgres://u:a?b@db/q").unwrap();
        assert_eq!(s.rest, "postgres://u:a?b@db/q");
        assert_eq!(s.ssl, SslKeys::default());
    }

    #[test]
    fn key_value_keys_are_taken_out_with_libpq_quoting() {
        let s = split(
            "host=db sslmode = verify-ca  password='it''s' sslrootcert='/tmp/my ca\\'s.pem' \
             dbname=q sslkey=/k\\ ey",
        );
        // '' is not an escape in libpq: the quoted value ends, and "s'" starts a new key.
        assert!(s.is_err(), "{s:?}");
        let s = split(
            "host=db sslmode = verify-ca  password='it\\'s' sslrootcert='/tmp/my ca\\'s.pem' \
             dbname=q sslkey=/k\\ ey",
        )
        .unwrap();
        assert_eq!(s.rest, "host=db password='it\\'s' dbname=q");
        assert_eq!(s.ssl.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(s.ssl.sslrootcert.as_deref(), Some("/tmp/my ca's.pem"));
        assert_eq!(s.ssl.sslkey.as_deref(), Some("/k ey"));
        let back: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(back.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn last_key_wins_and_empty_means_unset() {
        let s = split("sslmode=require host=h sslmode=disable sslcert=''").unwrap();
        assert_eq!(s.ssl.sslmode.as_deref(), Some("disable"));
        assert_eq!(s.ssl.sslcert, None);
        assert_eq!(s.rest, "host=h");
    }

    #[test]
    fn errors_never_quote_values() {
        let e = split("host=h password='s3cret").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(split("host").is_err());
    }

    #[test]
    fn quoting_round_trips() {
        let q = quote("a b'c\\d");
        let s = split(&format!("sslrootcert={q}")).unwrap();
        assert_eq!(s.ssl.sslrootcert.as_deref(), Some("a b'c\\d"));
    }
}
