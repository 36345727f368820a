//! Human durations as written in `lb.toml`: `"250ms"`, `"2s"`, `"5m"`, `"1h"`.
//!
//! One number and one unit, nothing else: a config value should read the same to every operator, so
//! compound forms ("1m30s") and bare numbers (seconds? milliseconds?) are refused.

use std::time::Duration;

/// Parses `"<digits><unit>"` where unit is one of `ms`, `s`, `m`, `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. \"250ms\", \"2s\", \"5m\" or \"1h\""))?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("{text:?} has unknown unit {unit:?}; use ms, s, m or h")),
    };
    millis.map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_ambiguous_or_malformed() {
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("s").unwrap_err().contains("whole number"));
        assert!(parse("1.5s").unwrap_err().contains("unknown unit"));
        assert!(parse("1m30s").unwrap_err().contains("unknown unit"));
        assert!(parse("2 s").unwrap_err().contains("unknown unit"));
        assert!(parse("99999999999999999h").unwrap_err().contains("too large"));
    }
}
