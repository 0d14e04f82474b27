//! The HTTP client for Batch's Profile API: thin, one call per attempt, no decisions.
//!
//! Invariants:
//! - Keys travel only in the `Authorization` and `X-Batch-Project` headers; neither [`Credentials`]
//!   nor any error of this module can print them.
//! - Every outcome, including transport failures, becomes an [`Answer`] for `core::retry`.

use crate::config::DestinationSettings;
use crate::core::pack::Endpoint;
use crate::core::retry::{parse_retry_after, Answer};
use std::fmt;
use std::time::SystemTime;

/// The REST API key and the project key. `Debug` never shows them.
#[derive(Clone)]
pub struct Credentials {
    pub api_key: String,
    pub project_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials { api_key: <redacted>, project_key: <redacted> }")
    }
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
        Ok(Credentials {
            api_key: get(&d.api_key_env, "REST API key", "api_key_env")?,
            project_key: get(&d.project_key_env, "project key", "project_key_env")?,
        })
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
            .bearer_auth(&self.creds.api_key)
            .header("X-Batch-Project", &self.creds.project_key)
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
                    Err(e) => Answer::Connection(describe(&e)),
                }
            }
            Err(e) if e.is_timeout() => Answer::Timeout,
            Err(e) => Answer::Connection(describe(&e)),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
