//! Temporary schedule shim (replaced by the full cron module).
use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule;

impl Schedule {
    /// Parses a cron expression.
    pub fn parse(expr: &str, _tz: Option<&str>) -> Result<Schedule, String> {
        let n = expr.split_whitespace().count();
        if n == 5 || n == 6 {
            Ok(Schedule)
        } else {
            Err(format!("expected 5 or 6 fields, found {n}"))
        }
    }
}

/// Parses "30s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

impl Schedule {
    /// Time zone name.
    pub fn timezone_name(&self) -> String {
        "local".into()
    }
    /// Next fires.
    pub fn upcoming(
        &self,
        _after: chrono::DateTime<chrono::Utc>,
        _n: usize,
    ) -> Vec<chrono::DateTime<chrono::Utc>> {
        Vec::new()
    }
    /// Formats a time.
    pub fn format_local(&self, t: chrono::DateTime<chrono::Utc>) -> String {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}
