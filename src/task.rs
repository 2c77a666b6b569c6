//! The task state machine and validated input for new tasks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate;

/// Default priority of a new task (lower is more urgent). Same as the column default.
pub const DEFAULT_PRIORITY: i32 = 5;
/// Default attempts before a task fails for good. Same as the column default.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Default time one attempt may run. Same as the column default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Shortest timeout: 1 ms (the table stores milliseconds; a CHECK constraint holds it).
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest timeout: 365 days (a CHECK constraint on the table holds it too).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shortest idle timeout: 1 second.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest idle timeout: 30 days.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest delay before a new task may start: 10 years.
pub const MAX_DELAY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Longest unique key, in bytes (an index entry must stay well under PostgreSQL's limit).
pub const MAX_UNIQUE_KEY_BYTES: usize = 1024;
/// Most dependencies one task may have.
pub const MAX_DEPENDENCIES: usize = 1000;
/// Default largest payload `jrq enqueue` accepts, in bytes of JSON: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Where a task is in its life. Enforced by a CHECK constraint on `jr_work_queue.status`.
///
/// ```text
/// waiting (dependencies) -> awaiting_approval (a gate) -> pending
/// pending -> assigned -> in_progress -> completed | failed | pending (retry)
/// waiting | awaiting_approval | pending | assigned -> cancelled;
/// in_progress -> cancelled (via the worker)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Dependencies that have not all completed (migrations/V15).
    Waiting,
    /// A person's `jrq approve` is needed before it may run (migrations/V15).
    AwaitingApproval,
    Pending,
    Assigned,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    /// Every status, in the order of a task's life.
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Waiting,
        TaskStatus::AwaitingApproval,
        TaskStatus::Pending,
        TaskStatus::Assigned,
        TaskStatus::InProgress,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::AwaitingApproval => "awaiting_approval",
            TaskStatus::Pending => "pending",
            TaskStatus::Assigned => "assigned",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Completed, failed and cancelled tasks never change again (but `jrq retry`).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "'{s}' is not a task status: use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The status of a run. Terminal runs end the workers started for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Active,
    Completed,
    Error,
    Archived,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 4] = [
        RunStatus::Active,
        RunStatus::Completed,
        RunStatus::Error,
        RunStatus::Archived,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Active => "active",
            RunStatus::Completed => "completed",
            RunStatus::Error => "error",
            RunStatus::Archived => "archived",
        }
    }

    /// Completed, error and archived runs are over: their workers exit.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Active)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("'{s}' is not a run status: use one of active, completed, error, archived")
            })
    }
}

/// When a new task becomes eligible for assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunAfter {
    /// At once.
    #[default]
    Now,
    /// After a delay from the moment of insertion (database clock).
    Delay(Duration),
    /// At a given time.
    At(DateTime<Utc>),
}

/// A validated new task. Build one with [`NewTask::new`] or [`NewTask::from_json_line`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub title: String,
    pub description: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub urgent: bool,
    pub provider: String,
    /// May go to a fallback provider's workers while its own provider is paused (also
    /// when the payload says "fallback": true, migrations/V10).
    pub fallback_ok: bool,
    pub target: Option<String>,
    pub run_id: Option<Uuid>,
    pub max_attempts: i32,
    pub timeout: Duration,
    /// An attempt silent this long ends (retryable); `None`: the worker's default.
    pub idle_timeout: Option<Duration>,
    /// The task's budget in US dollars: an attempt that reaches it ends "over budget".
    pub max_cost_usd: Option<f64>,
    pub run_after: RunAfter,
    pub unique_key: Option<String>,
    pub source: String,
    pub created_by: String,
    /// Tasks (by id) that must complete before this one may run.
    pub after: Vec<i64>,
    /// In a batch: earlier lines (by their `key`) that must complete first.
    pub after_keys: Vec<String>,
    /// In a batch: the name later lines give in their `after`.
    pub key: Option<String>,
    /// The approval gate: `None` none; `Some("")` anyone who may approve; else the
    /// database role whose members may.
    pub approve_by: Option<String>,
}

impl NewTask {
    /// A task with the given title and every other field at its default.
    pub fn new(title: impl Into<String>) -> Self {
        NewTask {
            title: title.into(),
            description: String::new(),
            payload: serde_json::json!({}),
            priority: DEFAULT_PRIORITY,
            urgent: false,
            provider: String::new(),
            fallback_ok: false,
            target: None,
            run_id: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            idle_timeout: None,
            max_cost_usd: None,
            run_after: RunAfter::Now,
            unique_key: None,
            source: "jrq".into(),
            created_by: default_created_by(),
            after: vec![],
            after_keys: vec![],
            key: None,
            approve_by: None,
        }
    }

    /// Checks the rules the database would otherwise enforce, with a clearer message.
    pub fn validate(&self) -> Result<(), String> {
        if self.title.trim().is_empty() {
            return Err("title is empty: every task needs a title".into());
        }
        if self.priority < 0 {
            return Err(format!(
                "priority {} is negative: use 0 or more",
                self.priority
            ));
        }
        if self.max_attempts > validate::MAX_ATTEMPTS {
            return Err(format!(
                "max_attempts {} is out of range: give 1 to {}",
                self.max_attempts,
                validate::MAX_ATTEMPTS
            ));
        }
        if self.max_attempts < 1 {
            return Err(format!(
                "max_attempts {} is less than 1: a task needs at least one attempt",
                self.max_attempts
            ));
        }
        if self.timeout.is_zero() {
            return Err("timeout is zero: give a duration longer than 0, e.g. 30s".into());
        }
        if let Some(d) = self.idle_timeout {
            if !(MIN_IDLE_TIMEOUT..=MAX_IDLE_TIMEOUT).contains(&d) {
                return Err(format!(
                    "idle_timeout {} is out of range: give 1s to 30d",
                    validate::format_duration(d)
                ));
            }
        }
        if let Some(c) = self.max_cost_usd {
            if !c.is_finite() || !(0.0..=validate::MAX_USD).contains(&c) {
                return Err(format!(
                    "max_cost_usd {c} is out of range: give 0 to {}",
                    validate::MAX_USD
                ));
            }
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.timeout) {
            return Err(format!(
                "timeout {} is out of range: give 1ms to 365d",
                validate::format_duration(self.timeout)
            ));
        }
        if let RunAfter::Delay(d) = self.run_after {
            if d > MAX_DELAY {
                return Err(format!(
                    "delay {} is too long: at most 3650d (10 years)",
                    validate::format_duration(d)
                ));
            }
        }
        if let Some(t) = &self.target {
            validate::check_worker_name(t)?;
        }
        if let Some(k) = &self.unique_key {
            if k.is_empty() {
                return Err("unique_key is empty: leave it out or give a non-empty key".into());
            }
            if k.len() > MAX_UNIQUE_KEY_BYTES {
                return Err(format!(
                    "unique_key is {} bytes long: at most {MAX_UNIQUE_KEY_BYTES} are allowed",
                    k.len()
                ));
            }
        }
        if let Some(id) = self.after.iter().find(|id| **id < 1) {
            return Err(format!("after: {id} is not a task id"));
        }
        if self.after.len() + self.after_keys.len() > MAX_DEPENDENCIES {
            return Err(format!(
                "after names {} tasks: at most {MAX_DEPENDENCIES} dependencies per task",
                self.after.len() + self.after_keys.len()
            ));
        }
        if let Some(r) = self.approve_by.as_deref().filter(|r| !r.is_empty()) {
            validate::check_role_name(r).map_err(|e| format!("approve_by: {e}"))?;
        }
        // PostgreSQL stores no NUL character in text or jsonb.
        let texts = [
            ("title", Some(&self.title)),
            ("description", Some(&self.description)),
            ("provider", Some(&self.provider)),
            ("unique_key", self.unique_key.as_ref()),
            ("key", self.key.as_ref()),
            ("source", Some(&self.source)),
            ("created_by", Some(&self.created_by)),
        ];
        for (field, text) in texts {
            if text.is_some_and(|t| t.contains('\0')) {
                return Err(format!(
                    "{field} contains a NUL character (\\u0000), which PostgreSQL cannot store"
                ));
            }
        }
        if json_has_nul(&self.payload) {
            return Err(
                "payload contains a NUL character (\\u0000) in a string or key, which \
                 PostgreSQL cannot store"
                    .into(),
            );
        }
        Ok(())
    }

    /// The task as a stored template, enqueued later by the database (a run's callback)
    /// or a daemon (a schedule's tick): the columns of `jr_work_queue` with every default
    /// resolved, as `jrq_tasks_from_template` (migrations/V16) reads them. `what` names
    /// the template in the refusals ("--on-complete"). A template has no dependencies,
    /// no unique key (a callback is enqueued once; a schedule's tasks get one per tick)
    /// and no fixed start time (a delay instead); its payload is an object, since the
    /// enqueuer adds a key to it.
    pub fn to_template(&self, what: &str) -> Result<serde_json::Value, String> {
        if !self.after.is_empty() || !self.after_keys.is_empty() || self.key.is_some() {
            return Err(format!(
                "{what}: a stored task cannot depend on other tasks (after, key, \
                 --after): enqueue the chain from the task itself"
            ));
        }
        if self.unique_key.is_some() {
            return Err(format!(
                "{what}: a stored task cannot have a unique key (unique_key, \
                 --unique-key): jrq gives each tick its own and enqueues a callback once"
            ));
        }
        if !self.payload.is_object() {
            return Err(format!(
                "{what}: the payload must be a JSON object (jrq adds a key to it), not {}",
                self.payload
            ));
        }
        let delay_ms = match self.run_after {
            RunAfter::Now => 0,
            RunAfter::Delay(d) => d.as_millis() as i64,
            RunAfter::At(_) => {
                return Err(format!(
                    "{what}: a stored task cannot start at a fixed time (run_at, --run-at): \
                     give a delay instead"
                ))
            }
        };
        let interval = |d: Duration| format!("{} milliseconds", d.as_millis());
        Ok(serde_json::json!({
            "title": self.title,
            "description": self.description,
            "source": self.source,
            "created_by": self.created_by,
            "priority": self.priority,
            "sacred_fire_priority": self.urgent,
            "payload": self.payload,
            "provider": self.provider,
            "fallback_ok": self.fallback_ok,
            "target_jr": self.target,
            "run_id": self.run_id,
            "max_attempts": self.max_attempts,
            "timeout": interval(self.timeout),
            "idle_timeout": self.idle_timeout.map(interval),
            "max_cost_usd": self.max_cost_usd,
            "approve_by": self.approve_by,
            "delay_ms": delay_ms,
        }))
    }

    /// A template from a JSON task line (the `jrq enqueue --batch` format); `source` is
    /// the task's source unless the line gives one.
    pub fn template_from_json_line(
        line: &str,
        what: &str,
        source: &str,
    ) -> Result<(NewTask, serde_json::Value), String> {
        let mut t = NewTask::from_json_line(line).map_err(|e| format!("{what}: {e}"))?;
        let gave_source = serde_json::from_str::<serde_json::Value>(line)
            .map(|v| v.get("source").is_some())
            .unwrap_or(false);
        if !gave_source {
            t.source = source.to_string();
        }
        let template = t.to_template(what)?;
        Ok((t, template))
    }

    /// Checks the payload against a size limit (bytes of its JSON text).
    pub fn check_payload_size(&self, max_bytes: usize) -> Result<(), String> {
        let size = self.payload.to_string().len();
        if size > max_bytes {
            return Err(format!(
                "payload is {size} bytes of JSON: the limit is {max_bytes} (raise it with \
                 --max-payload, or keep large data elsewhere and pass a reference)"
            ));
        }
        Ok(())
    }

    /// Parses one line of `jrq enqueue --batch`: a JSON object whose fields are named like
    /// the `enqueue` options. Unknown fields are refused, so a typo does not pass silently.
    pub fn from_json_line(line: &str) -> Result<NewTask, String> {
        let spec: TaskSpec = serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            if e.is_syntax() || e.is_eof() {
                format!("not valid JSON ({msg})")
            } else {
                msg
            }
        })?;
        spec.into_task()
    }
}

fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// The user name recorded as `created_by` when none is given.
pub fn default_created_by() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "jrq".into())
}

/// A number or a string holding a number (JSON lines written by shell scripts often quote).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(i64),
    Text(String),
}

/// A duration as a string (`30s`) or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationSpec {
    Seconds(f64),
    Text(String),
}

impl DurationSpec {
    fn parse(&self, field: &str) -> Result<Duration, String> {
        match self {
            DurationSpec::Seconds(s) if *s >= 0.0 => Duration::try_from_secs_f64(*s)
                .map_err(|_| format!("{field} {s:?} is too long to be a duration")),
            DurationSpec::Seconds(s) => Err(format!("{field} {s:?} is not a duration")),
            DurationSpec::Text(t) => {
                validate::parse_duration(t).map_err(|e| format!("{field}: {e}"))
            }
        }
    }
}

/// One line of a batch, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSpec {
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    priority: Option<NumOrText>,
    #[serde(default)]
    urgent: Option<bool>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    fallback_ok: Option<bool>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    max_attempts: Option<NumOrText>,
    #[serde(default)]
    timeout: Option<DurationSpec>,
    #[serde(default)]
    idle_timeout: Option<DurationSpec>,
    #[serde(default)]
    max_cost_usd: Option<serde_json::Value>,
    #[serde(default)]
    delay: Option<DurationSpec>,
    #[serde(default)]
    run_at: Option<String>,
    #[serde(default)]
    unique_key: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    /// This line's name for the `after` of later lines.
    #[serde(default)]
    key: Option<String>,
    /// Task ids (numbers) or earlier lines' keys (strings), or one of them alone.
    #[serde(default)]
    after: Option<AfterSpec>,
    #[serde(default)]
    needs_approval: Option<bool>,
    #[serde(default)]
    approve_by: Option<String>,
}

/// `after`: one reference or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AfterSpec {
    One(DepRef),
    Many(Vec<DepRef>),
}

/// A dependency in a batch line: a task id, or the key of an earlier line.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DepRef {
    Id(i64),
    Key(String),
}

impl TaskSpec {
    fn into_task(self) -> Result<NewTask, String> {
        let title = self
            .title
            .ok_or_else(|| "missing \"title\": every task needs a title".to_string())?;
        let mut t = NewTask::new(title);
        if let Some(d) = self.description {
            t.description = d;
        }
        if let Some(p) = self.payload {
            t.payload = p;
        }
        if let Some(p) = self.priority {
            t.priority = match p {
                NumOrText::Num(n) => validate::parse_priority(&n.to_string())?,
                NumOrText::Text(s) => validate::parse_priority(&s)?,
            };
        }
        t.urgent = self.urgent.unwrap_or(false);
        if let Some(p) = self.provider {
            t.provider = p;
        }
        t.fallback_ok = self.fallback_ok.unwrap_or(false);
        t.target = self.target;
        if let Some(r) = self.run {
            t.run_id = Some(validate::parse_run_id(&r)?);
        }
        if let Some(m) = self.max_attempts {
            let s = match m {
                NumOrText::Num(n) => n.to_string(),
                NumOrText::Text(s) => s,
            };
            t.max_attempts =
                validate::parse_max_attempts(&s).map_err(|e| format!("max_attempts: {e}"))?;
        }
        if let Some(d) = self.timeout {
            t.timeout = d.parse("timeout")?;
        }
        if let Some(d) = self.idle_timeout {
            t.idle_timeout = Some(d.parse("idle_timeout")?);
        }
        if let Some(c) = self.max_cost_usd {
            let s = match c {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            t.max_cost_usd =
                Some(validate::parse_usd(&s).map_err(|e| format!("max_cost_usd: {e}"))?);
        }
        match (self.delay, self.run_at) {
            (Some(_), Some(_)) => {
                return Err("give either \"delay\" or \"run_at\", not both".into())
            }
            (Some(d), None) => t.run_after = RunAfter::Delay(d.parse("delay")?),
            (None, Some(at)) => t.run_after = RunAfter::At(validate::parse_timestamp(&at)?),
            (None, None) => {}
        }
        t.unique_key = self.unique_key;
        if let Some(s) = self.source {
            t.source = s;
        }
        if let Some(c) = self.created_by {
            t.created_by = c;
        }
        if let Some(k) = self.key {
            if k.is_empty() {
                return Err("key is empty: leave it out or give a name".into());
            }
            t.key = Some(k);
        }
        let refs = match self.after {
            None => vec![],
            Some(AfterSpec::One(r)) => vec![r],
            Some(AfterSpec::Many(v)) => v,
        };
        for r in refs {
            match r {
                DepRef::Id(id) => t.after.push(id),
                DepRef::Key(k) if k.is_empty() => {
                    return Err("after: an empty key names no line".into())
                }
                DepRef::Key(k) => t.after_keys.push(k),
            }
        }
        match (self.needs_approval, self.approve_by) {
            (_, Some(r)) => t.approve_by = Some(r),
            (Some(true), None) => t.approve_by = Some(String::new()),
            _ => {}
        }
        t.validate()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
        }
        let err = "done".parse::<TaskStatus>().unwrap_err();
        assert!(
            err.contains("waiting, awaiting_approval, pending, assigned"),
            "{err}"
        );
        assert!(TaskStatus::Cancelled.is_finished());
        assert!(!TaskStatus::InProgress.is_finished());
    }

    #[test]
    fn json_line_minimal() {
        let t = NewTask::from_json_line(r#"{"title":"x"}"#).unwrap();
        assert_eq!(t.title, "x");
        assert_eq!(t.priority, DEFAULT_PRIORITY);
        assert_eq!(t.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(t.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn json_line_full() {
        let t = NewTask::from_json_line(
            r#"{"title":"x","priority":"2","urgent":true,"payload":{"a":1},"provider":"claude",
                "target":"jr1","max_attempts":5,"timeout":"10s","delay":2.5,"unique_key":"k"}"#,
        )
        .unwrap();
        assert_eq!(t.priority, 2);
        assert!(t.urgent);
        assert_eq!(t.payload["a"], 1);
        assert_eq!(t.target.as_deref(), Some("jr1"));
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert_eq!(t.run_after, RunAfter::Delay(Duration::from_millis(2500)));
    }

    #[test]
    fn json_line_errors() {
        let e = |s: &str| NewTask::from_json_line(s).unwrap_err();
        assert!(e("{").contains("not valid JSON"));
        assert!(e(r#"{"priority":1}"#).contains("missing \"title\""));
        assert!(e(r#"{"title":"x","priority":-1}"#).contains("negative"));
        assert!(e(r#"{"title":"x","priority":"hi"}"#).contains("not a number"));
        assert!(e(r#"{"title":"x","timeout":"soon"}"#).contains("not a duration"));
        assert!(e(r#"{"title":"x","titel":"y"}"#).contains("unknown field"));
        assert!(e(r#"{"title":"x","run":"nope"}"#).contains("not a run id"));
        assert!(e(r#"{"title":"x","target":"a b"}"#).contains("worker name"));
        assert!(e(r#"{"title":""}"#).contains("title is empty"));
        // What the database would refuse is refused here, with the reason.
        assert!(e(r#"{"title":"x","timeout":1e300}"#).contains("too long to be a duration"));
        assert!(e(r#"{"title":"x","timeout":1e19}"#).contains("out of range"));
        assert!(e(r#"{"title":"x","timeout":0.0001}"#).contains("out of range"));
        assert!(e(r#"{"title":"x","timeout":"400d"}"#).contains("out of range"));
        assert!(e(r#"{"title":"x","delay":1e15}"#).contains("too long"));
        assert!(e(r#"{"title":"x\u0000"}"#).contains("title contains a NUL"));
        assert!(e(r#"{"title":"x","payload":{"a":["\u0000"]}}"#).contains("payload contains"));
        assert!(e(r#"{"title":"x","payload":{"\u0000":1}}"#).contains("payload contains"));
        let long = format!(r#"{{"title":"x","unique_key":"{}"}}"#, "k".repeat(3000));
        assert!(e(&long).contains("at most 1024"));
    }

    #[test]
    fn json_line_dependencies_and_gate() {
        let t = NewTask::from_json_line(
            r#"{"title":"x","key":"b","after":[12,"a"],"needs_approval":true}"#,
        )
        .unwrap();
        assert_eq!(t.key.as_deref(), Some("b"));
        assert_eq!(t.after, vec![12]);
        assert_eq!(t.after_keys, vec!["a".to_string()]);
        assert_eq!(t.approve_by.as_deref(), Some(""));
        let t = NewTask::from_json_line(r#"{"title":"x","after":"a","approve_by":"ops"}"#).unwrap();
        assert_eq!(t.after_keys, vec!["a".to_string()]);
        assert_eq!(t.approve_by.as_deref(), Some("ops"));
        let e = |s: &str| NewTask::from_json_line(s).unwrap_err();
        assert!(e(r#"{"title":"x","after":[0]}"#).contains("not a task id"));
        assert!(e(r#"{"title":"x","after":[""]}"#).contains("empty key"));
        assert!(e(r#"{"title":"x","key":""}"#).contains("key is empty"));
        assert!(e(r#"{"title":"x","approve_by":"a b"}"#).contains("approve_by"));
    }

    #[test]
    fn payload_size_limit() {
        let t = NewTask::from_json_line(r#"{"title":"x","payload":{"a":"0123456789"}}"#).unwrap();
        assert!(t.check_payload_size(100).is_ok());
        assert!(t
            .check_payload_size(10)
            .unwrap_err()
            .contains("the limit is 10"));
    }
}
