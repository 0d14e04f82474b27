//! Durations, in the config file and on the command line: humantime's forms (`"500ms"`,
//! `"30s"`, `"10m"`, `"1h 30m"`, `"1.5h"`, `"2d"`), or a bare number of seconds (`"90"`,
//! `"0.5"`), which humantime does not take but configs written before it did.
//!
//! Invariant: a parsed duration is at most [`MAX_DURATION`], so adding it to an `Instant`,
//! to another timeout or turning it into microseconds never overflows downstream.

use std::time::Duration;

/// The longest duration accepted: 100 years of humantime's 365.25 days. Far beyond any
/// sensible timeout or window, and far below what would overflow an `Instant` or an `i64` of
/// microseconds.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

const EXAMPLES: &str =
    "write it like \"500ms\", \"30s\", \"10m\", \"1h 30m\", or a number of seconds";

#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    #[error("{text:?} is not a duration ({source}); {EXAMPLES}")]
    Invalid {
        text: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("{text:?} is longer than 100 years, the longest duration accepted; {EXAMPLES}")]
    TooLong { text: String },
}

/// Parses one duration (see the module doc for the forms).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let too_long = || DurationError::TooLong { text: text.into() };
    let bare_seconds = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let parsed = match s.parse::<f64>() {
        Ok(secs) if bare_seconds => Duration::try_from_secs_f64(secs).map_err(|_| too_long())?,
        _ => humantime::parse_duration(s).map_err(|source| DurationError::Invalid {
            text: text.into(),
            source,
        })?,
    };
    if parsed > MAX_DURATION {
        return Err(too_long());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("500ms", Duration::from_millis(500))]
    #[case("30s", Duration::from_secs(30))]
    #[case(" 30 s ", Duration::from_secs(30))]
    #[case("10m", Duration::from_secs(600))]
    #[case("1h", Duration::from_secs(3600))]
    #[case("1h 30m", Duration::from_secs(5400))]
    #[case("1.5h", Duration::from_secs(5400))]
    #[case("2d", Duration::from_secs(2 * 86_400))]
    #[case("90", Duration::from_secs(90))]
    #[case("0.25", Duration::from_millis(250))]
    #[case("0", Duration::ZERO)]
    #[case("100y", MAX_DURATION)]
    fn durations_parse(#[case] text: &str, #[case] want: Duration) {
        assert_eq!(parse_duration(text).unwrap(), want);
    }

    #[rstest]
    #[case("soon")]
    #[case("")]
    #[case("30 parsecs")]
    #[case("-5s")]
    #[case("1.2.3")]
    #[case("inf")]
    #[case("NaN")]
    fn what_is_not_a_duration_is_refused(#[case] text: &str) {
        let e = parse_duration(text).unwrap_err();
        assert!(matches!(e, DurationError::Invalid { .. }), "{text:?}: {e}");
        assert!(e.to_string().contains("\"30s\""), "{e}");
    }

    #[rstest]
    #[case("100000000000000000000")]
    #[case("101y")]
    #[case("1000000000y")]
    fn a_huge_duration_is_an_error_not_a_panic(#[case] text: &str) {
        let e = parse_duration(text).unwrap_err();
        assert!(matches!(e, DurationError::TooLong { .. }), "{text:?}: {e}");
        assert!(e.to_string().contains("longer than 100 years"), "{e}");
    }
}
