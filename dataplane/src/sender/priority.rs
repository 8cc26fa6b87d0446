//! The sender's CPU priority: its shipping yields to the guests, the drain of a qemu view
//! does not.
//!
//! Why: on a host whose guests run beside the sender (qemu/KVM, where vdrep protects
//! running VMs), every CPU-second the sender's compression, hashing, QUIC and reads take
//! while a guest wants the core is a guest write served late. On the 2-core bench machine,
//! the guest's p99 write latency under protection was 3–5× unprotected with the shipping
//! at the guest's priority and 1.21× with it at nice 10 (`bench/results/ANALYSIS.md`,
//! session 12, Q18V; session 13, Q18P). A nice value, not `SCHED_IDLE`: at nice 10 the
//! shipping still gets about a tenth of a busy core (CFS weight 110 against 1024), so a
//! guest that keeps the host busy slows replication instead of stopping it.
//!
//! What must not yield is a qemu cycle's drain (`super::qemu::spool`): while it runs, the
//! view lives and every guest write to a block not yet copied waits for qemu's
//! copy-before-write; the shorter the view, the fewer waits. Linux's nice is per thread
//! and inherited by the threads a thread starts, and a thread may not raise its own
//! priority again without `CAP_SYS_NICE`. So [`yield_to_guests`] first starts one small
//! thread at the process's priority, then lowers the calling (main) thread, before the
//! runtime and the pipeline start theirs: every thread started afterwards inherits the
//! lower priority, except those started through [`spawn_unniced`], which that small thread
//! starts for it.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

/// How far below its own priority the sender's shipping runs when it protects qemu VMs
/// and nothing is given: see the top of this file. A sender with only Hyper-V logs or files keeps 0 unless told (its
/// throughput figures are measured there, against baselines at the same priority).
pub const QEMU_DEFAULT_NICE: i32 = 10;

/// The highest nice value Linux knows.
pub const MAX_NICE: i32 = 19;

/// How many nice levels below the process's priority the sender's shipping runs: `given`
/// (`--nice`, TOML `nice`), else [`QEMU_DEFAULT_NICE`] when it protects qemu VMs, else 0.
pub fn resolve(given: Option<i32>, protects_qemu: bool) -> Result<i32, String> {
    match given {
        Some(n) if !(0..=MAX_NICE).contains(&n) => Err(format!(
            "nice {n}: must be 0 (the guests' priority) to {MAX_NICE}"
        )),
        Some(n) => Ok(n),
        None if protects_qemu => Ok(QEMU_DEFAULT_NICE),
        None => Ok(0),
    }
}

/// The calling thread's id (Linux).
fn tid() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    // getpriority returns -1 both for nice -1 and for an error: errno tells them apart.
    // SAFETY: errno is the calling thread's; getpriority only reads the thread's priority.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid());
        if n == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n)
    }
}

/// Sets the calling thread's nice value (raising it again needs `CAP_SYS_NICE`).
pub fn set_thread_nice(n: i32) -> io::Result<()> {
    // SAFETY: setpriority only changes the calling thread's scheduling weight.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid(), n) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;
type Reply = mpsc::Sender<io::Result<JoinHandle<()>>>;

/// Starts threads at the priority it was started with.
pub struct Spawner {
    tx: Mutex<mpsc::Sender<(String, Job, Reply)>>,
}

impl Spawner {
    /// Starts the spawner's thread, at the calling thread's priority.
    pub fn start() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<(String, Job, Reply)>();
        std::thread::Builder::new()
            .name("vdrep-spawner".into())
            .spawn(move || {
                for (name, job, reply) in rx {
                    let _ = reply.send(std::thread::Builder::new().name(name).spawn(job));
                }
            })?;
        Ok(Spawner { tx: Mutex::new(tx) })
    }

    /// Starts thread `name` running `f` at the spawner's priority.
    pub fn spawn(&self, name: &str, f: Job) -> io::Result<JoinHandle<()>> {
        let (reply, answer) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .map_err(|_| io::Error::other("the spawner's lock is poisoned"))?
            .send((name.to_string(), f, reply));
        if sent.is_err() {
            return Err(io::Error::other("the spawner's thread is gone"));
        }
        answer
            .recv()
            .map_err(|_| io::Error::other("the spawner's thread is gone"))?
    }
}

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

/// Lowers the calling thread `by` nice levels below its priority (capped at
/// [`MAX_NICE`], as `nice -n BY` would), after starting the thread that [`spawn_unniced`]
/// uses at the current priority. Call it on the main thread before any thread that should
/// yield is started. Returns the new nice value.
pub fn yield_to_guests(by: i32) -> io::Result<i32> {
    let now = thread_nice()?;
    let n = now.saturating_add(by).min(MAX_NICE);
    if n <= now {
        return Ok(now);
    }
    if SPAWNER.get().is_none() {
        let s = Spawner::start()?;
        let _ = SPAWNER.set(s);
    }
    set_thread_nice(n)?;
    if ship_idle() {
        set_thread_idle(n)?;
        tracing::info!(
            nice = n,
            was = now,
            sched = "SCHED_IDLE",
            "the sender's shipping runs below the guests' priority (a qemu view's drain does not)"
        );
        return Ok(n);
    }
    let slice = ship_slice();
    let sched = match slice {
        Some(ns) => match set_thread_slice(n, ns) {
            Ok(()) => "long slice: a waking guest thread preempts it",
            Err(e) => {
                tracing::warn!(error = %e, "cannot set the shipping's scheduler slice: a waking guest thread may wait for it");
                "kernel's slice"
            }
        },
        None => "kernel's slice",
    };
    tracing::info!(
        nice = n,
        was = now,
        slice_ns = slice,
        sched,
        "the sender's shipping runs below the guests' priority (a qemu view's drain does not)"
    );
    Ok(n)
}

/// The EEVDF slice the shipping threads run with, nanoseconds: longer than any default
/// slice, so that a waking thread with the default one preempts them at once.
///
/// Why: the guest's write at queue depth 1 is a chain of wake-ups (its vCPU or I/O thread,
/// qemu's event loop, the disk's completion), and each waits for the core it lands on.
/// Nice alone sets the share, not the wait: since Linux 6.6 (EEVDF, `RUN_TO_PARITY`) a
/// running thread keeps its core against a waking one until it has run its slice (1.4 ms
/// on this 2-core machine), at any weight; with the 250 Hz tick and no kernel preemption
/// the next chance may come up to 4 ms later. Since 6.12 a waking thread whose slice is
/// shorter than the running one's cancels that protection (`PREEMPT_SHORT`), and picks
/// by deadline then — where the guest's (nice 0 against 10) comes first. A long slice on
/// our side is what gives every guest thread that shorter slice, without touching the
/// guests, and it keeps the weight (unlike `SCHED_IDLE`, see the top of this file).
/// `VDREP_SHIP_SLICE_MS` changes it (0: the kernel's); earlier kernels ignore it.
pub const SHIP_SLICE_NS: u64 = 20_000_000;

/// Gives the calling thread, which stays at its nice value, the shipping's long slice
/// ([`ship_slice`]): a qemu view's drain runs at the guests' priority (its view must stay
/// short), and at equal weight with the kernel's slice a guest thread that wakes on its core
/// waits until the drain has run its slice and the next tick comes (up to 4 ms here;
/// `bench/results/ANALYSIS.md`, session 15, P). With the long slice the waking guest
/// thread preempts it, and the drain keeps its share. Best effort: earlier kernels ignore
/// it, an error is logged.
pub fn lengthen_own_slice() {
    let Some(ns) = ship_slice() else { return };
    let r = thread_nice().and_then(|n| set_thread_slice(n, ns));
    if let Err(e) = r {
        tracing::debug!(error = %e, "cannot lengthen the thread's scheduler slice");
    }
}

/// [`SHIP_SLICE_NS`], or `VDREP_SHIP_SLICE_MS` (0 or unparsable: `None`, the kernel's).
fn ship_slice() -> Option<u64> {
    match std::env::var("VDREP_SHIP_SLICE_MS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) | Err(_) => None,
            // The kernel takes 0.1–100 ms.
            Ok(ms) => Some(ms.clamp(1, 100) * 1_000_000),
        },
        Err(_) => Some(SHIP_SLICE_NS),
    }
}

/// Whether the shipping runs at `SCHED_IDLE` (`VDREP_SHIP_POLICY=idle`) instead of a
/// nice value with a long slice.
fn ship_idle() -> bool {
    std::env::var("VDREP_SHIP_POLICY").is_ok_and(|v| v.trim().eq_ignore_ascii_case("idle"))
}

/// The kernel's `struct sched_attr` as `sched_setattr(2)` takes it (first version, 48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Sets the calling thread's policy to `SCHED_OTHER` at nice `nice` with an EEVDF slice
/// of `slice_ns` (its `sched_runtime`; Linux ≥ 6.12, clamped there to 0.1–100 ms).
/// Threads it starts afterwards inherit both. Needs no privilege at a nice not below the
/// thread's own.
pub fn set_thread_slice(nice: i32, slice_ns: u64) -> io::Result<()> {
    sched_setattr(libc::SCHED_OTHER as u32, nice, slice_ns)
}

/// `sched_setattr(2)` of the calling thread: `policy`, `nice` and `runtime` (the slice of a
/// fair thread), nothing else.
fn sched_setattr(policy: u32, nice: i32, runtime: u64) -> io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags: 0,
        nice,
        priority: 0,
        runtime,
        deadline: 0,
        period: 0,
    };
    // SAFETY: attr is a valid sched_attr of the size it declares; 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SCHED_IDLE` (Linux's `include/uapi/linux/sched.h`).
pub const SCHED_IDLE: u32 = 5;

/// Sets the calling thread's policy to `SCHED_IDLE` (nice `nice` kept for when it goes
/// back to `SCHED_OTHER`): it runs only on a core no other fair thread wants, and a waking
/// fair thread preempts it at once. Threads it starts afterwards inherit it. Needs no
/// privilege (going back does, unless `RLIMIT_NICE` allows it).
pub fn set_thread_idle(nice: i32) -> io::Result<()> {
    sched_setattr(SCHED_IDLE, nice, 0)
}

/// Starts thread `name` running `f` at the priority the process had before
/// [`yield_to_guests`] (or at the caller's, when it was never called).
pub fn spawn_unniced<F>(name: &str, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    match SPAWNER.get() {
        Some(s) => s.spawn(name, Box::new(f)),
        None => std::thread::Builder::new().name(name.to_string()).spawn(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of thread `tid` as /proc shows it (field 19 of its stat line).
    fn proc_nice(tid: libc::id_t) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The command name may hold spaces: fields are counted after its closing ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_lowered_threads_children_inherit_its_nice_except_the_spawners() {
        // On a thread of its own: nice is per thread, the test harness's stays as it was.
        std::thread::spawn(|| {
            // Tests run at nice 19: back to 0 where allowed (root), else from where it is.
            let _ = set_thread_nice(0);
            let base = thread_nice().unwrap();
            if base + 5 > MAX_NICE {
                eprintln!("at nice {base}: cannot lower further, nothing to check");
                return;
            }
            let spawner = Spawner::start().unwrap();
            set_thread_nice(base + 5).unwrap();
            assert_eq!(proc_nice(tid()), base + 5);
            let (tx, rx) = mpsc::channel();
            let tx2 = tx.clone();
            std::thread::spawn(move || tx.send(("plain", proc_nice(tid()))).unwrap())
                .join()
                .unwrap();
            spawner
                .spawn(
                    "vdrep-test",
                    Box::new(move || tx2.send(("unniced", proc_nice(tid()))).unwrap()),
                )
                .unwrap()
                .join()
                .unwrap();
            let got: Vec<_> = rx.try_iter().collect();
            assert_eq!(got, vec![("plain", base + 5), ("unniced", base)]);
        })
        .join()
        .unwrap();
    }

    /// The EEVDF slice of thread `tid` in ns (`se.slice` of /proc's sched file), if shown.
    fn proc_slice(tid: libc::id_t) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).ok()?;
        let l = s.lines().find(|l| l.starts_with("se.slice"))?;
        l.split(':').nth(1)?.trim().parse().ok()
    }

    #[test]
    fn the_long_slice_is_inherited_by_the_shipping_threads_and_not_by_the_spawners() {
        std::thread::spawn(|| {
            let before = proc_slice(tid());
            let spawner = Spawner::start().unwrap();
            let nice = thread_nice().unwrap();
            set_thread_slice(nice, SHIP_SLICE_NS).unwrap();
            // The nice value is the one given: the call must not move it.
            assert_eq!(thread_nice().unwrap(), nice);
            // Linux >= 6.12 takes a fair thread's sched_runtime as its slice; earlier
            // ones ignore it, and there is nothing to check.
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            let mut v = release
                .split(|c: char| !c.is_ascii_digit())
                .map(|x| x.parse::<u32>().unwrap_or(0));
            let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            if (major, minor) < (6, 12) {
                eprintln!("Linux {major}.{minor}: no custom slices, nothing to check");
                return;
            }
            assert_eq!(proc_slice(tid()), Some(SHIP_SLICE_NS));
            let (tx, rx) = mpsc::channel();
            let tx2 = tx.clone();
            std::thread::spawn(move || tx.send(("plain", proc_slice(tid()))).unwrap())
                .join()
                .unwrap();
            spawner
                .spawn(
                    "vdrep-test",
                    Box::new(move || tx2.send(("unniced", proc_slice(tid()))).unwrap()),
                )
                .unwrap()
                .join()
                .unwrap();
            let got: Vec<_> = rx.try_iter().collect();
            assert_eq!(
                got,
                vec![("plain", Some(SHIP_SLICE_NS)), ("unniced", before)]
            );
            assert_ne!(before, Some(SHIP_SLICE_NS));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_default_is_nice_10_only_for_qemu_and_a_given_value_is_checked() {
        assert_eq!(resolve(None, true), Ok(QEMU_DEFAULT_NICE));
        assert_eq!(resolve(None, false), Ok(0));
        assert_eq!(resolve(Some(0), true), Ok(0));
        assert_eq!(resolve(Some(19), false), Ok(19));
        assert!(resolve(Some(20), true).is_err());
        assert!(resolve(Some(-1), true).is_err());
    }
}
