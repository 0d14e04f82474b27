//! TLS for PostgreSQL: libpq's `sslmode` and `sslrootcert` options read the way batchsync
//! applies them, and the rustls connector (see the parent module's doc).
//!
//! Invariant: whatever `sslmode` asks TLS with (`require`, `verify-ca`, `verify-full`), the
//! connection checks the server's chain and its name: batchsync never half-trusts a certificate.

use super::SourceError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's TLS options that tokio-postgres does not parse: `sslmode=verify-ca` and
/// `verify-full` become `require` (rustls always verifies the chain and the host name), and
/// `sslrootcert=FILE` is taken out and returned.
pub(super) fn options(url: &str) -> (String, Option<PathBuf>) {
    let mut rootcert = None;
    let mut rewrite = |param: &str| -> Option<String> {
        match param.split_once('=') {
            Some(("sslmode", "verify-full" | "verify-ca")) => Some("sslmode=require".into()),
            Some(("sslrootcert", path)) => {
                rootcert = Some(PathBuf::from(path));
                None
            }
            _ => Some(param.to_string()),
        }
    };
    let url = if url.contains("://") {
        match url.split_once('?') {
            Some((base, params)) => {
                let params: Vec<String> = params.split('&').filter_map(&mut rewrite).collect();
                if params.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", params.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else if url.contains("sslmode=verify-") || url.contains("sslrootcert=") {
        url.split_whitespace()
            .filter_map(&mut rewrite)
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        url.to_string()
    };
    (url, rootcert)
}

pub(super) fn connector(
    what: &str,
    rootcert: Option<&Path>,
) -> Result<MakeRustlsConnect, SourceError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |message: String| SourceError::Config {
        what: what.to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(bad(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(format!("cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "postgres://u@h/db?sslmode=verify-full",
        "postgres://u@h/db?sslmode=require",
        None
    )]
    #[case(
        "postgres://u@h/db?sslrootcert=/ca.pem&sslmode=verify-ca",
        "postgres://u@h/db?sslmode=require",
        Some("/ca.pem")
    )]
    #[case(
        "postgres://u@h/db?sslrootcert=ca.pem",
        "postgres://u@h/db",
        Some("ca.pem")
    )]
    #[case(
        "host=h user=u sslmode=verify-full",
        "host=h user=u sslmode=require",
        None
    )]
    #[case("host=h user=u", "host=h user=u", None)]
    fn libpq_tls_options_are_translated(
        #[case] url: &str,
        #[case] expected: &str,
        #[case] rootcert: Option<&str>,
    ) {
        let (got, cert) = options(url);
        assert_eq!(got, expected);
        assert_eq!(cert, rootcert.map(PathBuf::from));
    }
}
