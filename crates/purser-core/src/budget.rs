//! Budget periods: the `budget_duration` grammar (reference §8.2) and the next reset instant
//! on calendar boundaries in UTC (§8.3). Invariant: `next_reset(d, t) > t` always, and feeding
//! the previous reset back in (`next_reset(d, prev)`) walks the same aligned grid, so periods never drift.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};

/// Unit of a budget duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
}

/// A parsed, validated `budget_duration` such as `30s`, `24h`, `7d`, `1w`, `1mo`, `monthly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetDuration {
    pub count: u32,
    pub unit: Unit,
}

/// Why a duration string is refused; the message is the reference's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Invalid budget_duration '{0}'. Use a format like '1h', '24h', '7d', or '30d'.")]
pub struct DurationError(pub String);

/// Longest period accepted, so every computed instant stays far inside chrono's range.
const MAX_SECONDS: i64 = 100 * 366 * 86_400;

impl BudgetDuration {
    /// Parses the reference grammar: word aliases (`hourly`, `daily`, `weekly`, `monthly`),
    /// else `^(\d+)(mo|[smhdw])` with trailing characters ignored (`1hr` = 1h). A bare number,
    /// zero, `Nmo` with N ≠ 1 and absurdly long periods are rejected.
    pub fn parse(input: &str) -> Result<BudgetDuration, DurationError> {
        let err = || DurationError(input.to_string());
        let s = input.trim().to_ascii_lowercase();
        let s = match s.as_str() {
            "hourly" => "1h".to_string(),
            "daily" => "24h".to_string(),
            "weekly" => "7d".to_string(),
            "monthly" => "30d".to_string(),
            _ => s,
        };
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits_end == 0 || digits_end > 9 {
            return Err(err());
        }
        let count: u32 = s[..digits_end].parse().map_err(|_| err())?;
        let rest = &s[digits_end..];
        let unit = if rest.starts_with("mo") {
            Unit::Months
        } else {
            match rest.chars().next() {
                Some('s') => Unit::Seconds,
                Some('m') => Unit::Minutes,
                Some('h') => Unit::Hours,
                Some('d') => Unit::Days,
                Some('w') => Unit::Weeks,
                _ => return Err(err()),
            }
        };
        if count == 0 || (unit == Unit::Months && count != 1) {
            return Err(err());
        }
        let d = BudgetDuration { count, unit };
        if d.approx_seconds() > MAX_SECONDS {
            return Err(err());
        }
        Ok(d)
    }

    fn approx_seconds(&self) -> i64 {
        let n = self.count as i64;
        match self.unit {
            Unit::Seconds => n,
            Unit::Minutes => n * 60,
            Unit::Hours => n * 3600,
            Unit::Days => n * 86_400,
            Unit::Weeks => n * 7 * 86_400,
            Unit::Months => 31 * 86_400,
        }
    }

    /// The start of the window that ends at `end`: one period earlier (calendar months for `mo`).
    pub fn window_start(&self, end: DateTime<Utc>) -> DateTime<Utc> {
        match self.unit {
            Unit::Months => end
                .checked_sub_months(chrono::Months::new(self.count))
                .unwrap_or(end),
            _ => end - Duration::seconds(self.approx_seconds()),
        }
    }

    /// `now + duration` without calendar alignment: used for key expiry (`duration` on keys).
    pub fn after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.unit {
            Unit::Months => add_months(now, self.count),
            _ => now + Duration::seconds(self.approx_seconds()),
        }
    }

    /// The next reset instant strictly after `t`, on UTC calendar boundaries (§8.3):
    /// `Ns`/`Nm`/`Nh` at multiples of N within the minute/hour/day (carrying over; values that do
    /// not fit one unit step from midnight), `1d` next midnight, `7d`/`1w` next Monday, `30d`/`1mo`
    /// the 1st of the next month, other `Nd`/`Nw` N days/weeks after today's midnight.
    pub fn next_reset(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let midnight = Utc.from_utc_datetime(&t.date_naive().and_time(NaiveTime::MIN));
        let n = self.count as i64;
        let since_midnight = (t - midnight).num_seconds();
        let step = |unit_secs: i64, period: i64| -> DateTime<Utc> {
            // Align within `period` seconds (a minute, hour or day) when N fits it, else from midnight.
            let step = n * unit_secs;
            let (base, offset) = if step < period {
                let period_start = since_midnight - since_midnight.rem_euclid(period);
                (
                    midnight + Duration::seconds(period_start),
                    since_midnight - period_start,
                )
            } else {
                (midnight, since_midnight)
            };
            let k = offset / step + 1;
            let candidate = base + Duration::seconds(k * step);
            if step < period && candidate > base + Duration::seconds(period) {
                base + Duration::seconds(period)
            } else {
                candidate
            }
        };
        match self.unit {
            Unit::Seconds => step(1, 60),
            Unit::Minutes => step(60, 3600),
            Unit::Hours => step(3600, 86_400),
            Unit::Days if n == 1 => midnight + Duration::days(1),
            Unit::Days if n == 7 => next_monday(midnight),
            Unit::Weeks if n == 1 => next_monday(midnight),
            Unit::Days if n == 30 => first_of_next_month(t),
            Unit::Months => first_of_next_month(t),
            Unit::Days => midnight + Duration::days(n),
            Unit::Weeks => midnight + Duration::days(7 * n),
        }
    }

    /// The first reset strictly after `now`, walking from `previous` so a period missed while the
    /// gateway was down does not shift the grid.
    pub fn next_reset_after(&self, previous: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut next = self.next_reset(previous);
        // Bounded: after a long outage jump straight to `now` instead of looping per period.
        let mut steps = 0;
        while next <= now {
            steps += 1;
            next = if steps > 1000 {
                self.next_reset(now)
            } else {
                self.next_reset(next)
            };
        }
        next
    }
}

fn next_monday(midnight: DateTime<Utc>) -> DateTime<Utc> {
    let days = match midnight.weekday() {
        Weekday::Mon => 7,
        d => 7 - d.num_days_from_monday() as i64,
    };
    midnight + Duration::days(days)
}

fn first_of_next_month(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(t)
}

fn add_months(t: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    t.checked_add_months(chrono::Months::new(months))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn d(s: &str) -> BudgetDuration {
        BudgetDuration::parse(s).unwrap()
    }

    #[test]
    fn grammar() {
        assert_eq!(
            d("30s"),
            BudgetDuration {
                count: 30,
                unit: Unit::Seconds
            }
        );
        assert_eq!(
            d("1hr"),
            BudgetDuration {
                count: 1,
                unit: Unit::Hours
            }
        );
        assert_eq!(
            d("1mo"),
            BudgetDuration {
                count: 1,
                unit: Unit::Months
            }
        );
        assert_eq!(
            d("Monthly"),
            BudgetDuration {
                count: 30,
                unit: Unit::Days
            }
        );
        assert_eq!(
            d("2w"),
            BudgetDuration {
                count: 2,
                unit: Unit::Weeks
            }
        );
        for bad in [
            "",
            "30",
            "0d",
            "d",
            "-1d",
            "2mo",
            "1y",
            "99999999999d",
            "🙂",
            "1🙂",
            "36600000d",
        ] {
            assert!(
                BudgetDuration::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn boundaries() {
        let now = at("2026-11-27T10:17:43Z"); // a Friday
        assert_eq!(d("30s").next_reset(now), at("2026-11-27T10:18:00Z"));
        assert_eq!(d("5s").next_reset(now), at("2026-11-27T10:17:45Z"));
        assert_eq!(d("15m").next_reset(now), at("2026-11-27T10:30:00Z"));
        assert_eq!(d("1h").next_reset(now), at("2026-11-27T11:00:00Z"));
        assert_eq!(d("24h").next_reset(now), at("2026-11-28T00:00:00Z"));
        assert_eq!(d("1d").next_reset(now), at("2026-11-28T00:00:00Z"));
        assert_eq!(d("7d").next_reset(now), at("2026-11-30T00:00:00Z"));
        assert_eq!(d("1w").next_reset(now), at("2026-11-30T00:00:00Z"));
        assert_eq!(d("30d").next_reset(now), at("2026-12-01T00:00:00Z"));
        assert_eq!(
            d("1mo").next_reset(at("2026-12-31T23:59:59Z")),
            at("2027-01-01T00:00:00Z")
        );
        assert_eq!(d("3d").next_reset(now), at("2026-11-30T00:00:00Z"));
        assert_eq!(
            d("90s").next_reset(at("2026-11-27T00:01:00Z")),
            at("2026-11-27T00:01:30Z")
        );
        // exactly on a boundary moves to the next one
        assert_eq!(
            d("30s").next_reset(at("2026-11-27T10:18:00Z")),
            at("2026-11-27T10:18:30Z")
        );
        assert_eq!(
            d("7d").next_reset(at("2026-11-30T00:00:00Z")),
            at("2026-12-07T00:00:00Z")
        );
    }

    #[test]
    fn never_drifts_and_always_advances() {
        let durations = [
            "1s", "7s", "30s", "45m", "1h", "5h", "24h", "1d", "3d", "7d", "1w", "30d", "1mo",
            "90s", "48h",
        ];
        for s in durations {
            let dur = d(s);
            let mut t = at("2026-01-30T13:14:15Z");
            for _ in 0..50 {
                let n = dur.next_reset(t);
                assert!(n > t, "{s}: {n} not after {t}");
                t = n;
            }
        }
        let prev = at("2026-11-27T10:00:00Z");
        assert_eq!(
            d("1h").next_reset_after(prev, at("2026-11-27T13:30:00Z")),
            at("2026-11-27T14:00:00Z")
        );
    }
}

/// The forecast window: spend of the last day (or since creation, if younger).
pub const FORECAST_WINDOW_SECS: i64 = 86_400;
/// Below this many calls in the window, or this much observed time, a rate would be a guess.
pub const FORECAST_MIN_CALLS: u64 = 5;
pub const FORECAST_MIN_OBSERVED_SECS: i64 = 3_600;

/// What a budget's forecast is made from (nano-USD and seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForecastInput {
    /// Spend and calls logged in the observed window.
    pub window_spend: i64,
    pub window_calls: u64,
    /// Length of the observed window: `FORECAST_WINDOW_SECS`, or the budget's age if younger.
    pub observed_secs: i64,
    /// Spend now, and the cap (none: nothing runs out).
    pub spend: i64,
    pub max_budget: Option<i64>,
    /// Seconds until the budget resets, when it has a period.
    pub reset_in_secs: Option<i64>,
}

/// What a forecast can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForecastStatus {
    /// A rate and, with a cap, when it runs out.
    Projected,
    /// The budget is spent already.
    Exhausted,
    /// Calls happen, but there is no cap to run out of.
    NoBudget,
    /// Nothing was spent in the window: it never runs out at this rate.
    Idle,
    /// Too few calls or too short a window for an honest rate.
    InsufficientData,
}

impl ForecastStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ForecastStatus::Projected => "projected",
            ForecastStatus::Exhausted => "exhausted",
            ForecastStatus::NoBudget => "no_budget",
            ForecastStatus::Idle => "idle",
            ForecastStatus::InsufficientData => "insufficient_data",
        }
    }
}

/// A budget's burn rate and how long it lasts at that rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub status: ForecastStatus,
    /// Why the forecast says less than a projection (insufficient data, idle).
    pub reason: Option<String>,
    /// Nano-USD per hour over the observed window (None when the data is insufficient).
    pub burn_rate_per_hour: Option<f64>,
    /// Seconds until `spend` reaches the cap at that rate (0 when exhausted).
    pub secs_until_exhausted: Option<i64>,
    /// Whether that comes before the next reset (None: no reset or no projection).
    pub exhausts_before_reset: Option<bool>,
}

/// The forecast of one budget: the window's spend over its length is the burn rate; the
/// remaining budget over the rate is how long it lasts. Honest about thin data: fewer than
/// [`FORECAST_MIN_CALLS`] calls or less than [`FORECAST_MIN_OBSERVED_SECS`] observed is
/// `InsufficientData` with the reason, never a number.
pub fn forecast(i: &ForecastInput) -> Forecast {
    let none = |status, reason: Option<String>| Forecast {
        status,
        reason,
        burn_rate_per_hour: None,
        secs_until_exhausted: None,
        exhausts_before_reset: None,
    };
    if let Some(max) = i.max_budget
        && i.spend >= max
    {
        return Forecast {
            status: ForecastStatus::Exhausted,
            reason: None,
            burn_rate_per_hour: None,
            secs_until_exhausted: Some(0),
            exhausts_before_reset: i.reset_in_secs.map(|r| r > 0),
        };
    }
    if i.window_calls == 0 || i.window_spend <= 0 {
        return none(
            ForecastStatus::Idle,
            Some("nothing was spent in the last 24 hours".into()),
        );
    }
    if i.window_calls < FORECAST_MIN_CALLS || i.observed_secs < FORECAST_MIN_OBSERVED_SECS {
        return none(
            ForecastStatus::InsufficientData,
            Some(format!(
                "{} call(s) over {} minute(s): a rate needs at least {FORECAST_MIN_CALLS} calls over at least {} minutes",
                i.window_calls,
                i.observed_secs.max(0) / 60,
                FORECAST_MIN_OBSERVED_SECS / 60
            )),
        );
    }
    let per_hour = i.window_spend as f64 * 3600.0 / i.observed_secs as f64;
    let Some(max) = i.max_budget else {
        return Forecast {
            status: ForecastStatus::NoBudget,
            reason: None,
            burn_rate_per_hour: Some(per_hour),
            secs_until_exhausted: None,
            exhausts_before_reset: None,
        };
    };
    let secs = ((max - i.spend) as f64 / per_hour * 3600.0).round() as i64;
    Forecast {
        status: ForecastStatus::Projected,
        reason: None,
        burn_rate_per_hour: Some(per_hour),
        secs_until_exhausted: Some(secs),
        exhausts_before_reset: i.reset_in_secs.map(|r| secs < r),
    }
}

#[cfg(test)]
mod forecast_tests {
    use super::*;

    const USD: i64 = 1_000_000_000;

    fn input() -> ForecastInput {
        ForecastInput {
            window_spend: 3 * USD,
            window_calls: 12,
            observed_secs: 86_400,
            spend: 4 * USD,
            max_budget: Some(10 * USD),
            reset_in_secs: Some(72 * 3600),
        }
    }

    #[test]
    fn a_steady_burn_projects_when_the_budget_runs_out() {
        // $3 a day is $0.125 an hour; $6 left lasts 48 hours, before the reset in 72.
        let f = forecast(&input());
        assert_eq!(f.status, ForecastStatus::Projected);
        assert_eq!(f.burn_rate_per_hour, Some(0.125 * USD as f64));
        assert_eq!(f.secs_until_exhausted, Some(48 * 3600));
        assert_eq!(f.exhausts_before_reset, Some(true));
        let f = forecast(&ForecastInput {
            reset_in_secs: Some(24 * 3600),
            ..input()
        });
        assert_eq!(f.exhausts_before_reset, Some(false));
        // A young budget: its rate is over its age, not the whole day.
        let f = forecast(&ForecastInput {
            observed_secs: 7_200,
            window_spend: USD / 4,
            ..input()
        });
        assert_eq!(f.burn_rate_per_hour, Some(0.125 * USD as f64));
    }

    #[test]
    fn thin_data_idle_budgets_and_spent_ones_say_so() {
        let f = forecast(&ForecastInput {
            window_calls: 3,
            ..input()
        });
        assert_eq!(f.status, ForecastStatus::InsufficientData);
        assert!(f.reason.unwrap().contains("3 call(s)"));
        assert_eq!(f.secs_until_exhausted, None);
        let f = forecast(&ForecastInput {
            observed_secs: 600,
            ..input()
        });
        assert_eq!(f.status, ForecastStatus::InsufficientData);
        let f = forecast(&ForecastInput {
            window_calls: 0,
            window_spend: 0,
            ..input()
        });
        assert_eq!(f.status, ForecastStatus::Idle);
        let f = forecast(&ForecastInput {
            spend: 10 * USD,
            ..input()
        });
        assert_eq!(f.status, ForecastStatus::Exhausted);
        assert_eq!(f.secs_until_exhausted, Some(0));
        let f = forecast(&ForecastInput {
            max_budget: None,
            ..input()
        });
        assert_eq!(f.status, ForecastStatus::NoBudget);
        assert!(f.burn_rate_per_hour.is_some());
    }
}
