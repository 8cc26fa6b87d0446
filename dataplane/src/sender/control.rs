//! The driver of the sender's control stream: the protocol — hello, version, request ids,
//! which answer each request expects — is the [`SenderControl`] session
//! (`vdrep_proto::session`); this moves its frames over QUIC.

use vdrep_proto::session::sender::SessionError;
use vdrep_proto::session::SenderControl;
use vdrep_proto::wire::{Control, MAX_CONTROL_BODY};

use super::SendError;
use crate::transport::{read_frame, write_frame};

/// An open control stream with a negotiated version.
pub struct ControlStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: String,
    session: SenderControl,
    /// The stream failed under a request: later requests fail on the stream again (a
    /// transport error, retried like any), not on the session's order.
    broken: bool,
}

impl ControlStream {
    /// Opens the stream and says hello.
    pub async fn open(
        conn: &quinn::Connection,
        peer: &str,
        credit: &super::credit::StreamCredit,
    ) -> Result<Self, SendError> {
        let (send, recv) = credit.open(conn).await.map_err(|e| SendError::Connection {
            peer: peer.to_string(),
            source: e,
        })?;
        let mut c = ControlStream {
            send,
            recv,
            peer: peer.to_string(),
            session: SenderControl::new(),
            broken: false,
        };
        let hello = c
            .session
            .hello(&format!("vdrep {}", env!("CARGO_PKG_VERSION")))
            .map_err(|e| c.error(e))?;
        c.exchange(&hello).await?;
        Ok(c)
    }

    /// The negotiated protocol version: what the receiver understands.
    pub fn version(&self) -> u16 {
        self.session.version().unwrap_or(1)
    }

    /// The receiver, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// A fresh request id.
    pub fn req(&mut self) -> u32 {
        self.session.next_req()
    }

    /// Sends a request and waits for its answer, which the session checked against the
    /// request; a receiver error becomes [`SendError::Remote`]. Progress announced in pages
    /// (protocol version 4) is fetched here, so callers see it whole.
    pub async fn call(&mut self, msg: Control) -> Result<Control, SendError> {
        let mut answer = self.call_one(msg).await?;
        while let Some(next) = self.session.next_page(&answer) {
            let page = self.call_one(next).await?;
            self.session
                .add_page(&mut answer, page)
                .map_err(|e| self.error(e))?;
        }
        Ok(answer)
    }

    async fn call_one(&mut self, msg: Control) -> Result<Control, SendError> {
        if !self.broken {
            self.session.request(&msg).map_err(|e| self.error(e))?;
        }
        self.exchange(&msg).await
    }

    async fn exchange(&mut self, msg: &Control) -> Result<Control, SendError> {
        let peer = self.peer.clone();
        let frame_err = |e| SendError::Frame {
            peer: peer.clone(),
            source: e,
        };
        let r = async {
            write_frame(&mut self.send, &msg.encode()).await?;
            read_frame(&mut self.recv, MAX_CONTROL_BODY).await
        }
        .await;
        let (kind, body) = match r {
            Ok(f) if !self.broken => f,
            Ok(_) => {
                return Err(SendError::Protocol {
                    peer,
                    message: "the control stream answered after it broke".into(),
                })
            }
            Err(e) => {
                self.broken = true;
                return Err(frame_err(e));
            }
        };
        self.session
            .handle_frame(kind, &body)
            .map_err(|e| self.error(e))
    }

    /// A session error as the sender's error, naming the receiver.
    pub fn error(&self, e: SessionError) -> SendError {
        session_error(&self.peer, e)
    }

    /// The error for an answer of the wrong kind (the session already refuses those; kept
    /// for callers that destructure the answer).
    pub fn unexpected(&self, got: Control) -> SendError {
        SendError::Protocol {
            peer: self.peer.clone(),
            message: format!("unexpected answer {got:?}"),
        }
    }

    /// Closes the stream politely.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// A sender session's error as a [`SendError`] for `peer`.
pub(crate) fn session_error(peer: &str, e: SessionError) -> SendError {
    match e {
        SessionError::Refused { class, message } => SendError::Remote {
            peer: peer.to_string(),
            class,
            message,
        },
        SessionError::Protocol(message) => SendError::Protocol {
            peer: peer.to_string(),
            message,
        },
        other => SendError::Internal(other.to_string()),
    }
}
