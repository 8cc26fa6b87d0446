//! Two sessions in memory: a [`SenderControl`] and [`BatchSender`]s against a
//! [`ReceiverSession`] and its [`BatchReceiver`]s over a [`Model`] store. Every frame is
//! encoded, split off a byte buffer with [`decode_frame`] and decoded again, as on a real
//! stream; the kinds that crossed are recorded, so a test can show it covered every frame.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::model::{toy_hash, Model};
use crate::session::receiver::{BatchReport, BatchStep, ControlStep, FirstStep, Report};
use crate::session::sender::{SessionError, Settled};
use crate::session::{Authorizations, BatchSender, ReceiverSession, SenderControl, StreamId};
use crate::wire::{
    decode_frame, Codec, Control, ExtentHeader, ExtentOp, PackedMap, EXTENT_HEADER_LEN,
    MAX_CONTROL_BODY, MAX_EXTENT_PAYLOAD, PACK_BLOCK,
};
use crate::{Guid, RangeSet};

/// Bytes per planned extent of the harness's sender.
pub const CHUNK: u64 = 64 << 10;

/// What the DiskOpened answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub handle: u32,
    pub generation: u64,
    pub initial_committed: bool,
    pub committed_cycle: u64,
    pub known_empty: bool,
    pub progress: RangeSet,
}

/// One item of a batch: a frame, or source bytes that need none.
#[derive(Debug, Clone)]
pub enum Item {
    Skip(u64),
    Extent {
        offset: u64,
        source_len: u64,
        header: ExtentHeader,
        payload: Bytes,
    },
}

pub struct Pair {
    pub allow: Authorizations,
    pub rx: ReceiverSession,
    pub tx: SenderControl,
    pub model: Model,
    pub stream: StreamId,
    /// Frame kinds that crossed, both ways.
    pub kinds: BTreeSet<u8>,
    pub reports: Vec<Report>,
    pub batch_reports: Vec<BatchReport>,
    /// Offsets whose next extent is damaged in transit (once each).
    pub corrupt: BTreeSet<u64>,
    /// Extent frames sent.
    pub extents_sent: usize,
    /// Most extents per batch (forces several data streams).
    pub per_batch: usize,
    /// Progress pages fetched.
    pub pages: usize,
}

impl Pair {
    /// A connected pair: `host1` may write `vm1`.
    pub fn new() -> Self {
        let allow = Authorizations::parse(&["host1=vm1".to_string()]).unwrap();
        let mut p = Pair {
            rx: ReceiverSession::new("host1", &allow),
            allow,
            tx: SenderControl::new(),
            model: Model::default(),
            stream: 0,
            kinds: BTreeSet::new(),
            reports: Vec::new(),
            batch_reports: Vec::new(),
            corrupt: BTreeSet::new(),
            extents_sent: 0,
            per_batch: 8,
            pages: 0,
        };
        p.hello().unwrap();
        p
    }

    /// The connection drops and the sender reconnects: the store keeps what was written
    /// (the driver's final checkpoint), both sessions start afresh.
    pub fn reconnect(&mut self) {
        self.model.connection_closed();
        self.rx = ReceiverSession::new("host1", &self.allow);
        self.tx = SenderControl::new();
        self.stream += 4;
        self.hello().unwrap();
    }

    /// Splits one frame off `buf` as a stream reader would, recording its kind.
    pub fn wire(&mut self, buf: &[u8], max: u32) -> (u8, Vec<u8>) {
        let (kind, body, used) = decode_frame(buf, max).unwrap().unwrap();
        assert_eq!(used, buf.len(), "one frame per buffer");
        self.kinds.insert(kind);
        (kind, body.to_vec())
    }

    pub fn hello(&mut self) -> Result<u16, SessionError> {
        let hello = self.tx.hello("test").unwrap();
        let answer = self.deliver(&hello);
        let (k, b) = self.wire(&answer.encode(), MAX_CONTROL_BODY);
        match self.tx.handle_frame(k, &b)? {
            Control::HelloAck { version } => Ok(version),
            other => panic!("{other:?}"),
        }
    }

    /// Sends a control frame to the receiver session and drives it to its answer.
    pub fn deliver(&mut self, msg: &Control) -> Control {
        let (k, b) = self.wire(&msg.encode(), MAX_CONTROL_BODY);
        let mut step = match self.rx.handle_first_frame(self.stream, k, &b) {
            FirstStep::Control(step) => step,
            other => panic!("a control frame read as a batch: {other:?}"),
        };
        loop {
            match step {
                ControlStep::Perform(e) => {
                    let d = self.model.perform(e);
                    step = self.rx.handle_done(self.stream, d);
                }
                ControlStep::Answer { answer, report, .. } => {
                    if let Some(Report::DiskOpened {
                        handle, vm, disk, ..
                    }) = &report
                    {
                        self.model.opened(*handle, vm, disk);
                    }
                    self.reports.extend(report);
                    return answer;
                }
            }
        }
    }

    /// A request and its checked answer, with every page of progress it announces
    /// fetched and folded in (as the driver's `ControlStream::call` does).
    pub fn call(&mut self, msg: Control) -> Result<Control, SessionError> {
        let mut answer = self.call_one(msg)?;
        while let Some(next) = self.tx.next_page(&answer) {
            self.pages += 1;
            let page = self.call_one(next)?;
            self.tx.add_page(&mut answer, page)?;
        }
        Ok(answer)
    }

    /// One request and its checked answer, nothing more.
    pub fn call_one(&mut self, msg: Control) -> Result<Control, SessionError> {
        self.tx.request(&msg)?;
        let answer = self.deliver(&msg);
        let (k, b) = self.wire(&answer.encode(), MAX_CONTROL_BODY);
        self.tx.handle_frame(k, &b)
    }

    pub fn open(&mut self, vm: &str, size: u64, full_copy: bool) -> Result<Opened, SessionError> {
        self.open_disk(vm, "os.vhdx", size, full_copy)
    }

    pub fn open_disk(
        &mut self,
        vm: &str,
        disk: &str,
        size: u64,
        full_copy: bool,
    ) -> Result<Opened, SessionError> {
        let req = self.tx.next_req();
        match self.call(Control::OpenDisk {
            req,
            vm: vm.into(),
            disk: disk.into(),
            virtual_size: size,
            source_id: Guid([7; 16]),
            full_copy,
            vm_disks: Vec::new(),
        })? {
            Control::DiskOpened {
                handle,
                initial_committed,
                committed_cycle,
                generation,
                known_empty,
                progress,
                ..
            } => Ok(Opened {
                handle,
                generation,
                initial_committed,
                committed_cycle,
                known_empty,
                progress,
            }),
            other => panic!("{other:?}"),
        }
    }

    pub fn commit_initial(&mut self, o: &Opened) -> Result<Control, SessionError> {
        let req = self.tx.next_req();
        self.call(Control::CommitInitial {
            req,
            handle: o.handle,
            generation: o.generation,
        })
    }

    pub fn begin_cycle(&mut self, o: &Opened, cycle: u64) -> Result<RangeSet, SessionError> {
        let req = self.tx.next_req();
        match self.call(Control::BeginCycle {
            req,
            handle: o.handle,
            cycle,
        })? {
            Control::CycleOpened { progress, .. } => Ok(progress),
            other => panic!("{other:?}"),
        }
    }

    pub fn commit_cycle(&mut self, o: &Opened, cycle: u64) -> Result<Control, SessionError> {
        let req = self.tx.next_req();
        self.call(Control::CommitCycle {
            req,
            handle: o.handle,
            cycle,
            bytes: 1,
            digest: [0; 32],
            retention_secs: 0,
        })
    }

    /// One data stream carrying `items`; returns what its result settles.
    pub fn batch(
        &mut self,
        handle: u32,
        generation: u64,
        items: &[Item],
    ) -> Result<Settled, SessionError> {
        let mut bs = BatchSender::new(handle, generation);
        let (kind, start) = self.wire(&bs.start_frame(), MAX_CONTROL_BODY);
        let mut end = None;
        // A data stream of its own: the session tells it from a control stream by this frame.
        let mut br = match self.rx.handle_first_frame(self.stream + 1, kind, &start) {
            FirstStep::Batch(b) => Some(b),
            FirstStep::BatchRefused(e) => {
                end = Some(e);
                None
            }
            FirstStep::Control(step) => panic!("a batch start read as control: {step:?}"),
        };
        for it in items {
            if end.is_some() {
                break; // the receiver stopped the stream
            }
            let (offset, source_len, header, payload) = match it {
                Item::Skip(n) => {
                    bs.skip(*n);
                    continue;
                }
                Item::Extent {
                    offset,
                    source_len,
                    header,
                    payload,
                } => (*offset, *source_len, header, payload),
            };
            let f = bs.extent(offset, source_len, header, payload.clone());
            let mut frame = f.prefix.to_vec();
            let at = frame.len();
            frame.extend_from_slice(&f.payload);
            if self.corrupt.remove(&header.offset) && frame.len() > at {
                let last = frame.len() - 1;
                frame[last] ^= 0xff;
            }
            self.extents_sent += 1;
            let (kind, body) = self.wire(&frame, EXTENT_HEADER_LEN as u32 + MAX_EXTENT_PAYLOAD);
            let Some(b) = br.as_mut() else { break };
            let mut step = b.handle_frame(kind, Bytes::from(body));
            loop {
                match step {
                    BatchStep::Apply(w) => {
                        let out = self.model.apply(handle, w);
                        step = b.handle_write_done(out);
                    }
                    BatchStep::Continue(r) => {
                        self.batch_reports.extend(r);
                        break;
                    }
                    BatchStep::End(e) => {
                        end = Some(e);
                        break;
                    }
                }
            }
        }
        let end = match (end, br.as_mut()) {
            (Some(e), _) => e,
            (None, Some(b)) => b.finish(),
            (None, None) => unreachable!("a batch without a receiver ended"),
        };
        if br.is_some() {
            self.rx.batch_ended(handle);
        }
        let (k, body) = self.wire(&end.result.encode(), MAX_CONTROL_BODY);
        bs.finish().settle_frame(k, &body)
    }

    /// Sends `ranges` of `src` (everything when empty) until the receiver accepted every
    /// extent, resending refused ones for up to four passes like the real sender; returns
    /// the acknowledged source bytes.
    pub fn send(
        &mut self,
        o: &Opened,
        src: &[u8],
        ranges: &[(u64, u64)],
        packed: bool,
    ) -> Result<u64, SessionError> {
        let mut items = plan(src, ranges, o.known_empty, packed);
        let mut acked = 0;
        for _pass in 0..4 {
            let mut resend = Vec::new();
            for chunk in items.chunks(self.per_batch) {
                let s = self.batch(o.handle, o.generation, chunk)?;
                acked += s.acknowledged_bytes;
                resend.extend(s.resend);
            }
            if resend.is_empty() {
                return Ok(acked);
            }
            let r: Vec<(u64, u64)> = resend.iter().map(|&(a, l)| (a, a + l as u64)).collect();
            items = plan(src, &r, false, false);
        }
        Err(SessionError::Misuse(
            "extents still refused after 4 passes".into(),
        ))
    }
}

/// What of `[0, size)` is not in `done`: the ranges left to send, as [`Pair::send`] takes them.
pub fn rest(done: &RangeSet, size: u64) -> Vec<(u64, u64)> {
    done.gaps_in(0, size)
        .into_iter()
        .map(|r| (r.start, r.end))
        .collect()
}

/// The harness sender's plan of `ranges` of `src` (the whole source when empty), in
/// extents of [`CHUNK`]: zero chunks are skipped into a known-empty replica and cleared
/// otherwise; with `packed`, a chunk mixing zero and data blocks is one packed write of
/// its data blocks.
pub fn plan(src: &[u8], ranges: &[(u64, u64)], known_empty: bool, packed: bool) -> Vec<Item> {
    let whole = [(0, src.len() as u64)];
    let ranges = if ranges.is_empty() {
        &whole[..]
    } else {
        ranges
    };
    let mut out = Vec::new();
    let chunk = if packed { 4 * PACK_BLOCK as u64 } else { CHUNK };
    for &(a, b) in ranges {
        let mut off = a;
        while off < b {
            let end = (off + chunk).min(b);
            let data = &src[off as usize..end as usize];
            let len = (end - off) as u32;
            let zero = data.iter().all(|&x| x == 0);
            let blocks = PackedMap::blocks(len);
            let block_zero = |i: usize| {
                let s = i * PACK_BLOCK as usize;
                data[s..(s + PACK_BLOCK as usize).min(data.len())]
                    .iter()
                    .all(|&x| x == 0)
            };
            if zero && known_empty {
                out.push(Item::Skip(len as u64));
            } else if zero {
                out.push(extent(
                    off,
                    len,
                    ExtentOp::Clear,
                    Codec::Raw,
                    toy_hash(data),
                    Bytes::new(),
                ));
            } else if packed && blocks > 1 && (0..blocks).any(block_zero) {
                let map = PackedMap::new(len, |i| !block_zero(i));
                let carried: Vec<u8> = map
                    .runs()
                    .iter()
                    .flat_map(|&(s, e)| data[s as usize..e as usize].to_vec())
                    .collect();
                let mut payload = map.as_bytes().to_vec();
                payload.extend_from_slice(&carried);
                out.push(extent(
                    off,
                    len,
                    ExtentOp::WritePacked,
                    Codec::Zstd,
                    toy_hash(&carried),
                    Bytes::from(payload),
                ));
                if !known_empty {
                    for i in (0..blocks).filter(|&i| block_zero(i)) {
                        let s = off + i as u64 * PACK_BLOCK as u64;
                        let n = (PACK_BLOCK as u64).min(end - s) as u32;
                        out.push(extent(
                            s,
                            n,
                            ExtentOp::Clear,
                            Codec::Raw,
                            toy_hash(&vec![0; n as usize]),
                            Bytes::new(),
                        ));
                    }
                }
            } else {
                out.push(extent(
                    off,
                    len,
                    ExtentOp::Write,
                    Codec::Raw,
                    toy_hash(data),
                    Bytes::copy_from_slice(data),
                ));
            }
            off = end;
        }
    }
    out
}

pub fn extent(
    offset: u64,
    length: u32,
    op: ExtentOp,
    codec: Codec,
    hash: [u8; 32],
    payload: Bytes,
) -> Item {
    Item::Extent {
        offset,
        source_len: length as u64,
        header: ExtentHeader {
            offset,
            length,
            op,
            codec,
            hash,
            payload_len: payload.len() as u32,
        },
        payload,
    }
}

/// A source of `size` bytes: data in most 64 KiB blocks, zeros in every third.
pub fn source(size: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for (i, b) in v.iter_mut().enumerate() {
        let block = i / PACK_BLOCK as usize;
        if block % 3 != 1 {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
        }
    }
    v
}
