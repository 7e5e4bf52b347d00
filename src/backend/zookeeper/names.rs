//! Node names and node data of the kazoo recipes: the contender guid, the sequence suffix,
//! which contenders a writer or a reader waits for, who holds a lock from its children, and
//! our holder record as node data.

use super::{LOCK_NAME, READ_NAME};
use crate::holder::HolderRecord;

pub(super) fn guid() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b` (nix wraps no getrandom).
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to time, pid and address entropy: unique enough for a contender prefix.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let x = t ^ ((std::process::id() as u128) << 64) ^ (&b as *const _ as u128);
        b = x.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sequence suffix of a contender name (`-?\d{10}$`).
pub(super) fn seq_of(name: &str) -> Option<&str> {
    let bytes = name.as_bytes();
    if bytes.len() < 10 || !bytes[bytes.len() - 10..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut start = bytes.len() - 10;
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(&name[start..])
}

/// If `name` is a contender of one of `patterns` (`__lock__`, `__rlock__`), its sequence.
pub(super) fn contender_seq<'a>(name: &'a str, patterns: &[&str]) -> Option<&'a str> {
    let seq = seq_of(name)?;
    let head = &name[..name.len() - seq.len()];
    patterns.iter().any(|p| head.ends_with(p)).then_some(seq)
}

pub(super) fn is_lease_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Kind of contender: what we create and what we wait for.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    pub node: &'static str,
    pub exclude: &'static [&'static str],
}

pub(super) const WRITER: Kind = Kind {
    node: LOCK_NAME,
    exclude: &[LOCK_NAME, READ_NAME],
};
pub(super) const READER: Kind = Kind {
    node: READ_NAME,
    exclude: &[LOCK_NAME],
};

/// kazoo's `_get_predecessor`: the contender with the largest sequence smaller than ours
/// among those `kind` excludes; None when we hold the lock. Sequences compare as strings,
/// as kazoo does.
pub(super) fn predecessor<'a>(children: &'a [String], node: &str, kind: Kind) -> Option<&'a str> {
    let mine = seq_of(node)?;
    children
        .iter()
        .filter_map(|c| contender_seq(c, kind.exclude).map(|s| (s, c.as_str())))
        .filter(|(s, _)| *s < mine)
        .max_by(|a, b| a.0.cmp(b.0))
        .map(|(_, c)| c)
}

/// Contenders sorted by sequence, each with whether it holds the lock now (a writer holds
/// when first; a reader when no writer precedes it).
pub(super) fn contenders(children: &[String]) -> Vec<(String, bool)> {
    let mut v: Vec<(&str, &String)> = children
        .iter()
        .filter_map(|c| contender_seq(c, &[LOCK_NAME, READ_NAME]).map(|s| (s, c)))
        .collect();
    v.sort();
    let mut out = Vec::new();
    let mut writer_seen = false;
    for (i, (_, c)) in v.iter().enumerate() {
        let is_reader = contender_seq(c, &[READ_NAME]).is_some();
        let holds = if is_reader { !writer_seen } else { i == 0 };
        if !is_reader {
            writer_seen = true;
        }
        out.push(((*c).clone(), holds));
    }
    out
}

/// The contender that holds the lock now (the first writer, or a reader), if any.
pub(super) fn first_holder(children: &[String]) -> Option<String> {
    contenders(children)
        .into_iter()
        .find(|(_, holds)| *holds)
        .map(|(c, _)| c)
}

/// Is `name` a child of a lock node (a contender, or a semaphore lease)?
pub(super) fn is_lock_child(name: &str) -> bool {
    contender_seq(name, &[LOCK_NAME, READ_NAME]).is_some() || is_lease_name(name)
}

/// Our record as node data; a persistent node says it is still waiting until it holds.
pub(super) fn node_data(record: &HolderRecord, waiting: bool) -> Vec<u8> {
    let mut v = serde_json::to_value(record).unwrap_or_default();
    if waiting {
        v["waiting"] = true.into();
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A holder record from node data, and whether it is marked waiting.
pub(super) fn parse_record(data: &[u8]) -> Option<(HolderRecord, bool)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let waiting = v.get("waiting").and_then(|w| w.as_bool()).unwrap_or(false);
    let r: HolderRecord = serde_json::from_value(v).ok()?;
    Some((r, waiting))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn predecessor_follows_kazoo() {
        let c = v(&[
            "a__lock__0000000001",
            "b__rlock__0000000002",
            "c__rlock__0000000003",
            "d__lock__0000000004",
            "junk",
        ]);
        assert_eq!(predecessor(&c, "a__lock__0000000001", WRITER), None);
        assert_eq!(
            predecessor(&c, "b__rlock__0000000002", READER),
            Some("a__lock__0000000001")
        );
        assert_eq!(
            predecessor(&c, "c__rlock__0000000003", READER),
            Some("a__lock__0000000001")
        );
        assert_eq!(
            predecessor(&c, "d__lock__0000000004", WRITER),
            Some("c__rlock__0000000003")
        );
        let h = contenders(&c);
        assert_eq!(h.iter().filter(|x| x.1).count(), 1);
        let r = v(&[
            "b__rlock__0000000002",
            "c__rlock__0000000003",
            "d__lock__0000000004",
        ]);
        let h = contenders(&r);
        assert_eq!(
            h.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![true, true, false]
        );
    }

    #[test]
    fn guid_is_32_hex() {
        let g = guid();
        assert!(is_lease_name(&g), "{g}");
        assert_ne!(g, guid());
    }

    #[test]
    fn record_round_trip_with_waiting_marker() {
        let r = HolderRecord::for_self(Some("x"));
        let (back, waiting) = parse_record(&node_data(&r, true)).unwrap();
        assert!(waiting);
        assert_eq!(back, r);
        assert!(parse_record(b"kazoo identifier").is_none());
    }
}
