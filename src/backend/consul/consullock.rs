//! What consullock (the Python tool) reads in a lock key's value, so that both tools can
//! read and release each other's locks: its value is
//! `{"key", "session", "created", "secondsToLock", "metadata"}` (consullock/json_mappers.py),
//! and its `unlock KEY` reads `session` from the value and destroys that session
//! (consullock/managers.py, `release`). Our mutex value is our holder record with those
//! fields added; our record ignores fields it does not know.

use super::api::b64_encode;
use crate::holder::HolderRecord;

/// Our mutex key's value: the holder record plus consullock's fields.
pub(super) fn mutex_value(record: &HolderRecord, key: &str, session: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&record.to_json()).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(m) = v.as_object_mut() {
        m.insert("key".into(), key.into());
        m.insert("session".into(), session.into());
        m.insert("created".into(), format_iso_utc(record.since).into());
        m.insert("secondsToLock".into(), serde_json::Value::Null);
        m.insert("metadata".into(), serde_json::Value::Null);
    }
    b64_encode(v.to_string().as_bytes())
}

/// Is this (decoded) value consullock's? Its fields, without our record's.
pub(super) fn is_consullock_value(v: &serde_json::Value) -> bool {
    v.get("session").is_some() && v.get("created").is_some() && v.get("pid").is_none()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds to consullock's `created` (Python's `datetime.isoformat()` of a naive UTC
/// time: `YYYY-MM-DDTHH:MM:SS.ffffff`).
pub(super) fn format_iso_utc(t: f64) -> String {
    let t = if (0.0..253_402_300_800.0).contains(&t) {
        t
    } else {
        0.0
    };
    let secs = t.floor() as i64;
    let micros = ((t - t.floor()) * 1e6).round().min(999_999.0) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let s = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (UTC, consullock's `created`) to Unix seconds.
pub(super) fn parse_iso_utc(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Bounds first: the text comes from a service and must not overflow the arithmetic.
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0.0..61.0).contains(&ss)
    {
        return None;
    }
    let days = days_from_civil(y, m, day);
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(parse_iso_utc("1970-01-01T00:00:00"), Some(0.0));
        assert_eq!(parse_iso_utc("2021-03-04T05:06:07.5"), Some(1614834367.5));
        assert_eq!(parse_iso_utc("garbage"), None);
        assert_eq!(parse_iso_utc("9999999999999999-01-01T00:00:00"), None);
        assert_eq!(format_iso_utc(1614834367.5), "2021-03-04T05:06:07.500000");
        assert_eq!(format_iso_utc(0.0), "1970-01-01T00:00:00.000000");
        assert_eq!(format_iso_utc(f64::NAN), "1970-01-01T00:00:00.000000");
        for t in [951782400.25, 1709251199.0, 4102444800.125] {
            assert_eq!(parse_iso_utc(&format_iso_utc(t)), Some(t));
        }
    }

    #[test]
    fn value_keeps_our_record_and_adds_consullocks_fields() {
        let r = HolderRecord::for_self(Some("job"));
        let v = mutex_value(&r, "lockfn/x", "sess-1");
        let bytes = super::super::api::b64_decode(&v).unwrap();
        let back: HolderRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, r);
        let j: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(j["key"], "lockfn/x");
        assert_eq!(j["session"], "sess-1");
        assert!(j["created"].as_str().unwrap().contains('T'));
        assert!(!is_consullock_value(&j));
        let theirs =
            serde_json::json!({"key": "k", "session": "s", "created": "2021-03-04T05:06:07"});
        assert!(is_consullock_value(&theirs));
    }
}
