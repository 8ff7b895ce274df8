use serde::{Deserialize, Serialize};

/// The JSON error body every node error carries (`{"code": "...", "message": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// Everything that can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error status.
    #[error("{}", fmt_api(*.status, .error, .body))]
    Api {
        /// HTTP status code.
        status: u16,
        /// The node's `{code, message}` when the body was one.
        error: Option<ApiError>,
        /// The raw body (truncated) when it was not.
        body: String,
    },
    /// Connection, TLS or timeout failure.
    #[error("request failed: {}", fmt_transport(.0))]
    Transport(#[from] reqwest::Error),
    /// The node answered 2xx but the body is not what the API promises.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// Bad local configuration: URL, CA or identity PEM, key file.
    #[error("{0}")]
    Config(String),
    /// A local file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An offline verification failed.
    #[error("verification failed: {0}")]
    Verify(String),
}

fn fmt_api(status: u16, error: &Option<ApiError>, body: &str) -> String {
    match error {
        Some(e) if e.message.is_empty() => format!("HTTP {status}: {}", e.code),
        Some(e) => format!("HTTP {status} {}: {}", e.code, e.message),
        None if body.is_empty() => format!("HTTP {status}"),
        None => format!("HTTP {status}: {body}"),
    }
}

/// reqwest's Display hides the cause (e.g. the TLS error); show the chain.
fn fmt_transport(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

impl ClientError {
    /// The HTTP status when the node answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The node's error code (`not_found`, `bad_signature`, ...) when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error: Some(e), .. } => Some(&e.code),
            _ => None,
        }
    }

    pub(crate) fn from_body(status: u16, bytes: &[u8]) -> ClientError {
        let error = serde_json::from_slice::<ApiError>(bytes).ok();
        let body = if error.is_some() {
            String::new()
        } else {
            let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            if bytes.len() > 512 {
                s.push('…');
            }
            s.trim().to_string()
        };
        ClientError::Api {
            status,
            error,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_carries_status_and_code() {
        let e = ClientError::from_body(409, br#"{"code":"nonce_reused","message":"seen"}"#);
        assert_eq!(e.status(), Some(409));
        assert_eq!(e.code(), Some("nonce_reused"));
        assert_eq!(e.to_string(), "HTTP 409 nonce_reused: seen");
        let e = ClientError::from_body(502, b"bad gateway");
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "HTTP 502: bad gateway");
    }
}
