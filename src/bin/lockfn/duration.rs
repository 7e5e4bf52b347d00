//! Durations on the command line: plain seconds (`1.5`, `30`, flock's `-w`) or a number with
//! a unit (`500ms`, `30s`, `5m`, `1h`, `1d`), or several (`1m30s`, Go's form, which
//! `consul lock -timeout` takes). Every option that takes seconds parses with [`secs`].

/// Units and their length in seconds; the longest suffix is tried first (`ms` before `m`,
/// `s`).
const UNITS: &[(&str, f64)] = &[
    ("ms", 0.001),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86400.0),
];

/// What a duration looks like, for error messages.
pub const FORMS: &str = "seconds (1.5) or a number with a unit: 500ms, 30s, 5m, 1h, 1m30s";

/// A duration in seconds. Plain numbers pass through as `f64` parses them (`inf`, `1e19`, a
/// negative number, NaN), so each option keeps its own range check and one-line message. A
/// value with units is a sum of finite, non-negative parts.
pub fn secs(text: &str) -> Result<f64, String> {
    let bad = || format!("'{text}' is not a duration: use {FORMS}");
    if let Ok(v) = text.parse::<f64>() {
        return Ok(v);
    }
    let mut rest = text;
    let mut total = 0.0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        // A unit must not run on into letters ("5min", "1hour"): say so rather than guess.
        if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(bad());
        }
        total += n * scale;
    }
    if !total.is_finite() {
        return Err(format!("'{text}' is too long a duration"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::secs;

    #[test]
    fn units_and_plain_seconds() {
        for (text, want) in [
            ("1.5", 1.5),
            ("30", 30.0),
            ("0", 0.0),
            ("30s", 30.0),
            ("5m", 300.0),
            ("1h", 3600.0),
            ("1d", 86400.0),
            ("500ms", 0.5),
            ("1.5s", 1.5),
            ("1m30s", 90.0),
            ("1h0m0.5s", 3600.5),
            ("2h30m", 9000.0),
            ("1e19", 1e19),
        ] {
            assert_eq!(secs(text), Ok(want), "{text}");
        }
        assert_eq!(secs("inf"), Ok(f64::INFINITY));
        assert_eq!(secs("-1"), Ok(-1.0));
        assert!(secs("nan").is_ok_and(f64::is_nan));
    }

    #[test]
    fn anything_else_is_refused_with_the_forms() {
        for text in [
            "", " 1", "1 ", "5x", "5min", "1hour", "s", "ms", "1.2.3s", "0x10", "1s2", "-5s",
            "5 s", "1,5", "1e3s",
        ] {
            let e = secs(text).expect_err(text);
            assert!(e.contains("500ms, 30s, 5m, 1h"), "{text}: {e}");
        }
    }
}
