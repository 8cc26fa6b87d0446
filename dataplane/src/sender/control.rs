//! The sender's side of the control stream: one request at a time, answers matched by id.

use vdrep_proto::wire::{self, Control, MAX_CONTROL_BODY};

use super::SendError;
use crate::transport::{read_frame, write_frame};

/// An open control stream with a negotiated version.
pub struct ControlStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: String,
    next_req: u32,
    version: u16,
}

impl ControlStream {
    /// Opens the stream and says hello.
    pub async fn open(conn: &quinn::Connection, peer: &str) -> Result<Self, SendError> {
        let (send, recv) = conn.open_bi().await.map_err(|e| SendError::Connection {
            peer: peer.to_string(),
            source: e,
        })?;
        let mut c = ControlStream {
            send,
            recv,
            peer: peer.to_string(),
            next_req: 1,
            version: 1,
        };
        let ack = c
            .call(Control::Hello {
                min_version: wire::MIN_PROTOCOL_VERSION,
                max_version: wire::PROTOCOL_VERSION,
                software: format!("vdrep {}", env!("CARGO_PKG_VERSION")),
            })
            .await?;
        match ack {
            Control::HelloAck { version } => {
                c.version = version;
                Ok(c)
            }
            other => Err(c.unexpected(other)),
        }
    }

    /// The negotiated protocol version: what the receiver understands.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The receiver, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// A fresh request id.
    pub fn req(&mut self) -> u32 {
        let r = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        r
    }

    /// Sends a request and waits for its answer; a receiver error becomes
    /// [`SendError::Remote`].
    pub async fn call(&mut self, msg: Control) -> Result<Control, SendError> {
        let peer = self.peer.clone();
        let frame_err = |e| SendError::Frame {
            peer: peer.clone(),
            source: e,
        };
        write_frame(&mut self.send, &msg.encode())
            .await
            .map_err(frame_err)?;
        let (kind, body) = read_frame(&mut self.recv, MAX_CONTROL_BODY)
            .await
            .map_err(frame_err)?;
        let reply = Control::decode(kind, &body).map_err(|e| SendError::Protocol {
            peer: self.peer.clone(),
            message: e.to_string(),
        })?;
        if let Control::Error { class, message, .. } = reply {
            return Err(SendError::Remote {
                peer: self.peer.clone(),
                class,
                message,
            });
        }
        Ok(reply)
    }

    /// The error for an answer of the wrong kind.
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
