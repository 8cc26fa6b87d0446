//! The test-only UDP relay on 127.0.0.1 between senders and a receiver: it forwards
//! datagrams both ways (QUIC stays end to end; each sender address gets its own upstream
//! socket, as a NAT would give it), counts the sender's bytes (UDP payload, i.e. everything
//! QUIC put on the wire) per 100 ms bucket and the receiver's in total, can add a one-way
//! delay and random loss in each direction (this machine has no netem), and can cut the link
//! (drop everything, both ways) for as long as a test wants — the QUIC connection then dies
//! of its idle timeout and the sender has to reconnect and resume. Throttle tests measure
//! the rate here, outside vdrep, instead of trusting vdrep's own throttle state.
//!
//! Plain threads and blocking sockets: the relay must not share a runtime with what it
//! measures. Sockets get 8 MiB buffers so the relay itself does not drop at 200 Mbit/s.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Length of a counting bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// What the relay does to datagrams besides forwarding them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impair {
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Probability of dropping a datagram, in each direction.
    pub loss: f64,
    /// Seed of the loss decisions.
    pub seed: u64,
}

/// Counters of the sender → receiver direction.
pub struct Counts {
    start: Instant,
    buckets: Mutex<Vec<u64>>,
    /// Datagrams forwarded or dropped.
    pub datagrams: AtomicU64,
    /// Datagrams dropped on purpose (both directions).
    pub dropped: AtomicU64,
    /// Receiver → sender bytes (offered, cut or not).
    down: AtomicU64,
    /// The link is cut: nothing passes either way.
    cut: AtomicBool,
}

impl Counts {
    fn add(&self, at: Instant, n: usize) {
        let i = (at.duration_since(self.start).as_millis() / BUCKET.as_millis()) as usize;
        if let Ok(mut b) = self.buckets.lock() {
            if b.len() <= i {
                b.resize(i + 1, 0);
            }
            b[i] += n as u64;
        }
        self.datagrams.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running relay; dropping it stops it.
pub struct UdpRelay {
    /// Where senders connect (`--to`).
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

/// Enlarges a socket's buffers (root may exceed `net.core.rmem_max`).
fn big_buffers(s: &UdpSocket) {
    let v: libc::c_int = 8 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt on a valid fd with a pointer to a c_int of that size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &v as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// xorshift64*: loss decisions without a dependency, reproducible per seed.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sends datagrams after the delay, in order (the delay is the same for all).
type Delayed = mpsc::Sender<(Instant, Vec<u8>)>;

fn delay_line(sock: Arc<UdpSocket>, to: Option<SocketAddr>, stop: Arc<AtomicBool>) -> Delayed {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        while let Ok((at, buf)) = rx.recv() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            let _ = match to {
                Some(a) => sock.send_to(&buf, a),
                None => sock.send(&buf),
            };
        }
    });
    tx
}

impl UdpRelay {
    /// Listens on 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, impair: Impair) -> UdpRelay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("relay: bind"));
        big_buffers(&front);
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = front.local_addr().unwrap();
        let counts = Arc::new(Counts {
            start: Instant::now(),
            buckets: Mutex::new(Vec::new()),
            datagrams: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counts.clone(), stop.clone());
        thread::spawn(move || front_loop(front, upstream, impair, c, st));
        UdpRelay { addr, counts, stop }
    }

    /// `127.0.0.1:PORT`, for `--to`.
    pub fn to(&self) -> String {
        self.addr.to_string()
    }

    /// When counting started (bucket 0 begins here).
    pub fn started(&self) -> Instant {
        self.counts.start
    }

    /// Sender → receiver bytes per [`BUCKET`] since the start.
    pub fn buckets(&self) -> Vec<u64> {
        self.counts
            .buckets
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// Sender → receiver bytes so far.
    pub fn total(&self) -> u64 {
        self.buckets().iter().sum()
    }

    /// Datagrams dropped on purpose.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.counts.cut.store(cut, Ordering::Relaxed);
    }

    /// Datagram bytes offered so far, both directions together (those dropped by a cut or
    /// by loss included: they were sent).
    pub fn bytes(&self) -> u64 {
        self.total() + self.counts.down.load(Ordering::Relaxed)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn front_loop(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    impair: Impair,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(impair.seed | 1);
    let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, Option<Delayed>)> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match front.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let now = Instant::now();
        counts.add(now, n);
        let (up, line) = clients.entry(from).or_insert_with(|| {
            let up = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("relay: bind upstream"));
            big_buffers(&up);
            up.connect(upstream).expect("relay: connect upstream");
            up.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let back = (!impair.delay.is_zero())
                .then(|| delay_line(front.clone(), Some(from), stop.clone()));
            let (u, f, st, c) = (up.clone(), front.clone(), stop.clone(), counts.clone());
            thread::spawn(move || back_loop(u, f, from, impair, back, c, st));
            let line =
                (!impair.delay.is_zero()).then(|| delay_line(up.clone(), None, stop.clone()));
            (up, line)
        });
        if counts.cut.load(Ordering::Relaxed) {
            continue;
        }
        if impair.loss > 0.0 && rng.unit() < impair.loss {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match line {
            Some(l) => {
                let _ = l.send((now + impair.delay, buf[..n].to_vec()));
            }
            None => {
                let _ = up.send(&buf[..n]);
            }
        }
    }
}

/// Receiver → sender.
fn back_loop(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    impair: Impair,
    line: Option<Delayed>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(impair.seed.rotate_left(17) | 1);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let n = match up.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        counts.down.fetch_add(n as u64, Ordering::Relaxed);
        if counts.cut.load(Ordering::Relaxed) {
            continue;
        }
        if impair.loss > 0.0 && rng.unit() < impair.loss {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match &line {
            Some(l) => {
                let _ = l.send((Instant::now() + impair.delay, buf[..n].to_vec()));
            }
            None => {
                let _ = front.send_to(&buf[..n], client);
            }
        }
    }
}

/// Bytes per second over windows of `len` sliding by one bucket, from `from` to `to`
/// (seconds since the start); returns (window start, rate).
pub fn window_rates(buckets: &[u64], len: Duration, from: f64, to: f64) -> Vec<(f64, f64)> {
    let per = BUCKET.as_secs_f64();
    let w = (len.as_secs_f64() / per).round() as usize;
    let (a, b) = ((from / per).round() as usize, (to / per).round() as usize);
    let mut out = Vec::new();
    let mut i = a;
    while i + w <= b.min(buckets.len()) {
        let sum: u64 = buckets[i..i + w].iter().sum();
        out.push((i as f64 * per, sum as f64 / len.as_secs_f64()));
        i += 1;
    }
    out
}
