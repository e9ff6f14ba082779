//! Cron schedules with PicoFlow's numbering and time-zone rules (SCHED-001 to SCHED-005).
//!
//! The `cron` crate does the calendar arithmetic; this module adapts its input and output:
//!
//! * **Fields.** The documented 6-field form `sec min hour day-of-month month day-of-week`
//!   and the classic 5-field form (seconds are then `0`). Anything else is refused.
//! * **Day of week.** `0`-`6` from Sunday, `7` also Sunday, names `SUN`..`SAT`, ranges, lists
//!   and steps. The crate counts `1`-`7` from Sunday, so the field is expanded here into an
//!   explicit list in the crate's numbering.
//! * **Time zones.** The system's local zone (`TZ`, else `/etc/localtime`) unless the workflow
//!   names an IANA zone (`timezone: Europe/Berlin`), read from the system's zoneinfo database.
//! * **Daylight saving.** Fire times are computed on the wall clock of the zone, then placed on
//!   the time line:
//!   - a wall time that does not exist (spring forward, e.g. 02:30 in Europe/Berlin on the last
//!     Sunday of March) fires at the first instant after the jump (03:00), once — unless the
//!     schedule fires every hour, in which case the missing times are simply skipped;
//!   - a wall time that happens twice (fall back, 02:30 on the last Sunday of October) fires
//!     once, at its first occurrence — unless the schedule fires every hour, in which case it
//!     fires in both passes so that "every 10 minutes" really keeps its rhythm.
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use cron::TimeUnitSpec;

/// A parsed schedule bound to its time zone.
#[derive(Clone)]
pub struct Schedule {
    expression: String,
    inner: cron::Schedule,
    tz: Arc<tzfile::Tz>,
    tz_name: String,
    every_hour: bool,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expression)
            .field("timezone", &self.tz_name)
            .finish()
    }
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Schedule {
    /// Parses a 5- or 6-field cron expression in the named IANA time zone, or in the
    /// system's local zone when `timezone` is `None`.
    ///
    /// ```
    /// use picoflow_lib::Schedule;
    /// let s = Schedule::parse("0 9 * * 1", Some("UTC")).unwrap(); // Mondays 09:00
    /// let start = "2026-11-25T00:00:00Z".parse().unwrap();        // a Wednesday
    /// let next = s.next_after(start).unwrap();
    /// assert_eq!(next.to_rfc3339(), "2026-11-30T09:00:00+00:00");
    /// ```
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "expected 5 or 6 fields (sec min hour day month weekday), found {n}"
                ))
            }
        };
        for ((field, text), (lo, hi)) in ["second", "minute", "hour", "day of month", "month"]
            .into_iter()
            .zip([sec, rest[0], rest[1], rest[2], rest[3]])
            .zip([(0, 59), (0, 59), (0, 23), (1, 31), (1, 12)])
        {
            check_range(field, text, lo, hi)?;
        }
        let dow = translate_day_of_week(rest[4])?;
        let crate_expr = format!(
            "{sec} {} {} {} {} {dow}",
            rest[0], rest[1], rest[2], rest[3]
        );
        let inner = cron::Schedule::from_str(&crate_expr).map_err(|e| e.to_string())?;
        if inner.after(&Utc::now()).next().is_none() {
            return Err(format!(
                "never fires: no date has day of month '{}' in month '{}'",
                rest[2], rest[3]
            ));
        }
        let (tz, tz_name) = load_zone(timezone)?;
        let every_hour = inner.hours().count() == 24;
        Ok(Schedule {
            expression: expression.trim().to_string(),
            inner,
            tz: Arc::new(tz),
            tz_name,
            every_hour,
        })
    }

    /// The expression as written in the workflow.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone fire times are computed in: the IANA name, or `local (<name>)`.
    pub fn timezone_name(&self) -> String {
        self.tz_name.clone()
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zone = &*self.tz;
        // Wall-clock candidates normally start at `after`'s wall time. Near a change of UTC
        // offset the wall clock is not monotonic (a repeated hour), so they start two hours
        // earlier there and the `> after` test below drops what already passed.
        let offset_at = |t: DateTime<Utc>| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
        let window = chrono::Duration::hours(3);
        let here = offset_at(after);
        let mut wall = after.with_timezone(&zone).naive_local();
        if offset_at(after - window) != here || offset_at(after + window) != here {
            wall -= chrono::Duration::hours(2);
        }
        let start = Utc.from_utc_datetime(&wall);
        for candidate in self.inner.after(&start).take(100_000) {
            let naive = candidate.naive_utc();
            for instant in self.place(naive) {
                if instant > after {
                    return Some(instant);
                }
            }
        }
        None
    }

    /// Maps one wall-clock fire time to the instants it fires at (see the module docs).
    fn place(&self, naive: NaiveDateTime) -> Vec<DateTime<Utc>> {
        let zone = &*self.tz;
        match zone.from_local_datetime(&naive) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) => {
                if self.every_hour {
                    vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
                } else {
                    vec![first.with_timezone(&Utc)]
                }
            }
            LocalResult::None => {
                if self.every_hour {
                    return Vec::new();
                }
                // Walk forward minute by minute to the end of the gap (gaps are at most a
                // few hours), then fire at the first existing wall time.
                let mut probe = naive;
                for _ in 0..(24 * 60) {
                    probe += chrono::Duration::minutes(1);
                    let floor = probe
                        .date()
                        .and_hms_opt(
                            chrono::Timelike::hour(&probe),
                            chrono::Timelike::minute(&probe),
                            0,
                        )
                        .unwrap_or(probe);
                    if let Some(t) = zone.from_local_datetime(&floor).earliest() {
                        return vec![t.with_timezone(&Utc)];
                    }
                }
                Vec::new()
            }
        }
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.upcoming_delayed(after, n, Duration::ZERO)
    }

    /// The first fire strictly after `after` when every fire is delayed by `delay` (a
    /// workflow's jitter on this host, [`Workflow::fire_delay`](crate::Workflow::fire_delay)):
    /// the time the daemon starts the run.
    pub fn next_after_delayed(
        &self,
        after: DateTime<Utc>,
        delay: Duration,
    ) -> Option<DateTime<Utc>> {
        let off = chrono::Duration::from_std(delay).ok()?;
        self.next_after(after - off).map(|n| n + off)
    }

    /// The next `n` fires after `after`, each delayed by `delay`, as the daemon starts them
    /// (see [`Schedule::next_after_delayed`]).
    pub fn upcoming_delayed(
        &self,
        after: DateTime<Utc>,
        n: usize,
        delay: Duration,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after_delayed(t, delay) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// Fire times in `(from, to]`, at most `limit` of them — the latest ones — oldest first,
    /// and how many there were in all. Used to catch up on fires missed while the device was
    /// off.
    pub fn missed_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> (usize, Vec<DateTime<Utc>>) {
        let mut out = std::collections::VecDeque::new();
        let mut count = 0;
        let mut t = from;
        // Bounded walk: a per-second schedule after a month offline must not spin forever.
        for _ in 0..1_000_000 {
            match self.next_after(t) {
                Some(next) if next <= to => {
                    count += 1;
                    if limit > 0 {
                        if out.len() == limit {
                            out.pop_front();
                        }
                        out.push_back(next);
                    }
                    t = next;
                }
                _ => break,
            }
        }
        (count, out.into_iter().collect())
    }

    /// Formats an instant in the schedule's zone, e.g. `2026-03-29 03:00:00 CEST`.
    pub fn format_local(&self, t: DateTime<Utc>) -> String {
        let zone = &*self.tz;
        t.with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }
}

fn load_zone(timezone: Option<&str>) -> Result<(tzfile::Tz, String), String> {
    match timezone {
        Some(name) => {
            let bad = name.is_empty()
                || name.starts_with('/')
                || name.split('/').any(|p| p == ".." || p.is_empty());
            if bad {
                return Err(format!("unknown time zone '{name}'"));
            }
            tzfile::Tz::named(name)
                .map(|tz| (tz, name.to_string()))
                .map_err(|_| {
                    format!(
                        "unknown time zone '{name}' (expected an IANA name such as \
                         Europe/Berlin, found in /usr/share/zoneinfo)"
                    )
                })
        }
        None => {
            let tz = tzfile::Tz::local().unwrap_or_else(|_| tzfile::Tz::from(Utc));
            Ok((tz, format!("local ({})", local_zone_name())))
        }
    }
}

/// The name of the system's zone, as far as it can be told.
fn local_zone_name() -> String {
    if let Ok(tz) = std::env::var("TZ") {
        if !tz.is_empty() {
            return tz;
        }
    }
    if let Ok(target) = std::fs::read_link("/etc/localtime") {
        let s = target.display().to_string();
        if let Some(i) = s.find("zoneinfo/") {
            return s[i + "zoneinfo/".len()..].to_string();
        }
    }
    if let Ok(s) = std::fs::read_to_string("/etc/timezone") {
        let s = s.trim();
        if !s.is_empty() {
            return s.to_string();
        }
    }
    "UTC".to_string()
}

/// Rewrites a day-of-week field from PicoFlow's numbering (0-6 from Sunday, 7 = Sunday) to an
/// explicit list in the `cron` crate's numbering (1-7 from Sunday).
/// Checks the numbers of one cron field (`5`, `1-5`, `*/15`, `10-40/5`, lists of them)
/// against its range `lo`-`hi`, naming the field and the value as written; names (`JAN`)
/// and other forms are left to the cron parser.
fn check_range(field: &str, text: &str, lo: u32, hi: u32) -> Result<(), String> {
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if let Some(step) = step.filter(|s| s.bytes().all(|b| b.is_ascii_digit())) {
            if step.parse::<u32>().map_or(true, |n| n == 0) {
                return Err(format!("{field} '{text}': the step must be 1 or more"));
            }
        }
        for part in range.split('-') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            match part.parse::<u32>() {
                Ok(n) if (lo..=hi).contains(&n) => {}
                _ => {
                    return Err(format!(
                        "{field} '{text}': {part} is out of range {lo}-{hi}"
                    ))
                }
            }
        }
    }
    Ok(())
}

fn translate_day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("day of week: invalid step '{s}'"))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (day_number(a)?, day_number(b)?)
        } else {
            let d = day_number(range)?;
            // `5/2` means "from Friday every second day", as in cron.
            (d, if item.contains('/') { 6 } else { d })
        };
        if lo > hi {
            return Err(format!(
                "day of week: range '{range}' runs backwards (use 0-6, Sunday = 0)"
            ));
        }
        let mut d = lo;
        while d <= hi {
            days[(d % 7) as usize] = true;
            d += step;
        }
    }
    let list: Vec<String> = (0..7)
        .filter(|d| days[*d])
        .map(|d| (d + 1).to_string())
        .collect();
    Ok(list.join(","))
}

fn day_number(token: &str) -> Result<u32, String> {
    if let Ok(n) = token.parse::<u32>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!(
                "day of week {n} is out of range 0-7 (Sunday = 0 or 7)"
            ))
        };
    }
    let upper = token.to_ascii_uppercase();
    DAY_NAMES
        .iter()
        .position(|n| *n == upper || (upper.len() > 3 && upper.starts_with(n)))
        .map(|p| p as u32)
        .ok_or_else(|| format!("day of week: '{token}' is not a day (0-7 or SUN..SAT)"))
}

/// Parses a duration such as `30`, `30s`, `5m`, `2h` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "invalid duration '{text}' (use e.g. 30s, 5m, 1h30m)"
                ))
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration '{text}' (use e.g. 30s, 5m, 1h30m)"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "invalid duration '{text}': a number needs a unit (s, m, h, d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// This machine's host name (used to spread jitter across a fleet).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A fixed delay in `[0, jitter)` for one workflow on one host: the same on every start (so a
/// device's runs stay evenly spaced), different across hosts (so a fleet does not hit a
/// server at the same second).
pub fn jitter_offset(host: &str, workflow: &str, jitter: Duration) -> Duration {
    let secs = jitter.as_secs();
    if secs == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across builds and platforms, unlike std's RandomState.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain([0u8]).chain(workflow.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_secs(h % secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_weekday_number_matches_its_day() {
        let days = [
            Weekday::Sun,
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        for (n, day) in days.iter().enumerate() {
            for expr in [format!("0 0 9 * * {n}"), format!("0 9 * * {n}")] {
                let s = Schedule::parse(&expr, Some("UTC")).unwrap();
                let fires = s.upcoming(utc("2026-11-25T10:00:00Z"), 3);
                assert_eq!(fires.len(), 3, "{expr}");
                for f in fires {
                    assert_eq!(f.weekday(), *day, "{expr} fired on {f}");
                    assert_eq!((f.hour(), f.minute(), f.second()), (9, 0, 0));
                }
            }
        }
    }

    #[test]
    fn monday_fires_on_a_monday() {
        let s = Schedule::parse("0 0 9 * * 1", Some("UTC")).unwrap();
        let next = s.next_after(utc("2026-11-25T00:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-30T09:00:00Z"));
        assert_eq!(next.weekday(), Weekday::Mon);
    }

    #[test]
    fn names_ranges_lists_and_steps() {
        let cases: [(&str, &[Weekday]); 7] = [
            (
                "MON-FRI",
                &[
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
            ),
            (
                "1-5",
                &[
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
            ),
            ("0,6", &[Weekday::Sun, Weekday::Sat]),
            ("sat,sun", &[Weekday::Sun, Weekday::Sat]),
            ("5-7", &[Weekday::Sun, Weekday::Fri, Weekday::Sat]),
            (
                "*/2",
                &[Weekday::Sun, Weekday::Tue, Weekday::Thu, Weekday::Sat],
            ),
            ("1-5/2", &[Weekday::Mon, Weekday::Wed, Weekday::Fri]),
        ];
        for (dow, want) in cases {
            let s = Schedule::parse(&format!("0 12 * * {dow}"), Some("UTC")).unwrap();
            let mut got: Vec<Weekday> = s
                .upcoming(utc("2026-11-22T13:00:00Z"), 14)
                .into_iter()
                .map(|t| t.weekday())
                .collect();
            got.sort_by_key(|d| d.num_days_from_sunday());
            got.dedup();
            assert_eq!(got, want, "{dow}");
        }
    }

    #[test]
    fn month_names_and_five_fields() {
        let s = Schedule::parse("30 2 1 JAN *", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-25T00:00:00Z")).unwrap(),
            utc("2027-01-01T02:30:00Z")
        );
        let s = Schedule::parse("*/15 * * * * *", Some("UTC")).unwrap();
        assert_eq!(
            s.upcoming(utc("2026-11-25T00:00:01Z"), 2),
            vec![utc("2026-11-25T00:00:15Z"), utc("2026-11-25T00:00:30Z")]
        );
    }

    #[test]
    fn bad_expressions_are_explained() {
        let e = Schedule::parse("0 0 9 * * 8", None).unwrap_err();
        assert!(e.contains("out of range 0-7"), "{e}");
        let e = Schedule::parse("0 2 * *", None).unwrap_err();
        assert!(e.contains("5 or 6 fields"), "{e}");
        // Each field's range as cron writes it, with the value as the user wrote it.
        for (expr, says) in [
            ("61 * * * *", "minute '61': 61 is out of range 0-59"),
            ("0 24 * * *", "hour '24': 24 is out of range 0-23"),
            ("0 0 32 * *", "day of month '32': 32 is out of range 1-31"),
            ("0 0 0 * *", "day of month '0': 0 is out of range 1-31"),
            ("0 0 1 13 *", "month '13': 13 is out of range 1-12"),
            ("60 0 0 * * *", "second '60': 60 is out of range 0-59"),
            ("1,2,75 * * * *", "minute '1,2,75': 75 is out of range 0-59"),
            ("5-61 * * * *", "minute '5-61': 61 is out of range 0-59"),
            ("*/0 * * * *", "minute '*/0': the step must be 1 or more"),
        ] {
            let e = Schedule::parse(expr, Some("UTC")).unwrap_err();
            assert_eq!(e, says, "{expr}");
        }
        for ok in ["59 23 31 12 *", "0 0 1 JAN *", "0 0 29 2 *"] {
            assert!(Schedule::parse(ok, Some("UTC")).is_ok(), "{ok}");
        }
        let e = Schedule::parse("0 0 31 2 *", Some("UTC")).unwrap_err();
        assert!(e.contains("never fires"), "{e}");
        assert!(Schedule::parse("0 0 25 * * *", None).is_err());
        assert!(Schedule::parse("0 0 9 * * FOO", None).is_err());
        assert!(Schedule::parse("0 0 9 * * 5-1", None).is_err());
        let e = Schedule::parse("0 0 2 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("unknown time zone 'Mars/Olympus'"), "{e}");
        assert!(Schedule::parse("0 0 2 * * *", Some("../../etc/passwd")).is_err());
    }

    #[test]
    fn time_zone_is_applied() {
        let s = Schedule::parse("0 30 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:30 CET is 01:30 UTC in winter.
        assert_eq!(
            s.next_after(utc("2026-11-25T00:00:00Z")).unwrap(),
            utc("2026-11-25T01:30:00Z")
        );
        assert_eq!(
            s.format_local(utc("2026-11-25T01:30:00Z")),
            "2026-11-25 02:30:00 CET"
        );
        assert_eq!(s.timezone_name(), "Europe/Berlin");
    }

    #[test]
    fn spring_forward_fires_once_right_after_the_jump() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let s = Schedule::parse("0 30 2 * * *", Some("Europe/Berlin")).unwrap();
        let fires = s.upcoming(utc("2026-03-28T12:00:00Z"), 3);
        assert_eq!(
            fires,
            vec![
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the first instant after the gap
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
                utc("2026-03-31T00:30:00Z"),
            ]
        );
        // An hourly schedule skips the hour that does not exist.
        let hourly = Schedule::parse("0 30 * * * *", Some("Europe/Berlin")).unwrap();
        let fires = hourly.upcoming(utc("2026-03-29T00:00:00Z"), 3);
        assert_eq!(
            fires,
            vec![
                utc("2026-03-29T00:30:00Z"), // 01:30 CET
                utc("2026-03-29T01:30:00Z"), // 03:30 CEST
                utc("2026-03-29T02:30:00Z"),
            ]
        );
    }

    #[test]
    fn fall_back_fires_once_at_the_first_pass() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        let s = Schedule::parse("0 30 2 * * *", Some("Europe/Berlin")).unwrap();
        let fires = s.upcoming(utc("2026-10-24T12:00:00Z"), 2);
        assert_eq!(
            fires,
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
        // Starting inside the second pass does not fire again.
        assert_eq!(
            s.next_after(utc("2026-10-25T01:10:00Z")).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
        // An hourly schedule keeps its rhythm through the repeated hour.
        let hourly = Schedule::parse("0 30 * * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            hourly.upcoming(utc("2026-10-24T23:45:00Z"), 3),
            vec![
                utc("2026-10-25T00:30:00Z"), // 02:30 CEST
                utc("2026-10-25T01:30:00Z"), // 02:30 CET
                utc("2026-10-25T02:30:00Z"), // 03:30 CET
            ]
        );
    }

    #[test]
    fn missed_fires_keep_the_latest() {
        let s = Schedule::parse("0 * * * *", Some("UTC")).unwrap();
        let from = utc("2026-11-25T00:30:00Z");
        let to = utc("2026-11-25T05:10:00Z");
        assert_eq!(s.missed_between(from, to, 100).1.len(), 5);
        assert_eq!(
            s.missed_between(from, to, 2),
            (
                5,
                vec![utc("2026-11-25T04:00:00Z"), utc("2026-11-25T05:00:00Z")]
            )
        );
        assert_eq!(s.missed_between(from, to, 0), (5, vec![]));
        assert_eq!(s.missed_between(to, to, 10), (0, vec![]));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("1h5").is_err());
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let j = Duration::from_secs(30);
        let a = jitter_offset("pi-1", "backup", j);
        assert_eq!(a, jitter_offset("pi-1", "backup", j));
        assert!(a < j);
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|i| jitter_offset(&format!("pi-{i}"), "backup", j))
            .collect();
        assert!(spread.len() > 5, "hosts should spread: {spread:?}");
        assert_eq!(jitter_offset("h", "w", Duration::ZERO), Duration::ZERO);
    }
}
