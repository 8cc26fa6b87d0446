//! The receiver's resync index of an Azure disk ([`crate::resync::index`]): the page blob
//! `VM/NAME.hidx` beside the replica, so that the index lives in Azure Storage with the
//! data and any receiver instance that takes a disk over finds it.
//!
//! **Content.** The blob holds the index file's bytes from offset 0, padded with zeros to a
//! whole 512-byte page; the file's exact length is the blob's metadata `vdreplen` (the index
//! checks its length). A blob of length 0 is "no index yet".
//!
//! **Writes.** The index writes small pieces at any offset (a 64-byte header, runs of
//! 32-byte hashes) and needs a barrier ([`IndexFile::sync`]) between them. Page blobs take
//! only whole 512-byte pages, at most 4 MiB per Put Page, so the content is kept in memory
//! ([`PagedIndex`]): `write_at` changes the copy and marks the pages it touches dirty,
//! `sync` sends the dirty pages, joined into runs of at most 4 MiB, and returns once every
//! Put Page returned (a returned Put Page is durable). A page is atomic on the service, and
//! the index's protocol never relies on the order of pages inside one sync. A failed sync
//! keeps the unsent pages dirty, so the next sync sends them again. The memory cost is the
//! index's size: 32 bytes per 256 KiB of disk (128 MiB per TiB), the same as the hashes the
//! index keeps anyway.
//!
//! **Length changes** (the first persist of a new disk, or a blob left by another layout)
//! recreate the blob at the new length: all zero, then every non-zero page is sent. A crash
//! in between leaves an all-zero (or partly written) file, which the index rejects as
//! damaged: it is then all dirty, never trusted. Content never read (no `read_all` before
//! the first write: a fresh copy, whose index is rewritten whole) is not fetched; the blob
//! is recreated at the first sync instead.
//!
//! **Single writer.** The blob carries a lease with the same id and duration as the
//! replica's, renewed by its own thread and released on drop; every write names it, so a
//! receiver that lost the disk is fenced by the service. Whoever holds the replica's lease
//! owns the index: a lease still held on the index (a fenced receiver's, or one that expires
//! a moment after the replica's) is broken and taken.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};
use vdrep_proto::RangeSet;

use super::blob::{check_put_page, Container, MAX_PUT_PAGE, PAGE};
use super::points::renew_loop;
use super::rest::{Req, RestError};
use crate::resync::index::IndexFile;

/// Metadata name of the index file's exact length.
const LEN_META: &str = "x-ms-meta-vdreplen";

/// A blob's bytes and the file length recorded with them (`None`: missing or not a number).
pub(super) type Stored = (Vec<u8>, Option<u64>);

/// The blob operations the index needs: a trait so that the page tracking is tested in
/// memory, with faults.
pub(super) trait IndexBlob: Send + Sync {
    /// The whole blob and its recorded length; `None` if there is no blob.
    fn get(&self) -> Result<Option<Stored>, RestError>;
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

/// What is known of the blob and the content it should hold.
#[derive(Default)]
struct Mirror {
    /// The index file's bytes as written (durable once `dirty` is empty).
    data: Vec<u8>,
    /// Page-aligned byte ranges of `data` the blob does not hold yet.
    dirty: RangeSet,
    /// The blob's recorded length and size when they are known to match `data`'s layout;
    /// `None`: unknown, or another layout (the next sync recreates the blob).
    blob: Option<(u64, u64)>,
    /// True once the content was read or written (later reads answer from memory).
    loaded: bool,
    /// A blob found in another layout, handed to reads as it is until the first write.
    foreign: Option<Vec<u8>>,
}

/// A file kept as dirty-page-tracked content over an [`IndexBlob`].
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes not yet sent (tests).
    #[cfg(test)]
    fn pending(&self) -> u64 {
        self.lock().dirty.covered_len()
    }
}

impl<B: IndexBlob> PagedIndex<B> {
    /// The whole content, or `None` if there is none yet (fetched once, then answered
    /// from memory).
    #[cfg(test)]
    pub(super) fn read_all(&self) -> std::io::Result<Option<Vec<u8>>> {
        let mut m = self.lock();
        self.load(&mut m)?;
        if let Some(f) = &m.foreign {
            return Ok(Some(f.clone()));
        }
        Ok((!m.data.is_empty()).then(|| m.data.clone()))
    }

    fn load(&self, m: &mut Mirror) -> std::io::Result<()> {
        if m.loaded {
            return Ok(());
        }
        let got = self.blob.get().map_err(io_err)?;
        m.loaded = true;
        let Some((body, len)) = got else {
            return Ok(());
        };
        let size = body.len() as u64;
        match len {
            Some(len) if len <= size && round_up(len) == size => {
                m.data = body;
                m.data.truncate(len as usize);
                m.blob = Some((len, size));
            }
            // Not our layout: handed over as it is (the index finds it damaged), and
            // rewritten at the next sync.
            _ => {
                m.blob = None;
                m.foreign = Some(body);
            }
        }
        Ok(())
    }
}

impl<B: IndexBlob> IndexFile for PagedIndex<B> {
    fn size(&self) -> std::io::Result<Option<u64>> {
        let mut m = self.lock();
        self.load(&mut m)?;
        let len = m.foreign.as_ref().unwrap_or(&m.data).len() as u64;
        Ok((len > 0).then_some(len))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut m = self.lock();
        self.load(&mut m)?;
        let m = &*m;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|a| {
                m.foreign
                    .as_ref()
                    .unwrap_or(&m.data)
                    .get(a..a.checked_add(buf.len())?)
            })
            .ok_or_else(|| std::io::Error::other("index read past its end"))?;
        buf.copy_from_slice(src);
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
        let mut m = self.lock();
        m.loaded = true;
        m.foreign = None;
        if (m.data.len() as u64) < end {
            m.data.resize(end as usize, 0);
        }
        m.data[offset as usize..end as usize].copy_from_slice(data);
        m.dirty.insert(offset / PAGE * PAGE, round_up(end));
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        let mut m = self.lock();
        let len = m.data.len() as u64;
        let size = round_up(len);
        if m.blob != Some((len, size)) {
            self.blob.create(size, len).map_err(io_err)?;
            m.blob = Some((len, size));
            // The blob is all zero now: every page holding anything must go.
            let mut dirty = RangeSet::new();
            for (i, p) in m.data.chunks(PAGE as usize).enumerate() {
                if p.iter().any(|&b| b != 0) {
                    dirty.insert(i as u64 * PAGE, (i as u64 + 1) * PAGE);
                }
            }
            m.dirty = dirty;
        }
        let runs: Vec<_> = m.dirty.iter().collect();
        for r in runs {
            let mut a = r.start;
            while a < r.end {
                let b = (a + self.max_put as u64).min(r.end);
                let mut page = vec![0u8; (b - a) as usize];
                let have = (b.min(len).saturating_sub(a)) as usize;
                page[..have].copy_from_slice(&m.data[a as usize..a as usize + have]);
                self.blob.put(a, &page).map_err(io_err)?;
                m.dirty.remove(a, b);
                a = b;
            }
        }
        Ok(())
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
    fn get(&self) -> Result<Option<Stored>, RestError> {
        let r = Req::new("GET", self.c.path(&self.name), "read resync index");
        match self.c.client.send(&r) {
            Ok(resp) => {
                let len = resp.header(LEN_META).and_then(|v| v.trim().parse().ok());
                Ok(Some((resp.body, len)))
            }
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
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
