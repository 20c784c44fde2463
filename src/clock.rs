//! Wall-clock helpers: Unix milliseconds and ISO 8601 (RFC 3339) text.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2024-03-20T10:00:00.123Z` for Unix milliseconds.
pub fn format_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Unix milliseconds of an ISO 8601 / RFC 3339 time such as
/// `2024-03-20T10:00:00Z` or `2024-03-20T18:00:00+08:00`.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("`{text}` is not an ISO 8601 time like 2024-03-20T10:00:00Z ({e})"))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("`{text}` is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        let ms = parse_rfc3339_ms("2024-03-20T10:00:00Z").unwrap();
        assert_eq!(ms, 1_710_928_800_000);
        assert_eq!(parse_rfc3339_ms("2024-03-20T18:00:00+08:00").unwrap(), ms);
        assert_eq!(format_ms(ms), "2024-03-20T10:00:00Z");
        assert!(parse_rfc3339_ms("yesterday").is_err());
        assert!(parse_rfc3339_ms("1969-12-31T23:59:59Z").is_err());
    }
}
