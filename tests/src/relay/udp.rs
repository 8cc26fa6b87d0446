//! A plain UDP relay between senders and a receiver on 127.0.0.1: it forwards datagrams
//! untouched (QUIC stays end to end), counts the bytes each side offers, and can cut the
//! link (drop everything, both ways) for as long as a test wants — the QUIC connection then
//! dies of its idle timeout and the sender has to reconnect and resume.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What both directions share.
#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Datagram bytes offered by senders (towards the receiver).
    up: AtomicU64,
    /// Datagram bytes offered by the receiver (towards senders).
    down: AtomicU64,
}

/// A running relay; dropping it stops it.
pub struct UdpRelay {
    /// Where senders connect (`--to`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpRelay {
    /// Listens on 127.0.0.1 (any port) and forwards to `upstream`: each sender address gets
    /// its own upstream socket, as a NAT would give it.
    pub fn start(upstream: SocketAddr) -> UdpRelay {
        let listen = UdpSocket::bind("127.0.0.1:0").expect("relay bind");
        listen
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = listen.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let main = std::thread::spawn(move || {
            let listen = Arc::new(listen);
            let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let workers = Mutex::new(Vec::new());
            let mut buf = vec![0u8; 65536];
            while !sh.stop.load(Ordering::Relaxed) {
                let (n, from) = match listen.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                sh.up.fetch_add(n as u64, Ordering::Relaxed);
                if sh.cut.load(Ordering::Relaxed) {
                    continue;
                }
                let up = peers.entry(from).or_insert_with(|| {
                    let s = UdpSocket::bind("127.0.0.1:0").expect("relay upstream bind");
                    s.connect(upstream).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let s = Arc::new(s);
                    let (s2, l2, sh2) = (s.clone(), listen.clone(), sh.clone());
                    let h = std::thread::spawn(move || {
                        let mut b = vec![0u8; 65536];
                        while !sh2.stop.load(Ordering::Relaxed) {
                            let Ok(n) = s2.recv(&mut b) else { continue };
                            sh2.down.fetch_add(n as u64, Ordering::Relaxed);
                            if !sh2.cut.load(Ordering::Relaxed) {
                                let _ = l2.send_to(&b[..n], from);
                            }
                        }
                    });
                    workers.lock().unwrap().push(h);
                    s
                });
                let _ = up.send(&buf[..n]);
            }
            for h in workers.into_inner().unwrap() {
                let _ = h.join();
            }
        });
        UdpRelay {
            addr,
            shared,
            threads: vec![main],
        }
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.shared.cut.store(cut, Ordering::Relaxed);
    }

    /// Datagram bytes offered so far, both directions together (dropped ones included: they
    /// were sent).
    pub fn bytes(&self) -> u64 {
        self.shared.up.load(Ordering::Relaxed) + self.shared.down.load(Ordering::Relaxed)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
