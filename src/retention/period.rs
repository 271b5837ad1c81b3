//! Retention periods in calendar units: "7y", "18 months", "90d", or "forever". Calendar years
//! (not 365-day blocks) because regulations say "seven years", and a record created on
//! 29 February is kept until 28 February seven years on, not a day short.

use chrono::{DateTime, Days, Months, Utc};
use std::fmt;

/// Azure's longest retention: 146,000 days (about 400 years).
pub const MAX_DAYS: u64 = 146_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Months(u32),
    Days(u64),
    Forever,
}

impl Period {
    pub fn parse(text: &str) -> Result<Period, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "forever" {
            return Ok(Period::Forever);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("\"{text}\" is not a period: use e.g. \"7y\", \"18mo\", \"90d\" or \"forever\"")
        })?;
        if n == 0 {
            return Err("a retention period must be longer than zero".into());
        }
        let period = match unit.trim() {
            "y" | "year" | "years" => Period::Months(months(n.saturating_mul(12))?),
            "mo" | "month" | "months" => Period::Months(months(n)?),
            "d" | "day" | "days" => Period::Days(n),
            other => {
                return Err(format!(
                    "unknown unit \"{other}\" in \"{text}\": use y, mo or d (or \"forever\")"
                ))
            }
        };
        if period.approx_days() > MAX_DAYS {
            return Err(format!(
                "\"{text}\" is longer than Azure's limit of {MAX_DAYS} days"
            ));
        }
        Ok(period)
    }

    fn approx_days(self) -> u64 {
        match self {
            Period::Months(m) => u64::from(m) * 31,
            Period::Days(d) => d,
            Period::Forever => 0,
        }
    }

    /// `from` + this period; None for forever (and for dates beyond chrono's range).
    pub fn after(self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Period::Months(m) => from.checked_add_months(Months::new(m)),
            Period::Days(d) => from.checked_add_days(Days::new(d)),
            Period::Forever => None,
        }
    }
}

fn months(n: u64) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| "retention period too long".to_string())
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Months(m) if m % 12 == 0 => write!(f, "{}y", m / 12),
            Period::Months(m) => write!(f, "{m}mo"),
            Period::Days(d) => write!(f, "{d}d"),
            Period::Forever => f.write_str("forever"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_calendar_units() {
        assert_eq!(Period::parse("7y"), Ok(Period::Months(84)));
        assert_eq!(Period::parse("18 months"), Ok(Period::Months(18)));
        assert_eq!(Period::parse("90d"), Ok(Period::Days(90)));
        assert_eq!(Period::parse("Forever"), Ok(Period::Forever));
        for bad in ["", "7", "0d", "7w", "-1y", "1000y", "ever"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn years_are_calendar_years() {
        let leap = Utc
            .with_ymd_and_hms(2024, 2, 29, 12, 0, 0)
            .single()
            .expect("date");
        let end = Period::Months(84).after(leap).expect("in range");
        assert_eq!(
            end,
            Utc.with_ymd_and_hms(2031, 2, 28, 12, 0, 0)
                .single()
                .expect("date")
        );
        assert_eq!(Period::Forever.after(leap), None);
        assert_eq!(Period::Months(84).to_string(), "7y");
    }
}
