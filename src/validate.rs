//! Parsing and validation of values that come from people: durations, names, priorities.
//! Each returns a message that says what is wrong and what would be right.

use std::time::Duration;

/// Longest worker name; names become systemd instance names and LISTEN payloads.
pub const WORKER_NAME_MAX: usize = 64;

/// Parses a duration such as `30s`, `5m`, `1h30m`, `250ms`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    humantime::parse_duration(t).map_err(|_| {
        format!(
            "'{s}' is not a duration: write a number and a unit, e.g. 250ms, 30s, 5m, 1h30m, 7d"
        )
    })
}

/// Parses a duration that must be longer than zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "'{s}' is zero: give a duration longer than 0, e.g. 30s"
        ));
    }
    Ok(d)
}

/// A parser (for clap) of a duration between `min` and `max` inclusive, both written as
/// durations (`"100ms"`, `"5m"`): the option's documented range. A value outside it is
/// refused with the range in the message.
pub fn duration_in(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        // Invariant: the bounds are literals of this crate's option definitions, parsed
        // by every CLI test that builds the options (an invalid one fails them all).
        let lo = parse_duration(min).expect("a valid lower bound");
        let hi = parse_duration(max).expect("a valid upper bound");
        let d = if lo.is_zero() {
            parse_duration(s)?
        } else {
            parse_positive_duration(s)?
        };
        if d < lo || d > hi {
            return Err(format!("'{s}' is out of range: give {min} to {max}"));
        }
        Ok(d)
    }
}

/// A parser (for clap) of a whole number between `min` and `max` inclusive: the option's
/// documented range. A value outside it (or one that does not fit `T`) is refused with
/// the range in the message.
pub fn count_in<T>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64>,
{
    move |s: &str| {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number: give {min} to {max}"))?;
        if n < min || n > max {
            return Err(format!("{n} is out of range: give {min} to {max}"));
        }
        T::try_from(n).map_err(|_| format!("{n} is out of range: give {min} to {max}"))
    }
}

/// Like [`count_in`] for sizes in bytes, which may carry a unit (see [`parse_bytes`]).
pub fn bytes_in(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let n = parse_bytes(s)?;
        if n < min || n > max {
            return Err(format!("'{s}' is out of range: give {min} to {max} bytes"));
        }
        usize::try_from(n).map_err(|_| format!("'{s}' is too large"))
    }
}

/// Parses a priority: a non-negative integer, lower is more urgent.
pub fn parse_priority(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n < 0 => Err(format!(
            "priority {n} is negative: use 0 or more (lower is more urgent, default 5)"
        )),
        Ok(n) if n > i64::from(i32::MAX) => Err(format!("priority {n} is too large")),
        Ok(n) => Ok(n as i32),
        Err(_) => Err(format!(
            "priority '{s}' is not a number: use a non-negative integer (lower is more urgent, default 5)"
        )),
    }
}

/// Parses a count that must be at least 1 (max attempts, capacity).
pub fn parse_at_least_one(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(n as i32),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

/// Most attempts a task may have.
pub const MAX_ATTEMPTS: i32 = 1000;

/// Parses a task's attempt budget: 1 to [`MAX_ATTEMPTS`].
pub fn parse_max_attempts(s: &str) -> Result<i32, String> {
    let n = parse_at_least_one(s)?;
    if n > MAX_ATTEMPTS {
        return Err(format!(
            "max attempts {n} is out of range: give 1 to {MAX_ATTEMPTS}"
        ));
    }
    Ok(n)
}

/// Checks a worker name: letters, digits, `_`, `.`, `-`, 1 to 64 characters. The same rule
/// is a CHECK constraint on `jr_status.jr_name`.
/// A PostgreSQL role name as jrq takes one (an approval group): not empty, at most 63
/// bytes (longer names are cut by the server), no NUL or control character.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let shown = crate::text::for_terminal(name, false);
    if name.is_empty() {
        return Err("the role name is empty: give a database role".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "role name '{shown}' is {} bytes long: PostgreSQL's names have at most 63",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "role name '{shown}' contains a space or a control character: give a database role"
        ));
    }
    Ok(())
}

/// `--after 12,15`: task ids, comma-separated.
pub fn parse_task_ids(s: &str) -> Result<Vec<i64>, String> {
    let mut ids = vec![];
    for part in s.split(',') {
        match part.trim().parse::<i64>() {
            Ok(n) if n > 0 => ids.push(n),
            _ => {
                return Err(format!(
                    "'{}' is not a task id: give positive task ids separated by commas \
                     (e.g. 12,15)",
                    crate::text::for_terminal(part.trim(), false)
                ))
            }
        }
    }
    Ok(ids)
}

pub fn check_worker_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("worker name is empty: use letters, digits, '_', '.', '-'".into());
    }
    // The name is shown as given, control characters escaped: it may be anything.
    let shown = crate::text::for_terminal(name, false);
    if name.len() > WORKER_NAME_MAX {
        return Err(format!(
            "worker name '{shown}' is {} characters long: at most {WORKER_NAME_MAX} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "worker name '{shown}' contains {c:?}: use only letters, digits, '_', '.', '-'"
        ));
    }
    // "." and ".." are path segments in every URL and path they would be part of.
    if name.chars().all(|c| c == '.') {
        return Err(format!(
            "worker name '{shown}' is only dots: give it a letter or a digit"
        ));
    }
    Ok(())
}

/// Parses a worker name (for clap).
pub fn parse_worker_name(s: &str) -> Result<String, String> {
    check_worker_name(s)?;
    Ok(s.to_string())
}

/// Parses a provider name (trimmed): no commas or control characters, at most 200 bytes.
pub fn parse_provider(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.len() > 200 || t.contains(',') || t.chars().any(char::is_control) {
        return Err(format!(
            "'{}' is not a provider name: give a name without commas or control characters \
             (at most 200 bytes), as tasks and workers use it",
            crate::text::for_terminal(s, false)
        ));
    }
    Ok(t.to_string())
}

/// Parses a JSON document (a task payload).
pub fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("payload is not valid JSON ({e})"))
}

/// Parses a run id (a UUID).
pub fn parse_run_id(s: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim())
        .map_err(|_| format!("'{s}' is not a run id: run ids are UUIDs (see `jrq runs list`)"))
}

/// Parses an RFC 3339 timestamp such as `2026-11-23T18:00:00Z`.
pub fn parse_timestamp(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| format!("'{s}' is not a timestamp: use RFC 3339, e.g. 2026-11-23T18:00:00Z"))
}

/// Parses a size in bytes: a whole number, optionally with a unit (B, KB, MB, GB — powers
/// of 1000 — or KiB, MiB, GiB — powers of 1024), e.g. `1MiB`, `64KiB`, `2000000`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}' is not a size: use e.g. 2000000, 64KiB, 1MiB"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("'{s}' is not a size: use e.g. 2000000, 64KiB, 1MiB"))
}

/// Most dollars a budget may hold.
pub const MAX_USD: f64 = 1e9;

/// An amount of US dollars (`5`, `0.50`, `$20`), from 0 to [`MAX_USD`].
pub fn parse_usd(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v: f64 = t
        .strip_prefix('$')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an amount of dollars: give e.g. 5 or 0.50"))?;
    if !v.is_finite() || !(0.0..=MAX_USD).contains(&v) {
        return Err(format!("'{s}' is out of range: give 0 to {MAX_USD}"));
    }
    Ok(v)
}

/// A duration as a person reads it: whole seconds above a minute, milliseconds below one
/// second.
pub fn format_duration(d: Duration) -> String {
    let d = if d >= Duration::from_secs(60) {
        Duration::from_secs(d.as_secs())
    } else if d >= Duration::from_secs(1) {
        Duration::from_millis(d.as_millis() as u64 / 100 * 100)
    } else if d >= Duration::from_millis(1) {
        Duration::from_millis(d.as_millis() as u64)
    } else {
        // Below a millisecond, say what it is rather than "0s".
        Duration::from_micros(d.as_micros() as u64)
    };
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("30").unwrap_err().contains("not a duration"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn priorities() {
        assert_eq!(parse_priority("0").unwrap(), 0);
        assert_eq!(parse_priority("7").unwrap(), 7);
        assert!(parse_priority("-1").unwrap_err().contains("negative"));
        assert!(parse_priority("high").unwrap_err().contains("not a number"));
    }

    #[test]
    fn worker_names() {
        assert!(check_worker_name("it_triad_jr").is_ok());
        assert!(check_worker_name("a.b-c_9").is_ok());
        assert!(check_worker_name(&"x".repeat(64)).is_ok());
        assert!(check_worker_name(&"x".repeat(65)).is_err());
        assert!(check_worker_name("").is_err());
        assert!(check_worker_name("bad name").unwrap_err().contains("' '"));
        assert!(check_worker_name("a;drop").is_err());
        assert!(check_worker_name("é").is_err());
        assert!(!check_worker_name("a\x1b]0;x\x07")
            .unwrap_err()
            .contains('\x1b'));
    }

    #[test]
    fn ranges() {
        let d = duration_in("100ms", "5m");
        assert_eq!(d("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(d("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(d("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            d("1000000000y").unwrap_err(),
            "'1000000000y' is out of range: give 100ms to 5m"
        );
        assert!(d("50ms").is_err());
        assert!(d("soon").unwrap_err().contains("not a duration"));
        let c = count_in::<u32>(0, 10_000);
        assert_eq!(c("10000").unwrap(), 10_000);
        assert_eq!(
            c("4294967295").unwrap_err(),
            "4294967295 is out of range: give 0 to 10000"
        );
        assert!(c("-1").unwrap_err().contains("not a whole number"));
        assert!(
            count_in::<i32>(1, u64::MAX)("4294967296").is_err(),
            "must fit the type"
        );
        assert_eq!(bytes_in(1, 1 << 24)("64KiB").unwrap(), 65536);
        assert!(bytes_in(1, 1 << 24)("0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("2000000").unwrap(), 2_000_000);
        assert_eq!(parse_bytes("1 kb").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1s 200ms");
        assert_eq!(format_duration(Duration::from_millis(61_500)), "1m 1s");
        assert_eq!(format_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(format_duration(Duration::from_micros(100)), "100us");
    }
}
