//! Field rules of management requests, in one place: amounts of money, count limits, budget
//! windows and paging bounds. Pure (no I/O, no error shapes): each caller maps a failure to the
//! wire shape its route has always answered with, so the rules are shared while every route
//! keeps its own status code and message.

use crate::budget::{BudgetDuration, DurationError};
use crate::money::{MoneyError, Nanos};

/// Dollars sent by a client as nano-USD: finite, non-negative and representable.
pub fn usd(v: f64) -> Result<i64, MoneyError> {
    Nanos::from_usd(v).map(|n| n.0)
}

/// A budget window or key duration such as `30d`.
pub fn budget_duration(d: &str) -> Result<BudgetDuration, DurationError> {
    BudgetDuration::parse(d)
}

/// Longest id, alias, email or model name a management request may carry (characters).
pub const MAX_ID_CHARS: usize = 256;
/// Largest `metadata` object, serialized (bytes).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    TooLong,
    /// A control character (a NUL would make two ids look the same in logs and UIs).
    ControlChar,
}

/// An id, alias, email or model name: at most [`MAX_ID_CHARS`] characters, no control characters.
pub fn identifier(s: &str) -> Result<(), IdError> {
    if s.chars().any(char::is_control) {
        Err(IdError::ControlChar)
    } else if s.chars().count() > MAX_ID_CHARS {
        Err(IdError::TooLong)
    } else {
        Ok(())
    }
}

/// A count limit (tpm, rpm, tpd, parallel requests) was negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegativeCount(pub i64);

/// A count limit is never negative (zero is a valid limit: nothing allowed).
pub fn count_limit(v: i64) -> Result<i64, NegativeCount> {
    if v < 0 { Err(NegativeCount(v)) } else { Ok(v) }
}

/// Where a bounded integer fell outside its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRange {
    Below,
    Above,
}

/// `v` within `min..=max` (paging parameters).
pub fn within(v: i64, min: i64, max: i64) -> Result<i64, OutOfRange> {
    if v < min {
        Err(OutOfRange::Below)
    } else if v > max {
        Err(OutOfRange::Above)
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_bounded_and_printable() {
        assert!(identifier("team-1 ünicode").is_ok());
        assert_eq!(identifier("a\0b"), Err(IdError::ControlChar));
        assert_eq!(identifier("a\nb"), Err(IdError::ControlChar));
        assert!(identifier(&"x".repeat(256)).is_ok());
        assert_eq!(identifier(&"x".repeat(257)), Err(IdError::TooLong));
    }

    #[test]
    fn rules() {
        assert_eq!(usd(1.5), Ok(1_500_000_000));
        assert!(usd(-1.0).is_err());
        assert!(usd(f64::NAN).is_err());
        assert!(budget_duration("30d").is_ok());
        assert!(budget_duration("month").is_err());
        assert_eq!(count_limit(0), Ok(0));
        assert_eq!(count_limit(-1), Err(NegativeCount(-1)));
        assert_eq!(within(0, 1, 100), Err(OutOfRange::Below));
        assert_eq!(within(101, 1, 100), Err(OutOfRange::Above));
        assert_eq!(within(100, 1, 100), Ok(100));
    }
}
