//! The sidecar's side of the sender's local control channel (JSON lines over a unix socket,
//! see `sender::local_control`). Every call opens a fresh connection with a short timeout,
//! so a restarted sender is simply found again at the next call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::sender::local_control::{Request, SenderStatus};

/// Why a call to the sender failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The sender is not running or its socket is unreachable (retry later).
    #[error("sender control channel {path}: {message}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The sender refused the request (an operator must act).
    #[error("the sender refused: {0}")]
    Refused(String),
}

impl crate::error::Classify for ClientError {
    /// A sender that is not running may be started; a refusal needs an operator.
    fn recovery(&self) -> crate::error::Recovery {
        match self {
            ClientError::Unreachable { .. } => crate::error::Recovery::Transient,
            ClientError::Refused(_) => crate::error::Recovery::Permanent,
        }
    }
}

/// A client of one sender's control socket.
#[derive(Debug, Clone)]
pub struct SenderClient {
    path: PathBuf,
}

const TIMEOUT: Duration = Duration::from_secs(3);

impl SenderClient {
    /// A client for the socket at `path`.
    pub fn new(path: &Path) -> Self {
        SenderClient {
            path: path.to_path_buf(),
        }
    }

    fn unreachable(&self, message: impl ToString) -> ClientError {
        ClientError::Unreachable {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Sends one request and returns the answer's fields (`ok` was true).
    pub async fn call(&self, req: &Request) -> Result<Value, ClientError> {
        let fut = async {
            let s = tokio::net::UnixStream::connect(&self.path)
                .await
                .map_err(|e| self.unreachable(e))?;
            let (r, mut w) = s.into_split();
            let mut line = serde_json::to_string(req).map_err(|e| self.unreachable(e))?;
            line.push('\n');
            w.write_all(line.as_bytes())
                .await
                .map_err(|e| self.unreachable(e))?;
            let mut answer = String::new();
            BufReader::new(r)
                .read_line(&mut answer)
                .await
                .map_err(|e| self.unreachable(e))?;
            let v: Value = serde_json::from_str(&answer)
                .map_err(|e| self.unreachable(format!("bad answer: {e}")))?;
            if v.get("ok") == Some(&Value::Bool(true)) {
                Ok(v)
            } else {
                Err(ClientError::Refused(
                    v.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_string(),
                ))
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| Err(self.unreachable("no answer within 3 s")))
    }

    /// The sender's status.
    pub async fn status(&self) -> Result<SenderStatus, ClientError> {
        let v = self.call(&Request::Status).await?;
        serde_json::from_value(v.get("status").cloned().unwrap_or_default())
            .map_err(|e| self.unreachable(format!("bad status: {e}")))
    }
}
