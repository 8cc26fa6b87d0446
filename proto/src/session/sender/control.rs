//! The sender's control stream: hello and version negotiation, then one request at a time,
//! each answered by the frame it expects (or an error) carrying its request id.
//!
//! States: `Start` --hello--> `AwaitingHelloAck` --HelloAck--> `Ready` --request-->
//! `Awaiting` --answer--> `Ready`; a fatal refusal or a protocol violation → `Failed`.

use super::SessionError;
use crate::session::receiver::name;
use crate::wire::{self, Control, ErrorClass, PAGED_PROGRESS_VERSION, VM_POINTS_VERSION};

/// Where a sender's control stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderState {
    /// Nothing sent yet.
    Start,
    /// Hello sent; the version is due.
    AwaitingHelloAck,
    /// Ready for a request.
    Ready,
    /// A request is out; its answer is due.
    Awaiting {
        /// Its id.
        req: u32,
    },
    /// The stream is unusable (the receiver closed it, or broke the protocol).
    Failed,
}

/// What answer a request expects, with the fields that must echo the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    DiskOpened,
    Committed { handle: u32, cycle: u64 },
    CycleOpened { handle: u32, cycle: u64 },
    Hashes { handle: u32, level: u8 },
    Root { handle: u32 },
    JobRecorded,
    Capacity,
    GroupClaimed,
    Progress { handle: u32 },
    Point { vm_cycle: u64 },
}

/// The sender's protocol state on one control stream.
#[derive(Debug)]
pub struct SenderControl {
    state: SenderState,
    expect: Option<Expect>,
    next_req: u32,
    version: u16,
    /// The newest version offered in the hello ([`SenderControl::with_max_version`]).
    max_version: u16,
}

impl Default for SenderControl {
    fn default() -> Self {
        Self::new()
    }
}

impl SenderControl {
    /// A fresh stream.
    pub fn new() -> Self {
        Self::with_max_version(wire::PROTOCOL_VERSION)
    }

    /// A fresh stream that offers versions up to `max` only (clamped to what this build
    /// speaks): a sender pinned to an older protocol, as the tests of mixed versions need.
    pub fn with_max_version(max: u16) -> Self {
        SenderControl {
            state: SenderState::Start,
            expect: None,
            next_req: 1,
            version: 0,
            max_version: max.clamp(wire::MIN_PROTOCOL_VERSION, wire::PROTOCOL_VERSION),
        }
    }

    /// Where the stream is.
    pub fn state(&self) -> SenderState {
        self.state
    }

    /// Whether the receiver records VM points ([`Control::CommitPoint`], version 5); with an
    /// older receiver the sender commits per-disk points only.
    pub fn vm_points(&self) -> bool {
        self.version >= VM_POINTS_VERSION
    }

    /// The negotiated version (`None` before the hello is answered).
    pub fn version(&self) -> Option<u16> {
        (self.version != 0).then_some(self.version)
    }

    /// The first frame: the versions this build speaks.
    pub fn hello(&mut self, software: &str) -> Result<Control, SessionError> {
        if self.state != SenderState::Start {
            return Err(SessionError::Misuse("hello sent twice".into()));
        }
        self.state = SenderState::AwaitingHelloAck;
        Ok(Control::Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: self.max_version,
            software: software.to_string(),
        })
    }

    /// A fresh request id.
    pub fn next_req(&mut self) -> u32 {
        let r = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        r
    }

    /// Records that `msg`, a request, is being sent; its answer is due next.
    pub fn request(&mut self, msg: &Control) -> Result<(), SessionError> {
        if self.state != SenderState::Ready {
            return Err(SessionError::Misuse(format!(
                "{} sent while the control stream is {:?}",
                name(msg),
                self.state
            )));
        }
        let (req, expect) = match *msg {
            Control::OpenDisk { req, .. } => (req, Expect::DiskOpened),
            Control::CommitInitial { req, handle, .. } => {
                (req, Expect::Committed { handle, cycle: 0 })
            }
            Control::BeginCycle { req, handle, cycle } => {
                (req, Expect::CycleOpened { handle, cycle })
            }
            Control::CommitCycle {
                req, handle, cycle, ..
            } => (req, Expect::Committed { handle, cycle }),
            Control::HashRequest {
                req, handle, level, ..
            } => (req, Expect::Hashes { handle, level }),
            Control::RootRequest { req, handle } => (req, Expect::Root { handle }),
            Control::ReportJob { req, .. } => (req, Expect::JobRecorded),
            Control::QueryCapacity { req, .. } => (req, Expect::Capacity),
            Control::ClaimGroup { req, .. } => (req, Expect::GroupClaimed),
            Control::ProgressRequest { req, handle, .. }
                if self.version >= PAGED_PROGRESS_VERSION =>
            {
                (req, Expect::Progress { handle })
            }
            Control::CommitPoint { req, vm_cycle, .. } if self.version >= VM_POINTS_VERSION => {
                (req, Expect::Point { vm_cycle })
            }
            _ => {
                return Err(SessionError::Misuse(format!(
                    "{} is not a request a sender makes",
                    name(msg)
                )))
            }
        };
        self.state = SenderState::Awaiting { req };
        self.expect = Some(expect);
        Ok(())
    }

    /// Feeds one frame received on the stream; returns the answer, checked against the
    /// request it answers.
    pub fn handle_frame(&mut self, kind: u8, body: &[u8]) -> Result<Control, SessionError> {
        match Control::decode(kind, body) {
            Ok(m) => self.handle_answer(m),
            Err(e) => Err(self.broken(e.to_string())),
        }
    }

    /// Feeds one decoded answer.
    pub fn handle_answer(&mut self, msg: Control) -> Result<Control, SessionError> {
        match self.state {
            SenderState::AwaitingHelloAck => match msg {
                Control::HelloAck { version }
                    if (wire::MIN_PROTOCOL_VERSION..=self.max_version).contains(&version) =>
                {
                    self.version = version;
                    self.state = SenderState::Ready;
                    Ok(Control::HelloAck { version })
                }
                Control::HelloAck { version } => Err(self.broken(format!(
                    "the receiver chose protocol version {version}, outside this sender's {}..={}",
                    wire::MIN_PROTOCOL_VERSION,
                    self.max_version
                ))),
                Control::Error { class, message, .. } => {
                    self.state = SenderState::Failed;
                    Err(SessionError::Refused { class, message })
                }
                other => Err(self.unexpected(&other)),
            },
            SenderState::Awaiting { req } => self.answer(req, msg),
            SenderState::Start | SenderState::Ready | SenderState::Failed => {
                Err(self.broken(format!("{} arrived when no answer was due", name(&msg))))
            }
        }
    }

    fn answer(&mut self, req: u32, msg: Control) -> Result<Control, SessionError> {
        let expect = self.expect.take();
        if let Control::Error {
            req: r,
            class,
            message,
        } = msg
        {
            if r != req && r != 0 {
                return Err(self.broken(format!(
                    "an error for request {r} while request {req} is pending"
                )));
            }
            let fatal = matches!(class, ErrorClass::Protocol | ErrorClass::VersionMismatch);
            self.state = if fatal {
                SenderState::Failed
            } else {
                SenderState::Ready
            };
            return Err(SessionError::Refused { class, message });
        }
        let ok = match (expect, &msg) {
            (Some(Expect::DiskOpened), Control::DiskOpened { req: r, .. })
            | (Some(Expect::JobRecorded), Control::JobRecorded { req: r })
            | (Some(Expect::Capacity), Control::Capacity { req: r, .. })
            | (Some(Expect::GroupClaimed), Control::GroupClaimed { req: r, .. }) => *r == req,
            (
                Some(Expect::Committed { handle, cycle }),
                Control::Committed {
                    req: r,
                    handle: h,
                    cycle: c,
                },
            )
            | (
                Some(Expect::CycleOpened { handle, cycle }),
                Control::CycleOpened {
                    req: r,
                    handle: h,
                    cycle: c,
                    ..
                },
            ) => *r == req && *h == handle && *c == cycle,
            (
                Some(Expect::Hashes { handle, level }),
                Control::Hashes {
                    req: r,
                    handle: h,
                    level: l,
                    ..
                },
            ) => *r == req && *h == handle && *l == level,
            (
                Some(Expect::Root { handle }),
                Control::Root {
                    req: r, handle: h, ..
                },
            )
            | (
                Some(Expect::Progress { handle }),
                Control::ProgressPage {
                    req: r, handle: h, ..
                },
            ) => *r == req && *h == handle,
            (
                Some(Expect::Point { vm_cycle }),
                Control::PointCommitted {
                    req: r,
                    vm_cycle: c,
                },
            ) => *r == req && *c == vm_cycle,
            _ => false,
        };
        if !ok {
            return Err(self.unexpected(&msg));
        }
        self.state = SenderState::Ready;
        Ok(msg)
    }

    /// The request for the next page of progress when `answer` (a `DiskOpened`,
    /// `CycleOpened` or an earlier page folded into it by [`SenderControl::add_page`])
    /// announces more; `None` once the progress is whole. The driver sends it with
    /// [`SenderControl::request`] like any request.
    pub fn next_page(&mut self, answer: &Control) -> Option<Control> {
        let (handle, progress, more) = match answer {
            Control::DiskOpened {
                handle,
                progress,
                more_progress,
                ..
            }
            | Control::CycleOpened {
                handle,
                progress,
                more_progress,
                ..
            } => (*handle, progress, *more_progress),
            _ => return None,
        };
        if !more {
            return None;
        }
        let after = progress.bounds().map_or(0, |r| r.end);
        Some(Control::ProgressRequest {
            req: self.next_req(),
            handle,
            after,
        })
    }

    /// Folds a `ProgressPage` into the answer it continues: its ranges must follow the ones
    /// already received (ascending, not overlapping) and a page announcing more must carry
    /// some, so a receiver can neither reorder progress nor keep the sender asking forever.
    pub fn add_page(&mut self, answer: &mut Control, page: Control) -> Result<(), SessionError> {
        let Control::ProgressPage {
            progress: ranges,
            more,
            ..
        } = page
        else {
            return Err(self.unexpected(&page));
        };
        let (progress, more_progress) = match answer {
            Control::DiskOpened {
                progress,
                more_progress,
                ..
            }
            | Control::CycleOpened {
                progress,
                more_progress,
                ..
            } => (progress, more_progress),
            other => {
                let n = name(other);
                return Err(self.broken(format!("a progress page continues {n}")));
            }
        };
        let last = progress.bounds().map_or(0, |r| r.end);
        if ranges.bounds().is_some_and(|r| r.start < last) {
            return Err(self.broken(format!(
                "a progress page starts before the end of the last range received ({last})"
            )));
        }
        if more && ranges.is_empty() {
            return Err(self.broken("an empty progress page announces more".into()));
        }
        // Ascending after `last`: each range lands at the end (one that starts exactly at
        // `last` merges with the range before, as within a frame).
        progress.union_with(&ranges);
        *more_progress = more;
        Ok(())
    }

    fn unexpected(&mut self, got: &Control) -> SessionError {
        let pending = match self.state {
            SenderState::Awaiting { req } => format!("request {req}"),
            SenderState::AwaitingHelloAck => "the hello".to_string(),
            _ => "nothing".to_string(),
        };
        self.broken(format!("unexpected answer {} to {pending}", name(got)))
    }

    fn broken(&mut self, why: String) -> SessionError {
        self.state = SenderState::Failed;
        self.expect = None;
        SessionError::Protocol(why)
    }
}
