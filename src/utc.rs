//! UTC wall-clock times as every output of the project writes them: ISO 8601 / RFC 3339 with
//! milliseconds (truncated), `Z` for UTC. Clip index lines and bus messages, the `wall_time` of
//! JSON lines and MQTT status messages, and (in the basic format) clip file names.

use chrono::{DateTime, Utc};

const EXTENDED: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";
const BASIC: &str = "%Y%m%dT%H%M%S%.3fZ";

/// `unix_ns` (nanoseconds since 1970-01-01 UTC) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_utc(unix_ns: i64) -> String {
    DateTime::from_timestamp_nanos(unix_ns)
        .format(EXTENDED)
        .to_string()
}

/// `unix_ns` as `YYYYMMDDTHHMMSS.mmmZ` (ISO 8601 basic format), the form of clip file names.
pub fn format_utc_basic(unix_ns: i64) -> String {
    DateTime::from_timestamp_nanos(unix_ns)
        .format(BASIC)
        .to_string()
}

/// The time now as [`format_utc`] writes it.
pub fn now() -> String {
    Utc::now().format(EXTENDED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_truncate_to_milliseconds() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-29 23:05:12.345 UTC = 1 795 993 512.345 s.
        let t = 1_795_993_512_345_678_901;
        assert_eq!(format_utc(t), "2026-11-29T23:05:12.345Z");
        assert_eq!(format_utc_basic(t), "20261129T230512.345Z");
        // Leap day, and before 1970.
        assert_eq!(
            format_utc(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_utc(-1_000_000), "1969-12-31T23:59:59.999Z");
        assert_eq!(now().len(), 24);
    }
}
