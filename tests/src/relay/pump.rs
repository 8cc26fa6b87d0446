//! Stream pumps of the relay: frame-aware with corruption (sender → receiver) and plain
//! bytes (receiver → sender).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vdrep_proto::wire::{FrameHeader, EXTENT_HEADER_LEN, FRAME_HEADER_LEN, K_EXTENT};

use super::Corruption;

/// Frames bigger than this are not vdrep's (4 MiB payload + header); the relay gives up.
const MAX_BODY: u32 = 8 << 20;

/// Copies frames from `from` to `to`, corrupting payloads per `c`. Ends of streams and
/// stop/reset signals are passed on.
pub async fn frames(mut from: quinn::RecvStream, mut to: quinn::SendStream, c: Arc<Corruption>) {
    loop {
        let mut h = [0u8; FRAME_HEADER_LEN];
        match from.read(&mut h[..1]).await {
            Ok(Some(1)) => {}
            Ok(_) => {
                let _ = to.finish();
                return;
            }
            Err(_) => {
                let _ = to.reset(0u32.into());
                return;
            }
        }
        if from.read_exact(&mut h[1..]).await.is_err() {
            let _ = to.reset(0u32.into());
            return;
        }
        let hdr = FrameHeader::decode(&h);
        if hdr.len > MAX_BODY {
            let _ = to.reset(0u32.into());
            let _ = from.stop(0u32.into());
            return;
        }
        let mut body = vec![0u8; hdr.len as usize];
        if from.read_exact(&mut body).await.is_err() {
            let _ = to.reset(0u32.into());
            return;
        }
        if hdr.kind == K_EXTENT && body.len() > EXTENT_HEADER_LEN && c.every > 0 {
            maybe_flip(&mut body, &c);
        }
        let res = match to.write_all(&h).await {
            Ok(()) => to.write_all(&body).await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            let code = match e {
                quinn::WriteError::Stopped(code) => code,
                _ => 0u32.into(),
            };
            let _ = from.stop(code);
            return;
        }
    }
}

/// Flips one bit in the payload of every `c.every`-th extent, once per offset.
fn maybe_flip(body: &mut [u8], c: &Corruption) {
    let n = c.extents.fetch_add(1, Ordering::Relaxed) + 1;
    if n.checked_rem(c.every) != Some(0) {
        return;
    }
    let offset = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let first_time = c
        .offsets
        .lock()
        .map(|mut s| s.insert(offset))
        .unwrap_or(false);
    if !first_time {
        return;
    }
    let payload = &mut body[EXTENT_HEADER_LEN..];
    let i = (n as usize * 7919) % payload.len();
    payload[i] ^= 1 << (n % 8);
    c.flipped.fetch_add(1, Ordering::Relaxed);
}

/// Copies bytes from `from` to `to` unchanged.
pub async fn bytes(mut from: quinn::RecvStream, mut to: quinn::SendStream) {
    loop {
        match from.read_chunk(64 << 10, true).await {
            Ok(Some(chunk)) => {
                if let Err(e) = to.write_all(&chunk.bytes).await {
                    let code = match e {
                        quinn::WriteError::Stopped(code) => code,
                        _ => 0u32.into(),
                    };
                    let _ = from.stop(code);
                    return;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(_) => {
                let _ = to.reset(0u32.into());
                return;
            }
        }
    }
}
