//! The receiver's resync index of an Azure disk ([`crate::resync::index`]): the page blob
//! `VM/NAME.hidx` beside the replica, so that the index lives in Azure Storage with the
//! data and any receiver instance that takes a disk over finds it.
//!
//! **Content.** The blob holds the index file's bytes from offset 0, padded with zeros to a
//! whole 512-byte page; the file's exact length is the blob's metadata `vdreplen` (the index
//! checks its length). A blob of length 0 is "no index yet".
//!
//! **Memory.** Nothing of the file is kept but the pages written and not yet sent
//! ([`PagedIndex`]): reads are ranged Get Blobs (the index reads through its own bounded
//! page cache, `resync::pages`), so a receiver's memory does not grow with the disk.
//!
//! **Writes.** The index writes pieces at any offset (a 64-byte header, runs of 32-byte
//! hashes, bitmap bytes) and needs a barrier ([`IndexFile::sync`]) between them. Page blobs
//! take only whole 512-byte pages, at most 4 MiB per Put Page, so `write_at` changes the
//! pages it touches (the rest of a partly written page is read from the blob first) and
//! keeps them as pending; `sync` sends the pending pages, joined into runs of at most 4 MiB,
//! and returns once every Put Page returned (a returned Put Page is durable). More than
//! [`MAX_PENDING`] pending bytes are sent at once by the write (sending early is allowed:
//! only `sync` promises anything). A page is atomic on the service, and the index's protocol
//! never relies on the order of pages inside one sync. A failed send keeps the unsent pages
//! pending, so the next sync sends them again.
//!
//! **Length.** The index announces its file's length ([`IndexFile::set_len`]) before the
//! first write to a file whose content it does not use (a fresh copy's, a stale one): the
//! blob is then recreated all zero at that length at the next send, and reads answer zeros
//! until then. Writes past the blob's recorded length without it are refused: the blob
//! holds content this side does not have, so it cannot be recreated silently. A crash
//! between the recreation and the index's clean persist leaves an all-zero (or partly
//! written) file, which the index rejects as damaged: it is then all dirty, never trusted.
//!
//! **Single writer.** The blob carries a lease with the same id and duration as the
//! replica's, renewed by its own thread and released on drop; every write names it, so a
//! receiver that lost the disk is fenced by the service. Whoever holds the replica's lease
//! owns the index: a lease still held on the index (a fenced receiver's, or one that expires
//! a moment after the replica's) is broken and taken.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};

use super::blob::{check_put_page, Container, MAX_PUT_PAGE, PAGE};
use super::points::renew_loop;
use super::rest::{Req, RestError};
use crate::resync::index::IndexFile;

/// Metadata name of the index file's exact length.
const LEN_META: &str = "x-ms-meta-vdreplen";

/// Bytes of pending pages a write may hold before it sends them.
const MAX_PENDING: usize = 4 << 20;

/// The blob operations the index needs: a trait so that the page tracking is tested in
/// memory, with faults.
pub(super) trait IndexBlob: Send + Sync {
    /// The blob's size and recorded file length (`None` inside: missing or not a number);
    /// `None` if there is no blob.
    fn props(&self) -> Result<Option<(u64, Option<u64>)>, RestError>;
    /// Bytes `[offset, offset + len)` of the blob (inside its size).
    fn get_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, RestError>;
    /// Replaces the blob by an all-zero one of `size` bytes recording length `len`.
    fn create(&self, size: u64, len: u64) -> Result<(), RestError>;
    /// One Put Page (512-aligned, at most 4 MiB).
    fn put(&self, offset: u64, data: &[u8]) -> Result<(), RestError>;
    /// Where the blob is, for messages.
    fn url(&self) -> String;
}

fn io_err(e: RestError) -> std::io::Error {
    let status = e
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    std::io::Error::other(format!(
        "{} {} at offset {}: {} {} {}",
        e.op, e.url, e.offset, status, e.code, e.message
    ))
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// What is known of the blob, and the pages written but not sent.
#[derive(Default)]
struct Mirror {
    /// The blob's size and the file's length in it (the recorded length, or the blob's
    /// size when none is recorded: another layout); `None` before they were fetched, or
    /// when there is no blob.
    blob: Option<(u64, u64)>,
    /// True once the blob's properties were fetched.
    fetched: bool,
    /// A recreation at this file length is due before the next Put Page (`set_len`): the
    /// blob's current content is not used (reads answer zeros).
    recreate: Option<u64>,
    /// Pages written and not yet sent, by page number (512 bytes each).
    pending: BTreeMap<u64, Box<[u8]>>,
}

impl Mirror {
    /// The file's length now.
    fn len(&self) -> u64 {
        self.recreate.or(self.blob.map(|b| b.1)).unwrap_or(0)
    }
}

/// A file kept as pending pages over an [`IndexBlob`].
pub(super) struct PagedIndex<B> {
    blob: B,
    m: Mutex<Mirror>,
    /// Largest Put Page sent (4 MiB; smaller in tests).
    max_put: usize,
}

impl<B: IndexBlob> PagedIndex<B> {
    pub(super) fn new(blob: B, max_put: usize) -> Self {
        PagedIndex {
            blob,
            m: Mutex::new(Mirror::default()),
            max_put: (max_put.min(MAX_PUT_PAGE) as u64 / PAGE * PAGE).max(PAGE) as usize,
        }
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, Mirror>> {
        let mut m = self.m.lock().unwrap_or_else(|p| p.into_inner());
        if !m.fetched {
            m.blob = self
                .blob
                .props()
                .map_err(io_err)?
                .map(|(size, len)| match len {
                    Some(len) if len <= size && round_up(len) == size => (size, len),
                    // Not our layout: handed over as it is (the index finds it damaged).
                    _ => (size, size),
                });
            m.fetched = true;
        }
        Ok(m)
    }

    /// Bytes not yet sent (tests).
    #[cfg(test)]
    fn pending(&self) -> u64 {
        self.m
            .lock()
            .map(|m| m.pending.len() as u64 * PAGE)
            .unwrap_or(0)
    }

    /// Reads `[a, b)` (whole pages) as the file holds them now: pending pages, else the
    /// blob (zeros past its end, or when it is to be recreated).
    fn read_pages(&self, m: &Mirror, a: u64, b: u64) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; (b - a) as usize];
        let stored = match (m.recreate, m.blob) {
            (None, Some((size, _))) => size.min(b),
            _ => a,
        };
        if stored > a && (a / PAGE..b / PAGE).any(|p| !m.pending.contains_key(&p)) {
            let got = self.blob.get_range(a, stored - a).map_err(io_err)?;
            let n = got.len().min(out.len());
            out[..n].copy_from_slice(&got[..n]);
        }
        for (p, page) in m.pending.range(a / PAGE..b / PAGE) {
            let at = (p * PAGE - a) as usize;
            out[at..at + PAGE as usize].copy_from_slice(page);
        }
        Ok(out)
    }

    /// Sends every pending page (after the due recreation), in runs of at most `max_put`.
    fn send(&self, m: &mut Mirror) -> std::io::Result<()> {
        if let Some(len) = m.recreate {
            self.blob.create(round_up(len), len).map_err(io_err)?;
            m.blob = Some((round_up(len), len));
            m.recreate = None;
        }
        let size = m.blob.map(|b| b.0).unwrap_or(0);
        if let Some((&last, _)) = m.pending.last_key_value() {
            if (last + 1) * PAGE > size {
                return Err(std::io::Error::other(format!(
                    "{}: write past the index blob's length ({size} bytes) without a new length",
                    self.blob.url()
                )));
            }
        }
        while let Some((&first, _)) = m.pending.first_key_value() {
            let mut run = vec![];
            let mut p = first;
            while run.len() < self.max_put {
                match m.pending.get(&p) {
                    Some(page) => run.extend_from_slice(page),
                    None => break,
                }
                p += 1;
            }
            self.blob.put(first * PAGE, &run).map_err(io_err)?;
            for q in first..p {
                m.pending.remove(&q);
            }
        }
        Ok(())
    }
}

impl<B: IndexBlob> IndexFile for PagedIndex<B> {
    fn size(&self) -> std::io::Result<Option<u64>> {
        let m = self.lock()?;
        let len = m.len();
        Ok((len > 0).then_some(len))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let m = self.lock()?;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= m.len())
            .ok_or_else(|| std::io::Error::other("index read past its end"))?;
        let a = offset / PAGE * PAGE;
        let got = self.read_pages(&m, a, round_up(end))?;
        let at = (offset - a) as usize;
        buf.copy_from_slice(&got[at..at + buf.len()]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if len > crate::layout::MAX_BLOB {
            return Err(std::io::Error::other(
                "index length beyond the largest blob",
            ));
        }
        let mut m = self.lock()?;
        m.recreate = Some(len);
        m.pending = BTreeMap::new();
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= crate::layout::MAX_BLOB)
            .ok_or_else(|| std::io::Error::other("index write beyond the largest blob"))?;
        let mut m = self.lock()?;
        for p in offset / PAGE..end.div_ceil(PAGE) {
            let (a, b) = (p * PAGE, (p + 1) * PAGE);
            let (s, e) = (offset.max(a), end.min(b));
            if !m.pending.contains_key(&p) {
                let page = if s == a && e == b {
                    vec![0u8; PAGE as usize]
                } else {
                    self.read_pages(&m, a, b)?
                };
                m.pending.insert(p, page.into_boxed_slice());
            }
            if let Some(page) = m.pending.get_mut(&p) {
                page[(s - a) as usize..(e - a) as usize]
                    .copy_from_slice(&data[(s - offset) as usize..(e - offset) as usize]);
            }
        }
        if m.pending.len() * PAGE as usize > MAX_PENDING {
            self.send(&mut m)?;
        }
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        let mut m = self.lock()?;
        self.send(&mut m)
    }

    fn describe(&self) -> String {
        self.blob.url()
    }
}

/// The `.hidx` blob of a disk, written under its lease.
pub(super) struct LeasedBlob {
    c: Arc<Container>,
    name: String,
    lease: String,
}

impl IndexBlob for LeasedBlob {
    fn props(&self) -> Result<Option<(u64, Option<u64>)>, RestError> {
        let r = Req::new(
            "HEAD",
            self.c.path(&self.name),
            "read resync index properties",
        );
        match self.c.client.send(&r) {
            Ok(resp) => {
                let size = resp
                    .header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let len = resp.header(LEN_META).and_then(|v| v.trim().parse().ok());
                Ok(Some((size, len)))
            }
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, RestError> {
        self.c.get_range(&self.name, None, offset, len)
    }

    fn create(&self, size: u64, len: u64) -> Result<(), RestError> {
        let r = Req::new("PUT", self.c.path(&self.name), "create resync index")
            .h("x-ms-blob-type", "PageBlob")
            .h("x-ms-blob-content-length", size.to_string())
            .h(LEN_META, len.to_string())
            .h("x-ms-lease-id", self.lease.as_str());
        self.c.client.send(&r).map(|_| ())
    }

    fn put(&self, offset: u64, data: &[u8]) -> Result<(), RestError> {
        // Sent here rather than by `Container::put_page`, whose counter is of replica data.
        if let Err(rule) = check_put_page(offset, data.len()) {
            return Err(super::points::unreachable_rule(rule));
        }
        let mut r = Req::new("PUT", self.c.path(&self.name), "write resync index")
            .q("comp", "page")
            .h("x-ms-page-write", "update")
            .h(
                "x-ms-range",
                format!("bytes={}-{}", offset, offset + data.len() as u64 - 1),
            )
            .h("content-md5", B64.encode(Md5::digest(data)))
            .h("x-ms-lease-id", self.lease.as_str());
        r.body = data;
        r.offset = offset;
        self.c.client.send(&r).map(|_| ())
    }

    fn url(&self) -> String {
        self.c.url(&self.name)
    }
}

/// The resync index of one disk: the tracked content over the leased blob, and the thread
/// that renews the lease (stopped, and the lease released, on drop).
pub(super) struct AzureIndexFile {
    inner: PagedIndex<LeasedBlob>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<JoinHandle<()>>,
}

impl AzureIndexFile {
    /// Takes the index blob `name` under lease `lease` (the replica's id), creating it empty
    /// when absent. The caller holds the replica's lease, so a lease held on the index by
    /// anyone else belongs to a fenced receiver and is broken.
    pub(super) fn open(
        c: Arc<Container>,
        name: String,
        lease: String,
        lease_secs: u32,
    ) -> Result<AzureIndexFile, String> {
        let url = c.url(&name);
        let fail = |what: &str, e: RestError| {
            format!(
                "{url}: {what} failed ({} {}): {}",
                e.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                e.code,
                e.message
            )
        };
        if c.blob_size(&name)
            .map_err(|e| fail("get properties", e))?
            .is_none()
        {
            let r = Req::new("PUT", c.path(&name), "create resync index")
                .h("x-ms-blob-type", "PageBlob")
                .h("x-ms-blob-content-length", "0")
                .h(LEN_META, "0")
                .h("if-none-match", "*");
            match c.client.send(&r) {
                Ok(_) => {}
                // Created meanwhile: the lease below settles who has it.
                Err(e) if e.status == Some(409) || e.status == Some(412) => {}
                Err(e) => return Err(fail("create", e)),
            }
        }
        if let Err(e) = c.acquire_lease(&name, &lease, lease_secs) {
            if e.status != Some(409) {
                return Err(fail("acquire lease", e));
            }
            tracing::warn!(blob = %url, "the resync index was leased by another receiver; breaking its lease");
            c.break_lease(&name).map_err(|e| fail("break lease", e))?;
            c.acquire_lease(&name, &lease, lease_secs)
                .map_err(|e| fail("acquire lease", e))?;
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let renewer = {
            let (c, name, lease, stop) = (c.clone(), name.clone(), lease.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vdrep-hidx-lease".into())
                .spawn(move || {
                    // A lost lease needs no flag: the service refuses the next write.
                    let lost = AtomicBool::new(false);
                    renew_loop(&c, &name, &lease, lease_secs, &stop, &lost)
                })
                .ok()
        };
        Ok(AzureIndexFile {
            inner: PagedIndex::new(LeasedBlob { c, name, lease }, MAX_PUT_PAGE),
            stop,
            renewer,
        })
    }
}

impl IndexFile for AzureIndexFile {
    fn size(&self) -> std::io::Result<Option<u64>> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl Drop for AzureIndexFile {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
    }
}

/// Deletes the index blob of a disk (absent is fine). Called with the replica removed or
/// unleased: a lease left on the index is a departed receiver's, and is broken.
pub(super) fn remove(c: &Container, name: &str) -> Result<(), RestError> {
    match c.delete_blob(name, None) {
        Err(e) if e.status == Some(412) || e.status == Some(409) => {
            c.break_lease(name)?;
            c.delete_blob(name, None)
        }
        r => r,
    }
}

#[cfg(test)]
#[path = "hidx_tests.rs"]
mod tests;
