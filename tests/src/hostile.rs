//! A hostile peer for the receiver (issue 16): a client built on the project's own transport
//! (`vdrep::transport`, `vdrep::tls`) with a valid sender certificate, which speaks the
//! protocol's frames but sends what no honest sender does — wrapping sizes, offsets past
//! the end, frames out of order or repeated, handles it was never given, oversized and torn
//! frames, thousands of streams — and tallies every frame it sent by kind of attack.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use vdrep::tls::config::{sender_quic, SenderFiles};
use vdrep::transport::{client_endpoint, read_frame, FrameError};
use vdrep_proto::wire::{
    BatchResult, BatchStart, Codec, Control, ErrorClass, ExtentHeader, ExtentOp, K_BATCH_RESULT,
    MAX_CONTROL_BODY, PROTOCOL_VERSION,
};
use vdrep_proto::Guid;

use crate::procs::certs;
use crate::roles::Role;

/// How long the peer waits for any one answer before it calls the stream stalled.
pub const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// A receiver for [`Peer`]s to connect to, with what they need to reach it: one setup for
/// the tests that drive the receiver with this client (busy, hostile, stream flow) rather
/// than a copy in each.
pub struct Target {
    /// A runtime to drive the peers on (`block_on`).
    pub rt: tokio::runtime::Runtime,
    /// The `vdrep receive` process (store in `DIR/store`, log in `DIR/receiver.log`).
    pub rx: Role,
    /// Its QUIC address.
    pub to: SocketAddr,
    /// The certificate folder, with a sender certificate for each identity asked for.
    pub tls: PathBuf,
}

impl Target {
    /// Certificates for the sender `identities` in `DIR/tls`, a receiver allowing `allow`
    /// (`SENDER=VM`) with the further arguments `extra` ([`Role::receiver_with`]), and a
    /// multi-threaded runtime of `workers` threads.
    pub fn start(
        dir: &Path,
        identities: &[&str],
        allow: &[&str],
        extra: &[&str],
        workers: usize,
    ) -> Target {
        let tls = certs(&dir.join("tls"), identities);
        let rx = Role::receiver_with(dir, &tls, allow, extra);
        let to: SocketAddr = rx.addr("listening on ").parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        Target { rt, rx, to, tls }
    }
}

/// A hostile connection and what it sent.
pub struct Peer {
    /// The connection.
    pub conn: quinn::Connection,
    _ep: quinn::Endpoint,
    /// Frames sent, by attack.
    pub sent: BTreeMap<&'static str, u64>,
    /// Answers received, by error class (`ok` for non-errors).
    pub answers: BTreeMap<String, u64>,
}

/// A control stream after its hello.
pub struct Ctl {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    next: u32,
}

/// What a control request got back.
#[derive(Debug)]
pub enum Got {
    /// An answer.
    Answer(Control),
    /// The receiver ended the stream (after a fatal refusal or a malformed frame).
    Closed(String),
}

impl Got {
    /// The error class of a refusal.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Got::Answer(Control::Error { class, .. }) => Some(*class),
            _ => None,
        }
    }
}

impl Peer {
    /// Connects to `to` as `identity` (certificates in `tls`).
    pub async fn connect(to: SocketAddr, tls: &Path, identity: &str) -> Result<Peer, String> {
        let cfg = sender_quic(&SenderFiles::in_dir(tls, identity)).map_err(|e| e.to_string())?;
        let ep = client_endpoint(to, cfg).map_err(|e| e.to_string())?;
        let conn = ep
            .connect(to, &to.ip().to_string())
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(Peer {
            conn,
            _ep: ep,
            sent: BTreeMap::new(),
            answers: BTreeMap::new(),
        })
    }

    /// Counts one frame of attack `what`.
    pub fn tally(&mut self, what: &'static str, n: u64) {
        *self.sent.entry(what).or_default() += n;
    }

    fn answered(&mut self, got: &Got) {
        let k = match got {
            Got::Answer(Control::Error { class, .. }) => class.as_str().to_string(),
            Got::Answer(_) => "ok".to_string(),
            Got::Closed(_) => "closed".to_string(),
        };
        *self.answers.entry(k).or_default() += 1;
    }

    /// Opens a stream and sends nothing yet: its first frame decides what it is.
    pub async fn raw(&mut self) -> Ctl {
        let (send, recv) = self.conn.open_bi().await.expect("open a stream");
        Ctl {
            send,
            recv,
            next: 1,
        }
    }

    /// Sends `bytes` on `ctl` as attack `what`, then ends the stream, and waits for the
    /// receiver to end its side (with or without an answer).
    pub async fn torn(&mut self, ctl: Ctl, what: &'static str, bytes: &[u8]) -> Got {
        let Ctl {
            mut send, mut recv, ..
        } = ctl;
        self.tally(what, 1);
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        let got = match tokio::time::timeout(ANSWER_WAIT, read_frame(&mut recv, MAX_CONTROL_BODY))
            .await
        {
            Ok(Ok((kind, body))) => match Control::decode(kind, &body) {
                Ok(m) => Got::Answer(m),
                Err(e) => Got::Closed(e.to_string()),
            },
            Ok(Err(e)) => Got::Closed(e.to_string()),
            Err(_) => Got::Closed("no answer in time".into()),
        };
        self.answered(&got);
        got
    }

    /// Opens a control stream and says hello.
    pub async fn control(&mut self) -> Ctl {
        self.control_at(PROTOCOL_VERSION).await
    }

    /// Opens a control stream and says hello offering versions up to `max` (an older
    /// sender): the disks it opens take that version's extent hashes.
    pub async fn control_at(&mut self, max: u16) -> Ctl {
        let (send, recv) = self.conn.open_bi().await.expect("open a control stream");
        let mut c = Ctl {
            send,
            recv,
            next: 1,
        };
        let hello = Control::Hello {
            min_version: 1,
            max_version: max,
            software: "hostile".into(),
        };
        match c.call_raw(&hello.encode()).await {
            Got::Answer(Control::HelloAck { .. }) => c,
            other => panic!("hello refused: {other:?}"),
        }
    }

    /// Sends `frame` (any bytes) on `ctl` as attack `what` and reads the answer.
    pub async fn send(&mut self, ctl: &mut Ctl, what: &'static str, frame: &[u8]) -> Got {
        self.tally(what, 1);
        let got = ctl.call_raw(frame).await;
        self.answered(&got);
        got
    }

    /// Sends a request (its `req` set to a fresh id) as attack `what`.
    pub async fn request(&mut self, ctl: &mut Ctl, what: &'static str, mut msg: Control) -> Got {
        set_req(&mut msg, ctl.req());
        self.send(ctl, what, &msg.encode()).await
    }

    /// Opens disk `disk` of `vm` with a valid size: `(handle, generation)`.
    pub async fn open(&mut self, ctl: &mut Ctl, vm: &str, disk: &str, size: u64) -> (u32, u64) {
        let got = self
            .request(ctl, "legitimate", open_disk(vm, disk, size))
            .await;
        match got {
            Got::Answer(Control::DiskOpened {
                handle, generation, ..
            }) => (handle, generation),
            other => panic!("open {vm}/{disk}: {other:?}"),
        }
    }

    /// A data stream: `first` (normally a `BatchStart`), then `frames`, then the end of the
    /// stream (or, when `finish` is false, the stream is reset mid-way); returns the
    /// batch's result, or `None` when the receiver ended the stream without one.
    pub async fn batch(
        &mut self,
        what: &'static str,
        first: &[u8],
        frames: &[Vec<u8>],
        finish: bool,
    ) -> Option<BatchResult> {
        let (mut send, mut recv) = self.conn.open_bi().await.ok()?;
        self.tally(what, 1 + frames.len() as u64);
        let _ = send.write_all(first).await;
        for f in frames {
            if send.write_all(f).await.is_err() {
                break; // the receiver stopped the stream: the batch failed
            }
        }
        if finish {
            let _ = send.finish();
        } else {
            let _ = send.reset(7u32.into());
        }
        let r = match tokio::time::timeout(ANSWER_WAIT, read_frame(&mut recv, MAX_CONTROL_BODY))
            .await
        {
            Ok(Ok((K_BATCH_RESULT, body))) => BatchResult::decode(&body).ok(),
            _ => None,
        };
        let k = match &r {
            Some(BatchResult {
                error: Some((c, _)),
                ..
            }) => c.as_str().to_string(),
            Some(_) => "ok".to_string(),
            None => "closed".to_string(),
        };
        *self.answers.entry(k).or_default() += 1;
        r
    }
}

impl Ctl {
    /// A fresh request id.
    pub fn req(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    async fn call_raw(&mut self, frame: &[u8]) -> Got {
        if let Err(e) = self.send.write_all(frame).await {
            return Got::Closed(e.to_string());
        }
        match tokio::time::timeout(ANSWER_WAIT, read_frame(&mut self.recv, MAX_CONTROL_BODY)).await
        {
            Ok(Ok((kind, body))) => match Control::decode(kind, &body) {
                Ok(m) => Got::Answer(m),
                Err(e) => Got::Closed(format!("undecodable answer: {e}")),
            },
            Ok(Err(FrameError::End)) => Got::Closed("end of stream".into()),
            Ok(Err(e)) => Got::Closed(e.to_string()),
            Err(_) => Got::Closed("no answer in time".into()),
        }
    }
}

/// An `OpenDisk` (request id set by [`Peer::request`]).
pub fn open_disk(vm: &str, disk: &str, size: u64) -> Control {
    Control::OpenDisk {
        req: 0,
        vm: vm.into(),
        disk: disk.into(),
        virtual_size: size,
        source_id: Guid([9; 16]),
        full_copy: false,
        vm_disks: Vec::new(),
    }
}

/// Sets the request id of a request.
pub fn set_req(m: &mut Control, id: u32) {
    match m {
        Control::OpenDisk { req, .. }
        | Control::CommitInitial { req, .. }
        | Control::BeginCycle { req, .. }
        | Control::CommitCycle { req, .. }
        | Control::HashRequest { req, .. }
        | Control::RootRequest { req, .. }
        | Control::ReportJob { req, .. }
        | Control::QueryCapacity { req, .. }
        | Control::ProgressRequest { req, .. } => *req = id,
        _ => {}
    }
}

/// A frame header claiming `len` body bytes, for oversized and torn frames.
pub fn header(kind: u8, len: u32) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&len.to_le_bytes());
    f
}

/// A batch start frame.
pub fn batch_start(handle: u32, generation: u64) -> Vec<u8> {
    BatchStart { handle, generation }.encode()
}

/// An extent frame with whatever header fields the attack wants; `payload` follows.
pub fn extent(offset: u64, length: u32, op: ExtentOp, hash: [u8; 32], payload: &[u8]) -> Vec<u8> {
    let h = ExtentHeader {
        offset,
        length,
        op,
        codec: Codec::Raw,
        hash,
        payload_len: payload.len() as u32,
    };
    let mut f = h.encode_frame_prefix();
    f.extend_from_slice(payload);
    f
}

/// The BLAKE3 of `b`: an extent's hash up to protocol version 5.
pub fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

/// An extent's hash from protocol version 6 on (WIRE.md §5), written here from the
/// definition rather than with the code under test: `b`, the bytes at disk offset
/// `offset`, cut at every multiple of 4 KiB of the disk, each piece hashed, then BLAKE3 of
/// the pieces' hashes in order.
pub fn page_hash(offset: u64, b: &[u8]) -> [u8; 32] {
    let mut cat = Vec::new();
    let mut at = 0usize;
    while at < b.len() {
        // Bytes to the next page boundary (offsets past 2^64 wrap: a hostile extent's).
        let to_boundary = 4096 - (offset.wrapping_add(at as u64) % 4096) as usize;
        let end = (at + to_boundary).min(b.len());
        cat.extend_from_slice(blake3::hash(&b[at..end]).as_bytes());
        at = end;
    }
    *blake3::hash(&cat).as_bytes()
}

/// Bytes as a payload.
pub fn bytes(n: usize, v: u8) -> Bytes {
    Bytes::from(vec![v; n])
}
