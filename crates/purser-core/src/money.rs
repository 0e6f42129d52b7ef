//! Money as integer nano-USD. Invariant: every stored or summed amount is an `i64` of nanos;
//! `f64` dollars exist only at the JSON edge, converted by the two functions here.

use serde::{Deserialize, Serialize};

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// An amount of US dollars in nano-USD. `i64` nanos reach about $9.2 billion.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub i64);

/// Why a dollar amount from a client cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a non-negative finite number")]
    NotNonNegativeFinite,
    #[error("is too large")]
    TooLarge,
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    /// Converts client-supplied dollars, rounding to the nearest nano. Rejects NaN, ±∞,
    /// negatives and amounts that do not fit, so nothing invalid reaches storage.
    pub fn from_usd(usd: f64) -> Result<Nanos, MoneyError> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(MoneyError::NotNonNegativeFinite);
        }
        let nanos = (usd * NANOS_PER_USD as f64).round();
        if nanos >= i64::MAX as f64 {
            return Err(MoneyError::TooLarge);
        }
        Ok(Nanos(nanos as i64))
    }

    /// Dollars for the JSON edge. Exact for amounts below 2^53 nanos (~$9M); above that,
    /// the nearest representable double.
    pub fn to_usd(self) -> f64 {
        let whole = (self.0 / NANOS_PER_USD) as f64;
        let frac = (self.0 % NANOS_PER_USD) as f64 / NANOS_PER_USD as f64;
        whole + frac
    }

    pub fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }
}

/// Converts a per-token price in dollars (as LiteLLM configs write it, e.g. `1.5e-07`) to
/// nano-USD per token, keeping sub-nano precision as pico-dollars per token.
/// Returns pico-USD per token so that `tokens × price` is exact for real price lists.
pub fn price_per_token_pico(usd_per_token: f64) -> Result<i64, MoneyError> {
    if !usd_per_token.is_finite() || usd_per_token < 0.0 {
        return Err(MoneyError::NotNonNegativeFinite);
    }
    let pico = (usd_per_token * 1e12).round();
    if pico >= i64::MAX as f64 {
        return Err(MoneyError::TooLarge);
    }
    Ok(pico as i64)
}

/// Cost of a call in nano-USD: tokens × pico-USD prices, rounded once to the nearest nano.
pub fn cost_of(
    prompt_tokens: u64,
    completion_tokens: u64,
    input_pico: i64,
    output_pico: i64,
) -> Nanos {
    let pico = (prompt_tokens as i128) * (input_pico as i128)
        + (completion_tokens as i128) * (output_pico as i128);
    let nanos = (pico + 500) / 1000;
    Nanos(nanos.min(i64::MAX as i128) as i64)
}

/// A deployment's prices in pico-USD per token; cache prices `None`: the input price.
/// `per_unit`: pico-USD per unit of what the deployment makes that is not tokens (an image, a
/// character of speech), 0 when none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenPrices {
    pub input: i64,
    pub output: i64,
    pub cache_read: Option<i64>,
    pub cache_write: Option<i64>,
    pub per_unit: i64,
}

/// `units` × `per_unit` pico-USD, rounded to the nearest nano-USD and saturating.
pub fn cost_of_units(units: u64, per_unit_pico: i64) -> Nanos {
    let pico = (units as i128) * (per_unit_pico as i128);
    Nanos(((pico + 500) / 1000).min(i64::MAX as i128) as i64)
}

/// The cost of a call whose `prompt_tokens` include `cache_read` and `cache_write` tokens
/// (each billed at its own price), rounded to the nearest nano-USD and saturating.
pub fn cost_with_cache(
    prompt_tokens: u64,
    completion_tokens: u64,
    cache_read: u64,
    cache_write: u64,
    p: &TokenPrices,
) -> Nanos {
    let read = cache_read.min(prompt_tokens);
    let write = cache_write.min(prompt_tokens - read);
    let plain = prompt_tokens - read - write;
    let pico = (plain as i128) * (p.input as i128)
        + (read as i128) * (p.cache_read.unwrap_or(p.input) as i128)
        + (write as i128) * (p.cache_write.unwrap_or(p.input) as i128)
        + (completion_tokens as i128) * (p.output as i128);
    let nanos = (pico + 500) / 1000;
    Nanos(nanos.min(i64::MAX as i128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_tokens_are_billed_at_their_prices() {
        let p = TokenPrices {
            input: 3_000_000,
            output: 15_000_000,
            cache_read: Some(300_000),
            cache_write: Some(3_750_000),
            per_unit: 0,
        };
        // 5 plain + 2 read + 1 write prompt tokens, 6 output (Claude Sonnet 4.5 list prices)
        let c = cost_with_cache(8, 6, 2, 1, &p);
        assert_eq!(
            c.0,
            (5 * 3_000_000 + 2 * 300_000 + 3_750_000 + 6 * 15_000_000 + 500) / 1000
        );
        // without cache prices: everything at the input price, as cost_of
        let flat = TokenPrices {
            cache_read: None,
            cache_write: None,
            ..p
        };
        assert_eq!(
            cost_with_cache(8, 6, 2, 1, &flat),
            cost_of(8, 6, p.input, p.output)
        );
        // counts beyond the prompt are clamped
        assert_eq!(
            cost_with_cache(2, 0, 5, 5, &p).0,
            (2 * 300_000 + 500) / 1000
        );
    }

    #[test]
    fn units_are_billed_at_their_price() {
        // 2 images at $0.04; 13 characters at $15 per 1M
        assert_eq!(cost_of_units(2, 40_000_000_000).0, 80_000_000);
        assert_eq!(cost_of_units(13, 15_000_000).0, 195_000);
        assert_eq!(cost_of_units(u64::MAX, i64::MAX).0, i64::MAX);
    }

    #[test]
    fn usd_round_trip() {
        assert_eq!(Nanos::from_usd(10.0).unwrap(), Nanos(10 * NANOS_PER_USD));
        assert_eq!(Nanos::from_usd(0.000001).unwrap(), Nanos(1000));
        assert_eq!(Nanos(1_500_000_000).to_usd(), 1.5);
        assert_eq!(Nanos::from_usd(0.1).unwrap().to_usd(), 0.1);
    }

    #[test]
    fn rejects_bad_amounts() {
        assert!(Nanos::from_usd(-1.0).is_err());
        assert!(Nanos::from_usd(f64::NAN).is_err());
        assert!(Nanos::from_usd(f64::INFINITY).is_err());
        assert!(Nanos::from_usd(1e300).is_err());
    }

    #[test]
    fn cost_is_exact() {
        // $0.15 / 1M input, $0.60 / 1M output
        let inp = price_per_token_pico(0.15e-6).unwrap();
        let out = price_per_token_pico(0.6e-6).unwrap();
        assert_eq!(inp, 150_000);
        assert_eq!(cost_of(1000, 1000, inp, out), Nanos(750_000));
        // summing a thousand tiny costs stays exact
        let one = cost_of(1, 0, price_per_token_pico(1e-6).unwrap(), 0);
        assert_eq!(
            Nanos((0..1000).map(|_| one.0).sum()),
            Nanos::from_usd(0.001).unwrap()
        );
    }
}
