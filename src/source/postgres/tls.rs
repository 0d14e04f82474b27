//! TLS for PostgreSQL: libpq's `sslmode` and `sslrootcert` options read the way batchsync
//! applies them ([`Tls`]), and the rustls connector of each mode (see the parent module's doc).
//!
//! Invariant: a certificate is checked in full or not relied on at all. `require`, `verify-ca`
//! and `verify-full` check the chain and the host name; `prefer` encrypts without checking
//! either and trusts the server no more than plain TCP would (`Tls` says why that is sound).

use super::db::{self, Tls};
use super::SourceError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS options of a connection string, taken out of it: what is left is for
/// tokio-postgres to parse (it does not take `verify-ca`, `verify-full` or `sslrootcert`).
#[derive(Debug, PartialEq)]
pub(super) struct Options {
    pub url: String,
    pub tls: Tls,
    pub rootcert: Option<PathBuf>,
}

/// Reads `sslmode` (the last one wins, as in libpq; `prefer` when there is none) and
/// `sslrootcert` from a URL or a key-value string; an `sslmode` word batchsync does not
/// take is an error.
pub(super) fn options(url: &str) -> Result<Options, String> {
    let keys = ["sslmode", "sslrootcert"];
    let (url, params) = if url.contains("://") {
        db::take_url_params(url, &keys)
    } else {
        take_key_values(url, &keys)
    };
    let mut tls = Tls::Opportunistic;
    let mut rootcert = None;
    for (key, value) in params {
        if key == "sslmode" {
            tls = Tls::from_sslmode(&value).ok_or_else(|| {
                format!(
                    "sslmode={value} is not one batchsync takes: disable, prefer, require, \
                     verify-ca or verify-full"
                )
            })?;
        } else {
            rootcert = Some(PathBuf::from(value));
        }
    }
    Ok(Options { url, tls, rootcert })
}

/// The pairs of a libpq key-value string named in `keys`, taken out (values unquoted), and
/// the string without them. A string that does not parse is returned whole, for
/// tokio-postgres to report.
fn take_key_values(s: &str, keys: &[&str]) -> (String, Vec<(String, String)>) {
    let Some(pairs) = key_values(s) else {
        return (s.to_string(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for (span, key, value) in pairs {
        if keys.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(&s[span]);
        }
    }
    (kept.join(" "), taken)
}

/// `key = value` pairs as libpq reads them: a value is bare up to the next space, or single
/// quoted; a backslash escapes the next character in either. Each with its span in `s`.
fn key_values(s: &str) -> Option<Vec<(std::ops::Range<usize>, String, String)>> {
    let b = s.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        if i == b.len() {
            return Some(pairs);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_string();
        i = skip_space(i);
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_space(i + 1);
        let mut value = Vec::new();
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        loop {
            match b.get(i) {
                None if quoted => return None,
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') if i + 1 < b.len() => {
                    value.push(b[i + 1]);
                    i += 2;
                }
                Some(&c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push((start..i, key, String::from_utf8_lossy(&value).into_owned()));
    }
}

/// The connector for `tls`: none for `disable`; for `prefer`, one that encrypts without
/// checking the certificate; for the others, one that checks the chain against `rootcert`'s
/// certificates (else the Mozilla roots) and the name against the host.
pub(super) fn connector(
    what: &str,
    tls: Tls,
    rootcert: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, SourceError> {
    tls.check_rootcert(what, rootcert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Config {
            what: what.to_string(),
            message: format!("cannot set up TLS: {e}"),
        })?;
    let config = match tls {
        Tls::Off => return Ok(None),
        Tls::Opportunistic => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        Tls::Verified => {
            let mut roots = rustls::RootCertStore::empty();
            match rootcert {
                Some(path) => {
                    for cert in db::root_certificates(what, path)? {
                        roots.add(cert).map_err(|e| SourceError::Config {
                            what: what.to_string(),
                            message: format!("sslrootcert {}: {e}", path.display()),
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// `prefer`'s verifier: the handshake's signatures are checked (the server holds the key of
/// the certificate it shows, so the session keys are its own), the certificate is not.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("postgres://u@h/db", "postgres://u@h/db", Tls::Opportunistic, None)]
    #[case(
        "postgres://u@h/db?sslmode=verify-full",
        "postgres://u@h/db",
        Tls::Verified,
        None
    )]
    #[case(
        "postgres://u@h/db?sslrootcert=/ca.pem&sslmode=verify-ca&connect_timeout=3",
        "postgres://u@h/db?connect_timeout=3",
        Tls::Verified,
        Some("/ca.pem")
    )]
    #[case(
        "postgres://u@h/db?sslmode=require&sslmode=disable",
        "postgres://u@h/db",
        Tls::Off,
        None
    )]
    #[case(
        "postgres://u@h/db?sslmode=prefer",
        "postgres://u@h/db",
        Tls::Opportunistic,
        None
    )]
    #[case(
        "host=h user=u sslmode=verify-full",
        "host=h user=u",
        Tls::Verified,
        None
    )]
    #[case(
        "host=h password='a b\\'c' sslrootcert = 'my ca.pem' sslmode=require dbname=d",
        "host=h password='a b\\'c' dbname=d",
        Tls::Verified,
        Some("my ca.pem")
    )]
    #[case("host=h user=u", "host=h user=u", Tls::Opportunistic, None)]
    fn libpq_tls_options_are_taken_out(
        #[case] url: &str,
        #[case] rest: &str,
        #[case] tls: Tls,
        #[case] rootcert: Option<&str>,
    ) {
        assert_eq!(
            options(url).unwrap(),
            Options {
                url: rest.into(),
                tls,
                rootcert: rootcert.map(PathBuf::from)
            }
        );
    }

    #[test]
    fn an_sslmode_batchsync_does_not_take_is_named_in_the_error() {
        let err = options("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(err.contains("sslmode=allow"), "{err}");
    }

    #[test]
    fn a_key_value_string_that_does_not_parse_is_left_for_the_driver() {
        let s = "host=h password='unterminated sslmode=require";
        assert_eq!(take_key_values(s, &["sslmode"]), (s.to_string(), vec![]));
    }

    #[test]
    fn prefer_with_a_root_certificate_is_refused_before_connecting() {
        let err = connector("db", Tls::Opportunistic, Some(Path::new("ca.pem")))
            .map(|_| ())
            .unwrap_err();
        assert!(err.is_config(), "{err}");
    }

    #[test]
    fn disable_has_no_connector_and_the_others_have_one() {
        assert!(connector("db", Tls::Off, None).unwrap().is_none());
        assert!(connector("db", Tls::Opportunistic, None).unwrap().is_some());
        assert!(connector("db", Tls::Verified, None).unwrap().is_some());
    }
}
