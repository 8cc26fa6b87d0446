//! Rates as operators write them: decimal SI (`40Mbit` = 40,000,000 bit/s, `5MB` =
//! 5,000,000 B/s), binary with `i` (`8Mibit`, `5MiB`), `unlimited`.

/// A parsed rate: bytes per second, or `None` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

/// Parses a rate; bits are divided by 8 (rounding down).
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(Rate(None));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("rate {s:?}: expected a number, e.g. 40Mbit or 5MB"))?;
    let unit = unit.trim().trim_end_matches("/s").trim_end_matches("ps");
    let (mult, bits): (f64, bool) = match unit {
        "" | "B" => (1.0, false),
        "bit" | "b" => (1.0, true),
        "K" | "KB" | "kB" => (1e3, false),
        "Kbit" | "kbit" | "Kb" | "kb" => (1e3, true),
        "M" | "MB" => (1e6, false),
        "Mbit" | "mbit" | "Mb" => (1e6, true),
        "G" | "GB" => (1e9, false),
        "Gbit" | "gbit" | "Gb" => (1e9, true),
        "KiB" => (1024.0, false),
        "Kibit" => (1024.0, true),
        "MiB" => (1048576.0, false),
        "Mibit" => (1048576.0, true),
        "GiB" => (1073741824.0, false),
        "Gibit" => (1073741824.0, true),
        u => return Err(format!("rate {s:?}: unknown unit {u:?} (use bit, Kbit, Mbit, Gbit, B, KB, MB, GB or the binary KiB, MiB, Mibit, …)")),
    };
    let bytes = v * mult / if bits { 8.0 } else { 1.0 };
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("rate {s:?} is below 1 byte per second"));
    }
    Ok(Rate(Some(bytes as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_decimal_si_unless_binary_is_asked_for() {
        assert_eq!(parse_rate("40Mbit"), Ok(Rate(Some(5_000_000))));
        assert_eq!(parse_rate("5MB"), Ok(Rate(Some(5_000_000))));
        assert_eq!(parse_rate("8Mibit"), Ok(Rate(Some(1_048_576))));
        assert_eq!(parse_rate("512Kbit"), Ok(Rate(Some(64_000))));
        assert_eq!(parse_rate("1023Mbit"), Ok(Rate(Some(127_875_000))));
        assert_eq!(parse_rate("unlimited"), Ok(Rate(None)));
        assert!(parse_rate("5 parsecs").is_err());
        assert!(parse_rate("Mbit").is_err());
        assert!(parse_rate("0.1bit").is_err());
    }
}
