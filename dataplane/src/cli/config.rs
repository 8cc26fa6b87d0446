//! TOML configuration files and the value syntaxes shared by flags and files (durations).
//!
//! Every option of `send` and `receive` can come from `--config FILE`; a flag given on the
//! command line wins over the file. Unknown keys are errors, so a typo is not silently
//! ignored.

use std::path::Path;
use std::time::Duration;

use super::Context;
use anyhow::bail;
use serde::de::DeserializeOwned;

/// Reads a TOML file into `T`.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read config", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
}

/// Parses `30s`, `5m`, `15m`, `1h`, `250ms`, `1h30m` or plain seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if t.is_empty() {
        bail!("empty duration");
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num
            .parse()
            .with_context(|| format!("duration {s:?}: expected a number before {unit:?}"))?;
        num.clear();
        let secs = match unit.as_str() {
            "ms" => v / 1000.0,
            "s" => v,
            "m" | "min" => v * 60.0,
            "h" => v * 3600.0,
            "d" => v * 86400.0,
            _ => bail!("duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d)"),
        };
        total += Duration::from_secs_f64(secs);
    }
    if !num.is_empty() {
        bail!("duration {s:?}: number without a unit at the end");
    }
    Ok(total)
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
