//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month,
//! day of week) with `*`, lists, ranges, steps and month/weekday names, or a descriptor
//! (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`; `@annually` and `@midnight` too).
//! When both day fields are restricted a day matching either runs, as in Vixie cron and the
//! parser kube-controller-manager uses. Times are civil times in the CronJob's time zone.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: either may match.
    either_day: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<(u64, bool), String> {
    let value = |token: &str| -> Result<u32, String> {
        let lower = token.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1 (the field's minimum), weekday names from 0.
            return Ok(i as u32 + min);
        }
        let n: u32 = token.parse().map_err(|_| format!("{what}: {token:?} is not a number"))?;
        Ok(n)
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("{what}: step {step:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{what}: a step must be positive"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" || range == "?" {
            star |= step == 1;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        if low < min || high > max || low > high {
            return Err(format!("{what}: {part:?} is outside {min}-{max}"));
        }
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    // Sunday may be written 7.
    if names.len() == 7 && bits & (1 << 7) != 0 {
        bits = (bits | 1) & !(1 << 7);
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(format!("unrecognised descriptor {other:?}")),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {spec:?}", fields.len()));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], "minute")?;
        let (hours, _) = field(fields[1], 0, 23, &[], "hour")?;
        let (days, any_day) = field(fields[2], 1, 31, &[], "day of month")?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS, "month")?;
        let (weekdays, any_weekday) = field(fields[4], 0, 7, &WEEKDAYS, "day of week")?;
        Ok(Schedule { minutes, hours, days, months, weekdays, either_day: !any_day && !any_weekday })
    }

    fn day_matches(&self, t: DateTime) -> bool {
        let day = self.days & (1 << t.day()) != 0;
        let weekday = self.weekdays & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day { day || weekday } else { day && weekday }
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        // Whole minutes: the next minute boundary after `after`.
        let mut t = start.with().second(0).subsec_nanosecond(0).build().ok()?.checked_add(1.minute()).ok()?;
        let limit = t.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                t = t.first_of_month().checked_add(1.month()).ok()?.with().hour(0).minute(0).build().ok()?;
                continue;
            }
            if !self.day_matches(t) {
                t = t.date().checked_add(1.day()).ok()?.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with().minute(0).build().ok()?.checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A civil time skipped by a DST change runs at the first valid time after it.
            let zoned = tz.to_ambiguous_zoned(t).compatible().ok()?;
            if zoned.timestamp() > after {
                return Some(zoned.timestamp());
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_find_their_next_time() {
        let utc = TimeZone::UTC;
        // 2026-11-23 is a Monday.
        let cases = [
            ("*/15 * * * *", "2026-11-23T10:07:00Z", "2026-11-23T10:15:00Z"),
            ("0 * * * *", "2026-11-23T10:00:00Z", "2026-11-23T11:00:00Z"),
            ("30 2 * * *", "2026-11-23T10:07:00Z", "2026-11-24T02:30:00Z"),
            ("0 9 * * mon-fri", "2026-11-27T10:00:00Z", "2026-11-30T09:00:00Z"),
            ("0 0 1 jan *", "2026-11-23T10:00:00Z", "2027-01-01T00:00:00Z"),
            ("@weekly", "2026-11-23T10:00:00Z", "2026-11-29T00:00:00Z"),
            ("0 0 * * 7", "2026-11-23T10:00:00Z", "2026-11-29T00:00:00Z"),
            ("5,10 1-2 * * *", "2026-11-23T01:07:00Z", "2026-11-23T01:10:00Z"),
            ("0 12 13 * fri", "2026-11-23T10:00:00Z", "2026-11-27T12:00:00Z"),
            ("0 0 29 2 *", "2026-11-23T10:00:00Z", "2028-02-29T00:00:00Z"),
            ("10/20 * * * *", "2026-11-23T10:31:00Z", "2026-11-23T10:50:00Z"),
        ];
        for (spec, after, want) in cases {
            let schedule = Schedule::parse(spec).unwrap();
            assert_eq!(schedule.next_after(at(after), &utc), Some(at(want)), "{spec} after {after}");
        }
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let schedule = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(schedule.next_after(at("2026-11-23T10:00:00Z"), &berlin), Some(at("2026-11-24T08:00:00Z")));
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        for (spec, says) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("*/0 * * * *", "positive"),
            ("@sometimes", "descriptor"),
            ("a * * * *", "not a number"),
        ] {
            let error = Schedule::parse(spec).unwrap_err();
            assert!(error.contains(says), "{spec}: {error}");
        }
    }
}
