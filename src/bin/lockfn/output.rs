//! What lockfn prints is safe for a terminal: control bytes (C0, DEL, C1) are escaped
//! (`\x1b`, `\u{9b}`), a message line is cut after [`MAX_LINE`] bytes and a shown value after
//! [`lockfn::target::MAX_SHOWN`] bytes, with a marker saying how much was left out. JSON
//! output escapes the same characters as `\u00XX` (still valid JSON, same value).

/// Longest message line printed on stderr (a backstop: values inside are cut at 200 bytes).
pub const MAX_LINE: usize = 2000;

/// A message line, escaped and cut.
pub fn line(text: &str) -> String {
    lockfn::target::escape_text(text, MAX_LINE)
}

/// A value shown inside a human-readable line (holder text, host, a service's detail).
pub fn value(text: &str) -> String {
    lockfn::target::escape_text(text, lockfn::target::MAX_SHOWN)
}

/// Serialized JSON with DEL and C1 controls escaped too (serde_json escapes only C0).
pub fn json(v: &impl serde::Serialize) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot serialize the output: {e}") }).to_string()
    });
    if !s.chars().any(|c| c.is_control()) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_control() {
            // Only inside strings: JSON's structure is ASCII printable and C0 is escaped.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `eprintln!` for lockfn's messages: escaped and cut (see [`line`]).
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}", crate::output::line(&format!($($arg)*)))
    };
}
pub(crate) use say;

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (the civil-from-days algorithm
/// of H. Hinnant, proleptic Gregorian calendar).
pub fn utc(secs: f64) -> String {
    let t = secs.max(0.0) as i64;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_matches_date() {
        assert_eq!(super::utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_796_020_687.9), "2026-11-30 06:38:07 UTC");
    }

    use super::*;

    #[test]
    fn control_bytes_are_escaped_and_long_lines_cut() {
        assert_eq!(line("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(line("c\u{9b}d"), "c\\u{9b}d");
        let long = "x".repeat(10_000);
        let l = line(&long);
        assert!(l.len() < MAX_LINE + 40, "{}", l.len());
        assert!(l.ends_with("…[8000 more bytes]"), "{l}");
        let v = value(&"é".repeat(300));
        assert!(v.len() <= 200 + 30 && v.contains("more bytes]"), "{v}");
    }

    #[test]
    fn json_stays_valid_and_escapes_c1() {
        let v = serde_json::json!({"h": "a\u{9b}b\u{7f}\u{1b}"});
        let j = json(&v);
        assert!(!j.chars().any(|c| c.is_control()), "{j:?}");
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back, v);
    }
}
