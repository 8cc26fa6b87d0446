//! The state blob `VM/NAME.state`: a small JSON document, replaced with `If-Match` on its
//! ETag so that a writer that lost the disk cannot overwrite its successor's state.

use serde::{Deserialize, Serialize};
use vdrep_proto::{Guid, RangeSet};

use crate::sink::{lifecycle, DiskState};

/// Version of the state document.
pub const AZURE_STATE_VERSION: u32 = 1;

/// The persisted document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateDoc {
    /// Always [`AZURE_STATE_VERSION`].
    pub format: u32,
    /// Source disk size in bytes.
    pub virtual_size: u64,
    /// Source disk identity.
    pub source_id: String,
    /// A replica has been committed.
    pub initial_committed: bool,
    /// Newest committed cycle.
    pub committed_cycle: u64,
    /// Full-copy generation.
    pub generation: u64,
    /// A full copy is in progress.
    pub initial_in_progress: bool,
    /// Footer id of the committed replica.
    pub replica_id: String,
    /// Footer id the copy in progress will get.
    pub copy_id: String,
    /// Durable ranges of the copy in progress, as `[start, end)` pairs.
    #[serde(with = "vdrep_proto::ranges::pairs")]
    pub progress: RangeSet,
    /// The delta cycle opened by `begin_cycle` and not yet committed.
    pub open_cycle: Option<u64>,
    /// Durable ranges of the open cycle.
    #[serde(with = "vdrep_proto::ranges::pairs")]
    pub cycle_progress: RangeSet,
}

/// `set`, refused if it reaches past the disk's end (empty ranges never decode).
fn within(set: RangeSet, end: u64) -> Result<RangeSet, String> {
    match set.bounds() {
        Some(b) if b.end > end => Err(format!(
            "range ending at {} is beyond the disk end {end}",
            b.end
        )),
        _ => Ok(set),
    }
}

/// Encodes a state. The document keeps an open cycle's progress apart from a copy's
/// (`cycle_progress`, `progress`): the lifecycle never has both at once.
pub fn encode(d: &DiskState) -> Vec<u8> {
    let (progress, cycle_progress) = match d.open_cycle {
        Some(_) => (RangeSet::new(), d.progress.clone()),
        None => (d.progress.clone(), RangeSet::new()),
    };
    let doc = StateDoc {
        format: AZURE_STATE_VERSION,
        virtual_size: d.virtual_size,
        source_id: d.source_id.to_string(),
        initial_committed: d.initial_committed,
        committed_cycle: d.committed_cycle,
        generation: d.generation,
        initial_in_progress: d.initial_in_progress,
        replica_id: d.replica_id.to_string(),
        copy_id: d.copy_id.to_string(),
        progress,
        open_cycle: d.open_cycle,
        cycle_progress,
    };
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// Decodes a state document and checks it against the lifecycle's invariants
/// ([`lifecycle::check_record`]).
pub fn decode(b: &[u8]) -> Result<DiskState, String> {
    let doc: StateDoc = serde_json::from_slice(b).map_err(|e| e.to_string())?;
    if doc.format != AZURE_STATE_VERSION {
        return Err(format!(
            "state format {} is not supported (this vdrep writes {AZURE_STATE_VERSION})",
            doc.format
        ));
    }
    let g = |s: &str| {
        s.parse::<Guid>()
            .map_err(|e| format!("bad GUID {s:?}: {e:?}"))
    };
    let end = doc.virtual_size.div_ceil(512) * 512;
    let copy = within(doc.progress, end)?;
    let cycle = within(doc.cycle_progress, end)?;
    let progress = match doc.open_cycle {
        Some(_) if copy.is_empty() => cycle,
        None if cycle.is_empty() => copy,
        _ => return Err("progress recorded for both a copy and a cycle".into()),
    };
    let st = DiskState {
        format_version: doc.format,
        virtual_size: doc.virtual_size,
        source_id: g(&doc.source_id)?,
        initial_committed: doc.initial_committed,
        committed_cycle: doc.committed_cycle,
        progress,
        generation: doc.generation,
        initial_in_progress: doc.initial_in_progress,
        replica_id: g(&doc.replica_id)?,
        copy_id: g(&doc.copy_id)?,
        open_cycle: doc.open_cycle,
    };
    lifecycle::check_record(&st)?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_documents_are_refused() {
        let s = DiskState {
            format_version: 1,
            virtual_size: 10 << 20,
            source_id: Guid::v4_from_bytes([7; 16]),
            initial_committed: true,
            committed_cycle: 4,
            progress: RangeSet::from_range(0, 4096),
            generation: 2,
            initial_in_progress: false,
            replica_id: Guid::v4_from_bytes([1; 16]),
            copy_id: Guid::NIL,
            open_cycle: Some(5),
        };
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        assert!(decode(b"{").is_err());
        let bad = String::from_utf8(encode(&s))
            .unwrap()
            .replace("4096", "99999999999");
        assert!(decode(bad.as_bytes())
            .unwrap_err()
            .contains("beyond the disk end"));
        // A cycle that does not follow the committed one breaks the lifecycle.
        let bad = String::from_utf8(encode(&s))
            .unwrap()
            .replace("\"open_cycle\": 5", "\"open_cycle\": 7");
        assert!(decode(bad.as_bytes())
            .unwrap_err()
            .contains("does not follow"));
    }

    /// A state blob as vdrep wrote it before the one range type (pairs, one per line).
    const WRITTEN: &str = r#"{
  "format": 1,
  "virtual_size": 10485760,
  "source_id": "07070707-0707-4707-8707-070707070707",
  "initial_committed": false,
  "committed_cycle": 0,
  "generation": 1,
  "initial_in_progress": true,
  "replica_id": "00000000-0000-0000-0000-000000000000",
  "copy_id": "01010101-0101-4101-8101-010101010101",
  "progress": [
    [
      0,
      4096
    ],
    [
      65536,
      131072
    ]
  ],
  "open_cycle": null,
  "cycle_progress": []
}"#;

    #[test]
    fn a_state_blob_written_before_loads_and_is_written_back_byte_for_byte() {
        let st = decode(WRITTEN.as_bytes()).unwrap();
        let mut want = RangeSet::from_range(0, 4096);
        want.insert(65536, 131072);
        assert_eq!(st.progress, want);
        assert_eq!(String::from_utf8(encode(&st)).unwrap(), WRITTEN);
    }
}
