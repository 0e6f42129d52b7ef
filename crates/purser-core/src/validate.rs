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
