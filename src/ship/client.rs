//! The HTTP client for Batch's Profile API: thin, one call per attempt, no decisions.
//!
//! Invariants:
//! - Keys travel only in the `Authorization` and `X-Batch-Project` headers; neither [`Credentials`]
//!   nor any error of this module can print them.
//! - Every outcome, including transport failures, becomes an [`Answer`] for `core::retry`.

use crate::config::DestinationSettings;
use crate::core::pack::Endpoint;
use crate::core::retry::{parse_retry_after, Answer};
use secrecy::{ExposeSecret, SecretString};
use std::time::SystemTime;

/// The REST API key and the project key, as `secrecy` secrets: `Debug` shows neither, and
/// they are zeroed when dropped; only [`Client::send`] exposes them, into two headers.
#[derive(Clone, Debug)]
pub struct Credentials {
    api_key: SecretString,
    project_key: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("environment variable {var} is not set: it must hold the Batch {what} ([destination] {setting}). Nothing was sent")]
    Missing {
        var: String,
        what: &'static str,
        setting: &'static str,
    },
}

impl Credentials {
    pub fn new(api_key: impl Into<String>, project_key: impl Into<String>) -> Credentials {
        Credentials {
            api_key: SecretString::from(api_key.into()),
            project_key: SecretString::from(project_key.into()),
        }
    }

    /// Reads both keys from the environment variables the config names.
    pub fn from_env(d: &DestinationSettings) -> Result<Credentials, CredentialsError> {
        let get = |var: &str, what, setting| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| CredentialsError::Missing {
                    var: var.to_string(),
                    what,
                    setting,
                })
        };
        Ok(Credentials::new(
            get(&d.api_key_env, "REST API key", "api_key_env")?,
            get(&d.project_key_env, "project key", "project_key_env")?,
        ))
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    creds: Credentials,
}

impl Client {
    pub fn new(d: &DestinationSettings, creds: Credentials) -> Result<Client, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(d.timeout)
            .connect_timeout(d.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("batchsync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base: format!("{}/{}", d.endpoint, d.api_version),
            creds,
        })
    }

    pub fn url(&self, endpoint: Endpoint) -> String {
        format!("{}/{}", self.base, endpoint.path())
    }

    /// One attempt. Transport errors are described without the URL's query or any header.
    pub async fn send(&self, endpoint: Endpoint, body: Vec<u8>) -> Answer {
        let sent = self
            .http
            .post(self.url(endpoint))
            .bearer_auth(self.creds.api_key.expose_secret())
            .header("X-Batch-Project", self.creds.project_key.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                match resp.text().await {
                    Ok(body) => Answer::Http {
                        status,
                        body,
                        retry_after,
                    },
                    Err(e) if e.is_timeout() => Answer::Timeout,
                    Err(e) => Answer::Connection(crate::errors::chain(&e)),
                }
            }
            Err(e) if e.is_timeout() => Answer::Timeout,
            Err(e) => Answer::Connection(crate::errors::chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_their_keys() {
        let c = Credentials::new("rest-key-123456", "project-key-abcdef");
        let shown = format!("{c:?} {:?}", c.clone());
        assert!(!shown.contains("rest-key-123456"), "{shown}");
        assert!(!shown.contains("project-key-abcdef"), "{shown}");
        assert!(
            !shown.contains("123456") && !shown.contains("abcdef"),
            "{shown}"
        );
    }
}
