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

#[cfg(test)]
mod tests {
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
