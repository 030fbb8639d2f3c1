//! Durations (`30s`, `1m`, `500ms`, `1h30m`) and RFC 3339 times, without a date-time dependency.

use std::time::Duration;

/// Why a duration or a time did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The duration text is not a sequence of `<number><unit>`.
    #[error("invalid duration {0:?}: expected a number and a unit, such as 30s, 1m, 500ms or 1h")]
    Duration(String),
    /// The time is not RFC 3339.
    #[error("invalid time {0:?}: expected RFC 3339, such as 2026-11-26T10:00:00Z")]
    Rfc3339(String),
}

/// Parses `500ms`, `30s`, `1m`, `15m`, `1h`, `1h30m`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, TimeError> {
    let err = || TimeError::Duration(text.to_owned());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            _ => return Err(err()),
        };
        total += Duration::try_from_secs_f64(secs).map_err(|_| err())?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`90s` → `1m30s`).
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1000) {
        return format!("{}ns", d.as_nanos());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}us", d.as_micros());
    }
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// Serde for a [`Duration`] written as text (`250ms`, `2s`, `1m30s`), as config and policy files
/// write them: `#[serde(with = "meshlens_model::time::text")]`. A bad value is refused while the
/// file is read, so the reader's error names the field (YAML gives its path and line).
pub mod text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes [`super::format_duration`]'s text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads [`super::parse_duration`]'s text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(Text)
    }

    /// Parses inside the reader's call (not after it returned), so its error carries the field's path.
    pub(super) struct Text;

    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 250ms, 2s or 1m30s")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }
    }
}

/// [`text`] for an optional duration: `#[serde(default, with = "meshlens_model::time::text_opt")]`.
pub mod text_opt {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes the text, or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads the text, if any.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(Opt)
    }

    struct Opt;

    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 250ms, 2s or 1m30s")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(super::text::Text).map(Some)
        }
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds: `2026-11-26T10:00:00.123Z`.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Parses RFC 3339 (`2026-11-26T10:00:00Z`, fractions and `+hh:mm` offsets allowed) to Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, TimeError> {
    let err = || TimeError::Rfc3339(text.to_owned());
    let b = text.trim().as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
        std::str::from_utf8(&b[r]).ok().and_then(|s| s.parse::<i64>().ok()).ok_or_else(err)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(err());
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(err());
        }
        let frac = &text.trim()[start..i];
        let padded = format!("{:0<3}", &frac[..frac.len().min(3)]);
        ms = padded.parse().map_err(|_| err())?;
    }
    let offset_min = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let m = oh * 60 + om;
            if *sign == b'+' { m } else { -m }
        }
        _ => return Err(err()),
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    Ok(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "m", "10", "10x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn rfc3339_round_trips() {
        let ms = 1_795_000_000_123;
        let s = format_rfc3339_ms(ms);
        assert_eq!(parse_rfc3339_ms(&s).unwrap(), ms);
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert!(parse_rfc3339_ms("yesterday").is_err());
        assert!(parse_rfc3339_ms("2026-13-01T00:00:00Z").is_err());
    }
}
