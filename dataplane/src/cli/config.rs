//! TOML configuration files and the value syntaxes shared by flags and files (durations).
//!
//! Every option of `send` and `receive` can come from `--config FILE`; a flag given on the
//! command line wins over the file. Unknown keys are errors, so a typo is not silently
//! ignored.

use super::CliResult;
use std::path::Path;
use std::time::Duration;

use super::Context;
use serde::de::DeserializeOwned;

/// Reads a TOML file into `T`.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> CliResult<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read config", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
}

/// Parses `30s`, `5m`, `15m`, `1h`, `250ms`, `1h30m` or plain seconds
/// ([`crate::clock::parse_duration`], the one duration syntax).
/// A value parser of `clap` and `serde`, so its error is the message itself.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::clock::parse_duration(s)
}

/// Serde helper for durations written as strings in TOML.
pub mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserialises an optional duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_operators_write_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }
}
