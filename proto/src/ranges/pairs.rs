//! A [`RangeSet`] in JSON (or any serde format) as a list of `[start, end]` pairs, for
//! records that are JSON documents (the Azure sink's state blob). Use it as
//! `#[serde(with = "vdrep_proto::ranges::pairs")]`.
//!
//! Writing gives the canonical list (ascending, disjoint). Reading is as lenient as the
//! writers before the one range type were: pairs may come in any order and overlap or
//! touch (they are merged), so every document written so far still loads; a pair that is
//! empty or inverted (`start >= end`) is refused, naming it. Bounds against a disk size
//! are the record's to check ([`RangeSet::bounds`]).

use serde::de::{Error, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserializer, Serializer};

use super::RangeSet;

/// Writes `set` as `[[start, end], ...]`.
pub fn serialize<S: Serializer>(set: &RangeSet, s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(set.range_count()))?;
    for r in set.iter() {
        seq.serialize_element(&(r.start, r.end))?;
    }
    seq.end()
}

/// Reads `[[start, end], ...]` (see the module docs).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RangeSet, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = RangeSet;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [start, end] pairs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RangeSet, A::Error> {
            let mut set = RangeSet::new();
            while let Some((a, b)) = seq.next_element::<(u64, u64)>()? {
                if a >= b {
                    return Err(A::Error::custom(format!("range [{a}, {b}) is empty")));
                }
                set.insert(a, b);
            }
            Ok(set)
        }
    }
    d.deserialize_seq(Pairs)
}

#[cfg(test)]
mod tests {
    use super::RangeSet;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Doc {
        #[serde(with = "super")]
        progress: RangeSet,
    }

    #[test]
    fn a_set_is_written_as_the_pairs_the_state_documents_always_held() {
        let mut progress = RangeSet::from_range(0, 4096);
        progress.insert(8192, 12288);
        let text = serde_json::to_string(&Doc { progress }).unwrap();
        assert_eq!(text, r#"{"progress":[[0,4096],[8192,12288]]}"#);
        let back: Doc = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn unordered_and_overlapping_pairs_merge_and_empty_ones_are_refused() {
        let d: Doc =
            serde_json::from_str(r#"{"progress":[[8192,9000],[0,4096],[4096,8192]]}"#).unwrap();
        assert_eq!(d.progress, RangeSet::from_range(0, 9000));
        let e: Doc = serde_json::from_str(r#"{"progress":[]}"#).unwrap();
        assert!(e.progress.is_empty());
        for bad in [
            r#"{"progress":[[5,5]]}"#,
            r#"{"progress":[[9,4]]}"#,
            r#"{"progress":[[1]]}"#,
            r#"{"progress":[[-1,4]]}"#,
            r#"{"progress":{}}"#,
        ] {
            assert!(serde_json::from_str::<Doc>(bad).is_err(), "{bad} accepted");
        }
        let msg = serde_json::from_str::<Doc>(r#"{"progress":[[9,4]]}"#)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("range [9, 4) is empty"), "{msg}");
    }
}
