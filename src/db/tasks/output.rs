//! What a running attempt reports besides its outcome (migrations/V12): its output, in
//! chunks with a bounded tail per task; its latest checkpoint; its usage (tokens and
//! cost), which keeps the runs' and providers' sums and pauses those over budget. The
//! worker's writes are fenced like its outcomes; the readers' queries follow.

use crate::db::Sql;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::Result;

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A chunk of output to write: task, attempt, stream and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub task_id: i64,
    pub attempt: i32,
    pub stream: Stream,
    pub data: String,
}

/// Writes a batch of output chunks in one statement (`jrq_tasks_output`), fenced row by
/// row; then trims the tasks in `trim` to their newest `keep_bytes`. Returns the chunks
/// stored (the others had lost their lease).
pub async fn tasks_output(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    chunks: &[OutputChunk],
    trim: &[i64],
    keep_bytes: i64,
) -> Result<i64> {
    if chunks.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = chunks.iter().map(|c| c.task_id).collect();
    let attempts: Vec<i32> = chunks.iter().map(|c| c.attempt).collect();
    let streams: Vec<&str> = chunks.iter().map(|c| c.stream.as_str()).collect();
    let data: Vec<&str> = chunks.iter().map(|c| c.data.as_str()).collect();
    let row = client
        .row(
            "SELECT jrq_tasks_output($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &worker,
                &instance,
                &ids,
                &attempts,
                &streams,
                &data,
                &trim,
                &keep_bytes,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Stores the latest checkpoint (JSON text) of running attempts, fenced, with an event
/// each. Returns the task ids stored.
pub async fn tasks_checkpoint(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    checkpoints: &[(i64, i32, &str)],
) -> Result<Vec<i64>> {
    if checkpoints.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = checkpoints.iter().map(|c| c.0).collect();
    let attempts: Vec<i32> = checkpoints.iter().map(|c| c.1).collect();
    let json: Vec<&str> = checkpoints.iter().map(|c| c.2).collect();
    let row = client
        .row(
            "SELECT jrq_tasks_checkpoint($1, $2, $3, $4, $5)",
            &[&worker, &instance, &ids, &attempts, &json],
        )
        .await?;
    Ok(row.get(0))
}

/// Usage an attempt reported: deltas to add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageDelta {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_microusd: i64,
}

impl UsageDelta {
    pub fn add(&mut self, o: &UsageDelta) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost_microusd = self.cost_microusd.saturating_add(o.cost_microusd);
    }
}

/// A pause a usage write set because a run or provider reached its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetPause {
    pub scope: String,
    pub target: String,
    pub reason: String,
}

/// Adds usage of running attempts `(task, attempt, model, delta)` to the ledger, fenced;
/// returns the pauses set for runs and providers that reached their budgets.
pub async fn tasks_usage(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    usage: &[(i64, i32, &str, &UsageDelta)],
) -> Result<Vec<BudgetPause>> {
    if usage.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = usage.iter().map(|u| u.0).collect();
    let attempts: Vec<i32> = usage.iter().map(|u| u.1).collect();
    let models: Vec<&str> = usage.iter().map(|u| u.2).collect();
    let input: Vec<i64> = usage.iter().map(|u| u.3.input_tokens).collect();
    let output: Vec<i64> = usage.iter().map(|u| u.3.output_tokens).collect();
    let cost: Vec<i64> = usage.iter().map(|u| u.3.cost_microusd).collect();
    let rows = client
        .rows(
            "SELECT scope, target, reason FROM jrq_tasks_usage($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &worker, &instance, &ids, &attempts, &models, &input, &output, &cost,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| BudgetPause {
            scope: r.get(0),
            target: r.get(1),
            reason: r.get(2),
        })
        .collect())
}

/// A stored chunk of a task's output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRow {
    pub seq: i64,
    pub attempt: i32,
    pub stream: String,
    pub at: DateTime<Utc>,
    pub data: String,
}

impl OutputRow {
    /// From the columns `seq, attempt, stream, at, data`.
    fn from_row(r: &tokio_postgres::Row) -> Self {
        OutputRow {
            seq: r.get(0),
            attempt: r.get(1),
            stream: r.get(2),
            at: r.get(3),
            data: r.get(4),
        }
    }
}

/// Which chunks [`output_read`] returns.
#[derive(Debug, Clone, Default)]
pub struct OutputQuery {
    /// Only chunks after this one.
    pub after_seq: i64,
    /// Only this stream (`None`: both).
    pub stream: Option<Stream>,
    /// Only chunks written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this attempt.
    pub attempt: Option<i32>,
    /// At most this many chunks.
    pub limit: i64,
}

/// A task's stored output, oldest first.
pub async fn output_read(
    client: &impl Sql,
    task_id: i64,
    q: &OutputQuery,
) -> Result<Vec<OutputRow>> {
    let stream = q.stream.map(Stream::as_str);
    let rows = client
        .rows(
            "SELECT seq, attempt, stream, at, data FROM jr_task_output \
             WHERE task_id = $1 AND seq > $2 AND ($3::text IS NULL OR stream = $3) \
               AND ($4::timestamptz IS NULL OR at >= $4) \
               AND ($5::int4 IS NULL OR attempt = $5) \
             ORDER BY seq LIMIT $6",
            &[
                &task_id,
                &q.after_seq,
                &stream,
                &q.since,
                &q.attempt,
                &q.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(OutputRow::from_row).collect())
}

/// The last `bytes` (about: whole chunks) of a task's output, oldest first.
pub async fn output_tail(client: &impl Sql, task_id: i64, bytes: i64) -> Result<Vec<OutputRow>> {
    let rows = client
        .rows(
            "SELECT seq, attempt, stream, at, data FROM ( \
                 SELECT seq, attempt, stream, at, data, \
                     sum(octet_length(data)) OVER (ORDER BY seq DESC) AS upto \
                 FROM jr_task_output WHERE task_id = $1) x \
             WHERE upto - octet_length(data) < $2 ORDER BY seq",
            &[&task_id, &bytes],
        )
        .await?;
    Ok(rows.iter().map(OutputRow::from_row).collect())
}

/// A usage total: by model, or by task, run, provider or worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageTotal {
    /// What is totalled: a model, a provider, a worker ('' for all).
    pub key: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

impl UsageTotal {
    /// From the columns `key, input_tokens, output_tokens, cost_microusd` starting at
    /// column `at`.
    fn from_row(r: &tokio_postgres::Row, at: usize) -> Self {
        UsageTotal {
            key: r.get(at),
            input_tokens: r.get(at + 1),
            output_tokens: r.get(at + 2),
            cost_usd: r.get::<_, i64>(at + 3) as f64 / 1e6,
        }
    }
}

/// A task's usage by model (all its attempts).
pub async fn usage_of_task(client: &impl Sql, task_id: i64) -> Result<Vec<UsageTotal>> {
    let rows = client
        .rows(
            "SELECT model, sum(input_tokens)::int8, sum(output_tokens)::int8, \
                 sum(cost_microusd)::int8 \
             FROM jr_task_usage WHERE task_id = $1 GROUP BY model ORDER BY model",
            &[&task_id],
        )
        .await?;
    Ok(rows.iter().map(|r| UsageTotal::from_row(r, 0)).collect())
}

/// Usage reported since `since`, by provider and by worker.
pub async fn usage_since(
    client: &impl Sql,
    since: DateTime<Utc>,
) -> Result<(Vec<UsageTotal>, Vec<UsageTotal>)> {
    let rows = client
        .rows(
            "SELECT g, key, sum(input_tokens)::int8, sum(output_tokens)::int8, \
                 sum(cost_microusd)::int8 \
             FROM (SELECT 'p' AS g, provider AS key, input_tokens, output_tokens, \
                       cost_microusd FROM jr_task_usage WHERE at >= $1 \
                   UNION ALL \
                   SELECT 'w', worker, input_tokens, output_tokens, cost_microusd \
                   FROM jr_task_usage WHERE at >= $1) u \
             GROUP BY 1, 2 ORDER BY 1, 5 DESC, 2",
            &[&since],
        )
        .await?;
    let mut by_provider = vec![];
    let mut by_worker = vec![];
    for r in &rows {
        let t = UsageTotal::from_row(r, 1);
        if r.get::<_, &str>(0) == "p" {
            by_provider.push(t);
        } else {
            by_worker.push(t);
        }
    }
    Ok((by_provider, by_worker))
}
