//! Typed Blob service operations on top of [`super::rest::Client`]: exactly the calls the
//! Azure sink makes, with the page rules (≤ 4 MiB per Put Page, 512-byte alignment) enforced
//! *before* anything is sent — Azurite does not enforce them, Azure does.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};
use vdrep_proto::RangeSet;

use super::rest::{xml_sections, xml_text, xml_unescape, Client, Req, Resp, RestError};

/// Largest Put Page body Azure accepts.
pub const MAX_PUT_PAGE: usize = 4 << 20;
/// Page size.
pub const PAGE: u64 = 512;

/// A Put Page that breaks the page rules; refused before sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRuleError {
    /// Requested offset.
    pub offset: u64,
    /// Requested length.
    pub len: u64,
    /// Which rule.
    pub problem: &'static str,
}

/// CRC-64/NVME: Azure Storage's transactional CRC64 (polynomial 0x9A6C9329AC4BC9B5
/// reflected, the `StorageCrc64Calculator` of the Azure SDKs).
const CRC64: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_NVME);

/// The `x-ms-content-crc64` header of a body: its CRC-64/NVME as 8 little-endian bytes in
/// base64. Put Page carries it instead of Content-MD5 (either one is allowed, not both):
/// the service checks it the same way, and it costs a quarter of MD5's CPU on both ends
/// (Azurite computes the CRC64 of every page anyway, and MD5 on top when one is sent).
pub fn content_crc64(data: &[u8]) -> String {
    B64.encode(CRC64.checksum(data).to_le_bytes())
}

/// Checks one Put Page against Azure's rules.
pub fn check_put_page(offset: u64, len: usize) -> Result<(), PageRuleError> {
    let problem = if len == 0 {
        Some("a Put Page carries at least one 512-byte page")
    } else if len > MAX_PUT_PAGE {
        Some("a Put Page carries at most 4 MiB (Azure's limit)")
    } else if !offset.is_multiple_of(PAGE) || !(len as u64).is_multiple_of(PAGE) {
        Some("page writes must be 512-byte aligned in offset and length")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(PageRuleError {
            offset,
            len: len as u64,
            problem,
        }),
        None => Ok(()),
    }
}

/// One entry of List Blobs.
#[derive(Debug, Clone)]
pub struct BlobItem {
    /// Blob name.
    pub name: String,
    /// Snapshot timestamp, for snapshots.
    pub snapshot: Option<String>,
    /// User metadata (names lower case, without `x-ms-meta-`).
    pub metadata: BTreeMap<String, String>,
    /// Content length.
    pub len: u64,
}

/// Blob operations on one container.
#[derive(Debug)]
pub struct Container {
    /// The account client.
    pub client: Client,
    /// Container name.
    pub name: String,
    /// Put Page requests sent (a retried one counts once, whatever its attempts): tests and
    /// benchmarks compare it with the data written.
    pub put_pages: std::sync::atomic::AtomicU64,
}

fn lease_h<'a>(r: Req<'a>, lease: Option<&str>) -> Req<'a> {
    match lease {
        Some(l) => r.h("x-ms-lease-id", l),
        None => r,
    }
}

impl Container {
    /// `/container/blob`.
    pub fn path(&self, blob: &str) -> String {
        format!("/{}/{}", self.name, blob)
    }

    /// The URL of a blob (no credentials).
    pub fn url(&self, blob: &str) -> String {
        self.client.url(&self.path(blob))
    }

    /// Creates the container unless it exists.
    pub fn ensure_exists(&self) -> Result<(), RestError> {
        let r = Req::new("PUT", format!("/{}", self.name), "create container")
            .q("restype", "container");
        match self.client.send(&r) {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates (or replaces, keeping its snapshots) an all-zero page blob of `size` bytes.
    pub fn create_page_blob(
        &self,
        blob: &str,
        size: u64,
        lease: Option<&str>,
    ) -> Result<Resp, RestError> {
        let r = Req::new("PUT", self.path(blob), "create page blob")
            .h("x-ms-blob-type", "PageBlob")
            .h("x-ms-blob-content-length", size.to_string());
        self.client.send(&lease_h(r, lease))
    }

    /// One Put Page with its content CRC64 (see [`content_crc64`]). Refuses (without sending) what breaks the page rules.
    pub fn put_page(
        &self,
        blob: &str,
        offset: u64,
        data: &[u8],
        lease: Option<&str>,
    ) -> Result<(), PutPageError> {
        check_put_page(offset, data.len()).map_err(PutPageError::Rule)?;
        let mut r = Req::new("PUT", self.path(blob), "put page")
            .q("comp", "page")
            .h("x-ms-page-write", "update")
            .h(
                "x-ms-range",
                format!("bytes={}-{}", offset, offset + data.len() as u64 - 1),
            )
            .h("x-ms-content-crc64", content_crc64(data));
        r.body = data;
        r.offset = offset;
        self.put_pages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client
            .send(&lease_h(r, lease))
            .map(|_| ())
            .map_err(PutPageError::Rest)
    }

    /// Clear Pages over `[offset, offset+len)` (512-aligned).
    pub fn clear_pages(
        &self,
        blob: &str,
        offset: u64,
        len: u64,
        lease: Option<&str>,
    ) -> Result<(), RestError> {
        let mut r = Req::new("PUT", self.path(blob), "clear pages")
            .q("comp", "page")
            .h("x-ms-page-write", "clear")
            .h(
                "x-ms-range",
                format!("bytes={}-{}", offset, offset + len - 1),
            );
        r.offset = offset;
        self.client.send(&lease_h(r, lease)).map(|_| ())
    }

    /// Reads `[offset, offset+len)` of a blob or of one of its snapshots.
    pub fn get_range(
        &self,
        blob: &str,
        snapshot: Option<&str>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, RestError> {
        let mut r = Req::new("GET", self.path(blob), "get blob").h(
            "x-ms-range",
            format!("bytes={}-{}", offset, offset + len - 1),
        );
        if let Some(s) = snapshot {
            r = r.q("snapshot", s);
        }
        r.offset = offset;
        Ok(self.client.send(&r)?.body)
    }

    /// Get Page Ranges: the bytes of a blob (or snapshot) that hold pages. The service's
    /// list (inclusive ends, in any order it likes, possibly touching) becomes one set.
    pub fn page_ranges(&self, blob: &str, snapshot: Option<&str>) -> Result<RangeSet, RestError> {
        let mut r = Req::new("GET", self.path(blob), "get page ranges").q("comp", "pagelist");
        if let Some(s) = snapshot {
            r = r.q("snapshot", s);
        }
        let resp = self.client.send(&r)?;
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        let mut out = RangeSet::new();
        for sec in xml_sections(&body, "PageRange") {
            let start = xml_text(sec.as_bytes(), "Start").and_then(|s| s.parse::<u64>().ok());
            let end = xml_text(sec.as_bytes(), "End").and_then(|s| s.parse::<u64>().ok());
            if let (Some(s), Some(e)) = (start, end) {
                // `End` is inclusive; a range ending at u64::MAX has no exclusive end.
                out.insert(s, e.saturating_add(1));
            }
        }
        Ok(out)
    }

    /// Snapshot Blob with the given metadata; returns the snapshot's timestamp id.
    pub fn snapshot(
        &self,
        blob: &str,
        metadata: &BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<String, RestError> {
        let mut r = Req::new("PUT", self.path(blob), "snapshot blob").q("comp", "snapshot");
        for (k, v) in metadata {
            r = r.h(&format!("x-ms-meta-{k}"), v.clone());
        }
        let resp = self.client.send(&lease_h(r, lease))?;
        resp.header("x-ms-snapshot")
            .map(str::to_string)
            .ok_or_else(|| RestError {
                url: self.url(blob),
                op: "snapshot blob",
                offset: 0,
                status: Some(resp.status),
                code: "NoSnapshotId".into(),
                message: "the service answered without x-ms-snapshot".into(),
                recoverable: false,
            })
    }

    /// Deletes one snapshot (absent is fine).
    pub fn delete_snapshot(&self, blob: &str, snapshot: &str) -> Result<(), RestError> {
        let r = Req::new("DELETE", self.path(blob), "delete snapshot").q("snapshot", snapshot);
        match self.client.send(&r) {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// List Blobs under `prefix`, with metadata and (optionally) snapshots.
    pub fn list(&self, prefix: &str, snapshots: bool) -> Result<Vec<BlobItem>, RestError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut r = Req::new("GET", format!("/{}", self.name), "list blobs")
                .q("restype", "container")
                .q("comp", "list")
                .q("prefix", prefix)
                .q(
                    "include",
                    if snapshots {
                        "metadata,snapshots"
                    } else {
                        "metadata"
                    },
                );
            if let Some(m) = &marker {
                r = r.q("marker", m.clone());
            }
            let resp = self.client.send(&r)?;
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            for sec in xml_sections(&body, "Blob") {
                let Some(name) = xml_text(sec.as_bytes(), "Name") else {
                    continue;
                };
                let snapshot = xml_text(sec.as_bytes(), "Snapshot").filter(|s| !s.is_empty());
                let len = xml_text(sec.as_bytes(), "Content-Length")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut metadata = BTreeMap::new();
                if let Some(m) = xml_sections(sec, "Metadata").first() {
                    parse_metadata(m, &mut metadata);
                }
                out.push(BlobItem {
                    name,
                    snapshot,
                    metadata,
                    len,
                });
            }
            marker = xml_text(body.as_bytes(), "NextMarker").filter(|m| !m.is_empty());
            if marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Acquires (or re-acquires with the same id) a lease of `secs` seconds.
    pub fn acquire_lease(&self, blob: &str, id: &str, secs: u32) -> Result<(), RestError> {
        let r = Req::new("PUT", self.path(blob), "acquire lease")
            .q("comp", "lease")
            .h("x-ms-lease-action", "acquire")
            .h("x-ms-lease-duration", secs.to_string())
            .h("x-ms-proposed-lease-id", id);
        self.client.send(&r).map(|_| ())
    }

    /// Renews a lease.
    pub fn renew_lease(&self, blob: &str, id: &str) -> Result<(), RestError> {
        let r = Req::new("PUT", self.path(blob), "renew lease")
            .q("comp", "lease")
            .h("x-ms-lease-action", "renew")
            .h("x-ms-lease-id", id);
        self.client.send(&r).map(|_| ())
    }

    /// Releases a lease.
    pub fn release_lease(&self, blob: &str, id: &str) -> Result<(), RestError> {
        let r = Req::new("PUT", self.path(blob), "release lease")
            .q("comp", "lease")
            .h("x-ms-lease-action", "release")
            .h("x-ms-lease-id", id);
        self.client.send(&r).map(|_| ())
    }

    /// Breaks any lease at once (operators and tests: "lease lost").
    pub fn break_lease(&self, blob: &str) -> Result<(), RestError> {
        let r = Req::new("PUT", self.path(blob), "break lease")
            .q("comp", "lease")
            .h("x-ms-lease-action", "break")
            .h("x-ms-lease-break-period", "0");
        self.client.send(&r).map(|_| ())
    }

    /// Writes a small block blob; `if_match` = expected ETag, or `None` to require that the
    /// blob does not exist. Returns the new ETag.
    pub fn put_block_blob(
        &self,
        blob: &str,
        data: &[u8],
        if_match: Option<&str>,
    ) -> Result<String, RestError> {
        let mut r = Req::new("PUT", self.path(blob), "write state blob")
            .h("x-ms-blob-type", "BlockBlob")
            .h("content-type", "application/json")
            .h("content-md5", B64.encode(Md5::digest(data)));
        r = match if_match {
            Some(e) => r.h("if-match", e),
            None => r.h("if-none-match", "*"),
        };
        r.body = data;
        let resp = self.client.send(&r)?;
        Ok(resp.header("etag").unwrap_or("").to_string())
    }

    /// Reads a whole (small) blob with its ETag; `None` if absent.
    pub fn get_blob(&self, blob: &str) -> Result<Option<(Vec<u8>, String)>, RestError> {
        let r = Req::new("GET", self.path(blob), "read state blob");
        match self.client.send(&r) {
            Ok(resp) => {
                let etag = resp.header("etag").unwrap_or("").to_string();
                Ok(Some((resp.body, etag)))
            }
            Err(e) if e.status == Some(404) && e.code == "BlobNotFound" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a blob with its snapshots (absent is fine).
    pub fn delete_blob(&self, blob: &str, lease: Option<&str>) -> Result<(), RestError> {
        let r = Req::new("DELETE", self.path(blob), "delete blob")
            .h("x-ms-delete-snapshots", "include");
        match self.client.send(&lease_h(r, lease)) {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The blob's `x-ms-lease-state` (available, leased, expired, breaking, broken).
    pub fn lease_state(&self, blob: &str) -> Result<String, RestError> {
        let r = Req::new("HEAD", self.path(blob), "get blob properties");
        let resp = self.client.send(&r)?;
        Ok(resp.header("x-ms-lease-state").unwrap_or("").to_string())
    }

    /// Blob size (Content-Length of Get Blob Properties), `None` if absent.
    pub fn blob_size(&self, blob: &str) -> Result<Option<u64>, RestError> {
        let r = Req::new("HEAD", self.path(blob), "get blob properties");
        match self.client.send(&r) {
            Ok(resp) => Ok(resp.header("content-length").and_then(|v| v.parse().ok())),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A failed Put Page: refused locally, or by the service.
#[derive(Debug)]
pub enum PutPageError {
    /// Broke the page rules; nothing was sent.
    Rule(PageRuleError),
    /// The service or transport failed.
    Rest(RestError),
}

/// Parses `<name>value</name>` pairs of a `<Metadata>` section.
fn parse_metadata(s: &str, out: &mut BTreeMap<String, String>) {
    let mut rest = s;
    while let Some(a) = rest.find('<') {
        let after = &rest[a + 1..];
        let Some(b) = after.find('>') else { return };
        let tag = &after[..b];
        if tag.starts_with('/') || tag.ends_with('/') {
            rest = &after[b + 1..];
            continue;
        }
        let body = &after[b + 1..];
        let close = format!("</{tag}>");
        let Some(c) = body.find(&close) else { return };
        out.insert(tag.to_ascii_lowercase(), xml_unescape(&body[..c]));
        rest = &body[c + close.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_crc64_is_crc_64_nvme_in_little_endian_base64() {
        // The catalogue's check value of CRC-64/NVME for "123456789".
        assert_eq!(CRC64.checksum(b"123456789"), 0xae8b_1486_0a79_9888);
        assert_eq!(
            content_crc64(b"123456789"),
            B64.encode(0xae8b_1486_0a79_9888u64.to_le_bytes())
        );
    }

    #[test]
    fn a_put_page_of_4_mib_plus_512_is_refused_before_sending() {
        assert!(check_put_page(0, MAX_PUT_PAGE).is_ok());
        let e = check_put_page(0, MAX_PUT_PAGE + 512).unwrap_err();
        assert!(e.problem.contains("4 MiB"), "{e:?}");
        assert!(check_put_page(1, 512).is_err());
        assert!(check_put_page(512, 100).is_err());
        assert!(check_put_page(512, 0).is_err());
    }

    #[test]
    fn metadata_sections_parse() {
        let mut m = BTreeMap::new();
        parse_metadata("<vdrepcycle>3</vdrepcycle><Empty/><b>x &amp; y</b>", &mut m);
        assert_eq!(m.get("vdrepcycle").unwrap(), "3");
        assert_eq!(m.get("b").unwrap(), "x & y");
    }
}
