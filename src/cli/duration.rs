//! Durations on the command line as people write them: `5s`, `500ms`, `2m`, `1h`, `1m30s`,
//! `1.5s`, `250us`. A plain number keeps the unit the flag always had (milliseconds for most,
//! seconds for the keepalive and idle flags, microseconds for `--spin-us`), so existing
//! scripts mean what they meant.

use std::time::Duration;

/// A plain number is milliseconds.
pub(crate) fn ms(s: &str) -> Result<Duration, String> {
    parse(s, Duration::from_millis(1))
}

/// A plain number is seconds.
pub(crate) fn secs(s: &str) -> Result<Duration, String> {
    parse(s, Duration::from_secs(1))
}

/// A plain number is microseconds.
pub(crate) fn us(s: &str) -> Result<Duration, String> {
    parse(s, Duration::from_micros(1))
}

/// Whole milliseconds, saturating (for the wire and for `--json` output).
pub(crate) fn as_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// One or more `NUMBER UNIT` parts (`1m30s`), or one plain NUMBER in `plain` units.
fn parse(s: &str, plain: Duration) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "{why} in duration {s:?} (write e.g. 500ms, 5s, 2m, 1h, 1m30s; a plain number is {})",
            unit_name(plain)
        )
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("nothing"));
    }
    let mut rest = t;
    let mut total = 0f64;
    let mut parts = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() {
            return Err(bad("a unit without a number"));
        }
        let n: f64 = num.parse().map_err(|_| bad("a bad number"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit.trim() {
            "" if parts == 0 && tail.is_empty() => plain.as_secs_f64(),
            "" => return Err(bad("a number without a unit")),
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" => 86_400.0,
            u => return Err(bad(&format!("unknown unit {u:?}"))),
        };
        total += n * scale;
        parts += 1;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad("out of range"))
}

fn unit_name(plain: Duration) -> &'static str {
    if plain >= Duration::from_secs(1) {
        "seconds"
    } else if plain >= Duration::from_millis(1) {
        "milliseconds"
    } else {
        "microseconds"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_plain_numbers() {
        let d = Duration::from_millis;
        assert_eq!(ms("500ms"), Ok(d(500)));
        assert_eq!(ms("5s"), Ok(d(5000)));
        assert_eq!(ms("2m"), Ok(d(120_000)));
        assert_eq!(ms("1h"), Ok(d(3_600_000)));
        assert_eq!(ms("1m30s"), Ok(d(90_000)));
        assert_eq!(ms("1.5s"), Ok(d(1500)));
        assert_eq!(ms("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(ms("250"), Ok(d(250)));
        assert_eq!(secs("10"), Ok(d(10_000)));
        assert_eq!(us("30"), Ok(Duration::from_micros(30)));
        for bad in ["", "s", "5 parsecs", "1m30", "-1s", "1..2s", "9e999s"] {
            assert!(ms(bad).is_err(), "{bad:?} accepted");
        }
    }
}
