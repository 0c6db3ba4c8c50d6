//! LiteLLM's budget durations and its rule for the next `budget_reset_at`.
//!
//! LiteLLM aligns resets to calendar boundaries in `litellm_settings.timezone`:
//! `1d` the next reset time of day, `7d` the next Monday, `30d`/`1mo` the 1st of next month, other
//! `Nd` today + N days, all at `budget_reset_time` (default midnight); `Nh`/`Nm`/`Ns` the next
//! multiple of N within the day. The result is stored as UTC.

use std::fmt;

use chrono::{
    DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// A parsed `budget_duration`, e.g. `30d`, `1mo`, `12h` (or LiteLLM's aliases `daily`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetDuration {
    Seconds(u32),
    Minutes(u32),
    Hours(u32),
    Days(u32),
    Weeks(u32),
    /// LiteLLM resets monthly budgets on the 1st; it supports one month only.
    Month,
}

impl BudgetDuration {
    /// Parses LiteLLM's duration syntax. The error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let alias = match text.to_ascii_lowercase().as_str() {
            "hourly" => Some(Self::Hours(1)),
            "daily" => Some(Self::Hours(24)),
            "weekly" => Some(Self::Days(7)),
            "monthly" => Some(Self::Days(30)),
            _ => None,
        };
        if let Some(duration) = alias {
            return Ok(duration);
        }
        let digits = text.chars().take_while(char::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let invalid = || {
            format!(
                "{text:?} is not a duration: use a number and s, m, h, d, w or 1mo (e.g. 30d), \
                 or hourly, daily, weekly, monthly"
            )
        };
        if number.is_empty() {
            return Err(invalid());
        }
        let too_long = || {
            format!(
                "{text:?} is longer than {MAX_DAYS} days (1,000 years): LiteLLM could not read \
                 the reset date"
            )
        };
        // All digits: a number that does not fit is too long, not malformed.
        let value: u32 = number.parse().map_err(|_| too_long())?;
        let duration = match unit {
            "s" => Self::Seconds(value),
            "m" => Self::Minutes(value),
            "h" => Self::Hours(value),
            "d" => Self::Days(value),
            "w" => Self::Weeks(value),
            "mo" if value == 1 => Self::Month,
            "mo" => {
                return Err(format!(
                    "{text:?}: LiteLLM supports monthly budgets of 1mo only"
                ));
            }
            _ => return Err(invalid()),
        };
        if duration.seconds() > u64::from(MAX_DAYS) * 86_400 {
            return Err(too_long());
        }
        Ok(duration)
    }

    /// The nominal length in seconds (a month as 31 days); cannot overflow.
    fn seconds(self) -> u64 {
        let (count, unit_seconds) = match self {
            Self::Seconds(n) => (n, 1),
            Self::Minutes(n) => (n, 60),
            Self::Hours(n) => (n, 3600),
            Self::Days(n) => (n, 86_400),
            Self::Weeks(n) => (n, 7 * 86_400),
            Self::Month => (31, 86_400),
        };
        u64::from(count) * unit_seconds
    }
}

/// The longest budget duration accepted: 1,000 years. Resets stay far inside the dates that
/// LiteLLM (Python's `datetime`, up to the year 9999), PostgreSQL and chrono represent; any
/// longer budget is a typo or a way of saying "never", which this still is.
const MAX_DAYS: u32 = 365_250;

/// Written back in LiteLLM's own syntax (aliases in their canonical form, which LiteLLM's reset
/// job can parse).
impl fmt::Display for BudgetDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Seconds(n) => write!(f, "{n}s"),
            Self::Minutes(n) => write!(f, "{n}m"),
            Self::Hours(n) => write!(f, "{n}h"),
            Self::Days(n) => write!(f, "{n}d"),
            Self::Weeks(n) => write!(f, "{n}w"),
            Self::Month => f.write_str("1mo"),
        }
    }
}

/// Where budget resets are anchored: LiteLLM's `timezone` and `budget_reset_time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetClock {
    pub timezone: Tz,
    /// The time of day at which day-based budgets reset.
    pub reset_time: NaiveTime,
}

impl Default for ResetClock {
    fn default() -> Self {
        Self {
            timezone: Tz::UTC,
            reset_time: NaiveTime::MIN,
        }
    }
}

impl ResetClock {
    /// The `budget_reset_at` for a budget of `duration` that starts at `now`, as LiteLLM stores it
    /// (UTC, without time zone, millisecond precision).
    pub fn next_reset(&self, duration: BudgetDuration, now: DateTime<Utc>) -> NaiveDateTime {
        let local = now.with_timezone(&self.timezone).naive_local();
        let today = local.date();
        let at_reset_time = |date: NaiveDate| date.and_time(self.reset_time);
        let next_local = match duration {
            BudgetDuration::Days(0)
            | BudgetDuration::Weeks(0)
            | BudgetDuration::Hours(0)
            | BudgetDuration::Minutes(0)
            | BudgetDuration::Seconds(0) => return truncate_to_millis(now.naive_utc()),
            BudgetDuration::Days(1) => {
                let today_at = at_reset_time(today);
                if today_at > local {
                    today_at
                } else {
                    at_reset_time(add_days(today, 1))
                }
            }
            BudgetDuration::Days(7) | BudgetDuration::Weeks(1) => {
                let from_monday = today.weekday().num_days_from_monday();
                at_reset_time(add_days(today, u64::from(7 - from_monday)))
            }
            BudgetDuration::Days(30) | BudgetDuration::Month => {
                let first = today.with_day(1).unwrap_or(today);
                at_reset_time(first.checked_add_months(Months::new(1)).unwrap_or(first))
            }
            BudgetDuration::Days(n) => at_reset_time(add_days(today, u64::from(n))),
            BudgetDuration::Weeks(n) => at_reset_time(add_days(today, u64::from(n) * 7)),
            BudgetDuration::Hours(n) => next_multiple(local, n, 3600),
            BudgetDuration::Minutes(n) => next_multiple(local, n, 60),
            BudgetDuration::Seconds(n) => next_multiple(local, n, 1),
        };
        truncate_to_millis(self.local_to_utc(next_local))
    }

    /// Local wall-clock time to UTC. An ambiguous time (clocks going back) takes the earlier
    /// instant; a time in a gap (clocks going forward) is read with the offset in force before the
    /// gap, as Python's zoneinfo does for LiteLLM (02:30 in a 02:00-03:00 gap becomes 03:30).
    fn local_to_utc(&self, local: NaiveDateTime) -> NaiveDateTime {
        use chrono::Offset as _;
        if let Some(instant) = self.timezone.from_local_datetime(&local).earliest() {
            return instant.naive_utc();
        }
        // Gaps last at most a few hours; three hours earlier is before this one. At the edges of
        // chrono's calendar (only reachable with a duration built by hand) the local time is
        // taken as UTC rather than overflowing.
        let Some(before_gap) = local.checked_sub_signed(chrono::Duration::hours(3)) else {
            return local;
        };
        match self
            .timezone
            .offset_from_local_datetime(&before_gap)
            .earliest()
        {
            Some(offset) => local
                .checked_sub_signed(chrono::Duration::seconds(i64::from(
                    offset.fix().local_minus_utc(),
                )))
                .unwrap_or(local),
            None => local,
        }
    }
}

/// `days` after `date`; past the last date chrono knows, that last date (a duration that long is
/// refused when parsed, so only a `BudgetDuration` built by hand gets here).
fn add_days(date: NaiveDate, days: u64) -> NaiveDate {
    date.checked_add_days(Days::new(days))
        .unwrap_or(NaiveDate::MAX)
}

/// LiteLLM's `Nh`/`Nm`/`Ns` rule: the next multiple of N of the hour (minute, second) of the day,
/// rolling over into the next day when it passes midnight. In u64, where no `N` overflows.
fn next_multiple(local: NaiveDateTime, n: u32, unit_seconds: u32) -> NaiveDateTime {
    let (n, unit_seconds) = (u64::from(n.max(1)), u64::from(unit_seconds.max(1)));
    let elapsed_units = u64::from(local.time().num_seconds_from_midnight()) / unit_seconds;
    let next_units = elapsed_units + n - elapsed_units % n;
    let units_per_day = 86_400 / unit_seconds;
    let day = add_days(local.date(), next_units / units_per_day);
    let seconds = (next_units % units_per_day) * unit_seconds;
    let seconds = u32::try_from(seconds).unwrap_or(0);
    day.and_time(
        NaiveTime::from_num_seconds_from_midnight_opt(seconds, 0).unwrap_or(NaiveTime::MIN),
    )
}

fn truncate_to_millis(value: NaiveDateTime) -> NaiveDateTime {
    let nanos = value.and_utc().timestamp_subsec_nanos();
    value
        .with_nanosecond(nanos - nanos % 1_000_000)
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn naive(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn reset(clock: ResetClock, duration: &str, now: &str) -> NaiveDateTime {
        clock.next_reset(BudgetDuration::parse(duration).unwrap(), utc(now))
    }

    /// The reset after `now` (RFC 3339) for `duration` is `expected` (UTC, as stored).
    #[track_caller]
    fn expect(clock: ResetClock, duration: &str, now: &str, expected: &str) {
        assert_eq!(
            reset(clock, duration, now),
            naive(expected),
            "{duration} from {now} in {}",
            clock.timezone
        );
    }

    fn clock(tz: &str, reset_time: &str) -> ResetClock {
        ResetClock {
            timezone: tz.parse().unwrap(),
            reset_time: NaiveTime::parse_from_str(reset_time, "%H:%M").unwrap(),
        }
    }

    #[test]
    fn parses_litellm_durations_and_aliases() {
        assert_eq!(BudgetDuration::parse("30d"), Ok(BudgetDuration::Days(30)));
        assert_eq!(BudgetDuration::parse("1mo"), Ok(BudgetDuration::Month));
        assert_eq!(BudgetDuration::parse("2w"), Ok(BudgetDuration::Weeks(2)));
        assert_eq!(
            BudgetDuration::parse("45m"),
            Ok(BudgetDuration::Minutes(45))
        );
        assert_eq!(
            BudgetDuration::parse("Monthly"),
            Ok(BudgetDuration::Days(30))
        );
        assert_eq!(
            BudgetDuration::parse("daily"),
            Ok(BudgetDuration::Hours(24))
        );
        assert_eq!(BudgetDuration::parse("weekly").unwrap().to_string(), "7d");
        for bad in ["", "d", "30", "30x", "2mo", "-1d", "1.5h", "30 days", "+1d"] {
            assert!(
                BudgetDuration::parse(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn one_day_is_next_midnight_in_utc() {
        let c = ResetClock::default();
        expect(c, "1d", "2026-11-28T13:45:10Z", "2026-11-29 00:00:00");
        // Exactly at midnight: the next one, as LiteLLM does.
        expect(c, "1d", "2026-11-28T00:00:00Z", "2026-11-29 00:00:00");
    }

    #[test]
    fn one_day_uses_the_reset_time_of_day() {
        let c = clock("UTC", "09:30");
        expect(c, "1d", "2026-11-28T08:00:00Z", "2026-11-28 09:30:00");
        expect(c, "1d", "2026-11-28T10:00:00Z", "2026-11-29 09:30:00");
    }

    #[test]
    fn one_day_in_a_time_zone_is_local_midnight_stored_as_utc() {
        // 2026-11-28 20:00 in New York (UTC-5) is 2026-11-29 01:00 UTC.
        let c = clock("America/New_York", "00:00");
        expect(c, "1d", "2026-11-29T01:00:00Z", "2026-11-29 05:00:00");
        let c = clock("Asia/Kolkata", "00:00");
        expect(c, "1d", "2026-11-28T20:00:00Z", "2026-11-29 18:30:00");
    }

    #[test]
    fn seven_days_is_next_monday_even_on_a_monday() {
        let c = ResetClock::default();
        // 2026-11-28 is a Saturday.
        expect(c, "7d", "2026-11-28T12:00:00Z", "2026-11-30 00:00:00");
        expect(c, "weekly", "2026-11-28T12:00:00Z", "2026-11-30 00:00:00");
        expect(c, "1w", "2026-11-30T00:00:00Z", "2026-12-07 00:00:00");
        let c = clock("Europe/Berlin", "06:00");
        expect(c, "7d", "2026-11-29T23:30:00Z", "2026-12-07 05:00:00");
    }

    #[test]
    fn thirty_days_and_one_month_are_the_first_of_next_month() {
        let c = ResetClock::default();
        expect(c, "30d", "2026-11-28T12:00:00Z", "2026-12-01 00:00:00");
        expect(c, "1mo", "2026-12-31T23:59:59Z", "2027-01-01 00:00:00");
        expect(c, "monthly", "2026-01-31T10:00:00Z", "2026-02-01 00:00:00");
        // In Tokyo (UTC+9) it is already December 1st.
        let c = clock("Asia/Tokyo", "00:00");
        expect(c, "30d", "2026-11-30T16:00:00Z", "2026-12-31 15:00:00");
    }

    #[test]
    fn other_day_counts_are_today_plus_n() {
        let c = ResetClock::default();
        expect(c, "10d", "2026-11-28T12:00:00Z", "2026-12-08 00:00:00");
        expect(c, "2w", "2026-11-28T12:00:00Z", "2026-12-12 00:00:00");
        let c = clock("UTC", "12:00");
        expect(c, "3d", "2026-11-28T18:00:00Z", "2026-12-01 12:00:00");
    }

    #[test]
    fn hours_minutes_seconds_are_the_next_multiple() {
        let c = ResetClock::default();
        expect(c, "1h", "2026-11-28T13:45:10Z", "2026-11-28 14:00:00");
        expect(c, "1h", "2026-11-28T13:00:00Z", "2026-11-28 14:00:00");
        expect(c, "6h", "2026-11-28T13:45:10Z", "2026-11-28 18:00:00");
        expect(c, "5h", "2026-11-28T22:30:00Z", "2026-11-29 01:00:00");
        expect(c, "daily", "2026-11-28T22:30:00Z", "2026-11-29 00:00:00");
        expect(c, "15m", "2026-11-28T13:45:10Z", "2026-11-28 14:00:00");
        expect(c, "15m", "2026-11-28T23:50:00Z", "2026-11-29 00:00:00");
        expect(c, "30s", "2026-11-28T13:45:10Z", "2026-11-28 13:45:30");
        let c = clock("Asia/Kolkata", "00:00");
        // 13:45:10 UTC is 19:15:10 in India; the next 6-hour mark there is 00:00 (18:30 UTC).
        expect(c, "6h", "2026-11-28T13:45:10Z", "2026-11-28 18:30:00");
    }

    #[test]
    fn zero_is_now() {
        let c = ResetClock::default();
        assert_eq!(
            reset(c, "0d", "2026-11-28T13:45:10.123456Z"),
            naive("2026-11-28 13:45:10") + chrono::Duration::milliseconds(123)
        );
    }

    #[test]
    fn durations_longer_than_a_thousand_years_are_refused() {
        assert_eq!(
            BudgetDuration::parse("365250d"),
            Ok(BudgetDuration::Days(365_250))
        );
        assert_eq!(
            BudgetDuration::parse("4294967295s"),
            Ok(BudgetDuration::Seconds(u32::MAX))
        );
        for absurd in [
            "365251d",
            "52179w",
            "4294967295d",
            "4294967295w",
            "4294967295h",
            "4294967295m",
            "4294967296s",
            "18446744073709551616d",
            "99999999999999999999999999999h",
        ] {
            let error = BudgetDuration::parse(absurd).unwrap_err();
            assert!(error.contains("1,000 years"), "{absurd}: {error}");
        }
    }

    #[test]
    fn the_largest_durations_compute_a_reset_without_overflow() {
        let now = utc("2026-11-28T13:45:10.123456Z");
        for timezone in [
            "UTC",
            "America/New_York",
            "Asia/Tokyo",
            "Pacific/Kiritimati",
        ] {
            let c = clock(timezone, "02:30");
            for duration in [
                BudgetDuration::Seconds(u32::MAX),
                BudgetDuration::Minutes(u32::MAX),
                BudgetDuration::Hours(u32::MAX),
                BudgetDuration::Days(u32::MAX),
                BudgetDuration::Weeks(u32::MAX),
                BudgetDuration::Days(MAX_DAYS),
            ] {
                let at = c.next_reset(duration, now);
                assert!(at > now.naive_utc(), "{timezone} {duration}: {at}");
            }
        }
        // The next multiple of u32::MAX seconds (about 136 years) counted from today's midnight.
        assert_eq!(
            ResetClock::default().next_reset(BudgetDuration::Seconds(u32::MAX), now),
            naive("2163-01-04 06:28:15")
        );
    }

    #[test]
    fn daylight_saving_gap_moves_forward() {
        // Europe/Berlin skips 02:00-03:00 on 2027-03-28; a 02:30 reset time that day is 03:30 CEST.
        let c = clock("Europe/Berlin", "02:30");
        expect(c, "1d", "2027-03-27T12:00:00Z", "2027-03-28 01:30:00");
    }
}
