//! The Prometheus metrics `jr-web` serves at `/metrics`, in Prometheus' text format
//! (0.0.4), encoded by `prometheus-client`. docs/operations.md lists every metric with
//! PromQL alerts.
//!
//! The values are read from the database at scrape time ([`Snapshot::gather`]): gauges
//! are the queue as it is now; counters and histograms come from [`db::metrics`], which
//! derives them so that they only go up, across `jrq prune` and `jrq retry`. The monitor's
//! text file uses the same names for the gauges it shares ([`names`]).

use std::time::Duration;

use crate::db::Sql;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::db::{metrics as dbm, schedules, tasks, workers};
use crate::error::Result;

/// The names both `/metrics` and the monitor's text file use.
pub mod names {
    /// Tasks by status (and provider, in `/metrics`).
    pub const TASKS: &str = "jrq_tasks";
    pub const OLDEST_PENDING: &str = "jrq_oldest_pending_seconds";
    pub const FAILURE_RATIO: &str = "jrq_failure_ratio";
    pub const WORKERS: &str = "jrq_workers";
    pub const ASSIGNERS_ALIVE: &str = "jrq_assigners_alive";
    pub const HEALTH_MEDIAN: &str = "jrq_worker_health_median";
}

/// The windows of `jrq_failure_ratio`: label value and length.
pub const FAILURE_WINDOWS: [(&str, Duration); 2] = [
    ("1h", Duration::from_secs(3600)),
    ("24h", Duration::from_secs(86_400)),
];

/// One worker as the metrics see it.
#[derive(Debug, Clone)]
pub struct WorkerGauge {
    pub name: String,
    pub host: String,
    pub alive: bool,
    pub load: i64,
    pub capacity: i64,
    /// Workers only (not assigners).
    pub health: Option<i32>,
}

/// What a scrape reports; `database_up` false leaves the rest empty.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub database_up: bool,
    /// (status, provider, tasks).
    pub tasks: Vec<(String, String, i64)>,
    pub oldest_pending_s: Option<f64>,
    /// (window label, failed / (completed + failed) in it).
    pub failure_ratio: Vec<(&'static str, Option<f64>)>,
    pub workers: workers::WorkerSummary,
    pub fleet: Vec<WorkerGauge>,
    pub totals: Vec<dbm::Total>,
    /// The schedules (migrations/V17).
    pub schedules: Vec<schedules::ScheduleRow>,
}

impl Snapshot {
    /// Reads everything a scrape reports. `online_threshold`: the heartbeat age after
    /// which a worker is not alive (the monitor's `--dead-after`).
    pub async fn gather(client: &impl Sql, online_threshold: Duration) -> Result<Snapshot> {
        let tasks = tasks::tasks_by_provider(client).await?;
        let mut failure_ratio = vec![];
        let mut oldest = None;
        for (label, window) in FAILURE_WINDOWS {
            let s = tasks::tasks_summary(client, window).await?;
            oldest = s.oldest_pending_age_s;
            failure_ratio.push((label, s.failure_rate));
        }
        let fleet = workers::workers_list(client, online_threshold)
            .await?
            .into_iter()
            .map(|w| WorkerGauge {
                alive: w.alive,
                load: w.current_load.into(),
                capacity: w.capacity.into(),
                health: w.health.map(|h| h.score),
                name: w.jr_name,
                host: w.host,
            })
            .collect();
        Ok(Snapshot {
            database_up: true,
            tasks,
            oldest_pending_s: oldest,
            failure_ratio,
            workers: workers::workers_summary(client, online_threshold).await?,
            fleet,
            totals: dbm::metrics_totals(client).await?,
            schedules: schedules::schedules_list(client).await?,
        })
    }

    /// The snapshot in Prometheus' text format.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its descriptor and its samples.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: &[(Labels, M)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut enc;
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]);
        info.encode(e.encode_descriptor(
            "jrq_build",
            "jr-web's version.",
            None,
            MetricType::Info,
        )?)?;
        family(
            e,
            "jrq_database_up",
            "1 when the last scrape could read the database, else 0.",
            MetricType::Gauge,
            &[(vec![], gauge(if self.database_up { 1.0 } else { 0.0 }))],
        )?;
        if !self.database_up {
            return Ok(());
        }
        let tasks: Vec<(Labels, _)> = self
            .tasks
            .iter()
            .map(|(s, p, n)| {
                (
                    vec![("status", s.clone()), ("provider", p.clone())],
                    gauge(*n as f64),
                )
            })
            .collect();
        family(
            e,
            names::TASKS,
            "Tasks in the table by status and provider (final ones until pruned).",
            MetricType::Gauge,
            &tasks,
        )?;
        family(
            e,
            names::OLDEST_PENDING,
            "How long the oldest ready pending task has waited (0: none).",
            MetricType::Gauge,
            &[(vec![], gauge(self.oldest_pending_s.unwrap_or(0.0)))],
        )?;
        let ratios: Vec<(Labels, _)> = self
            .failure_ratio
            .iter()
            .filter_map(|(w, r)| r.map(|r| (vec![("window", (*w).to_string())], gauge(r))))
            .collect();
        family(
            e,
            names::FAILURE_RATIO,
            "Failed / (completed + failed) of the tasks that finished in the window.",
            MetricType::Gauge,
            &ratios,
        )?;
        let w = &self.workers;
        let states: Vec<(Labels, _)> = [
            ("online", w.online()),
            ("offline", w.offline),
            ("circuit_open", w.circuit_open),
        ]
        .into_iter()
        .map(|(s, n)| (vec![("state", s.to_string())], gauge(n as f64)))
        .collect();
        family(
            e,
            names::WORKERS,
            "Workers by state: online (alive), offline (not alive), circuit_open (alive, \
             taking no tasks).",
            MetricType::Gauge,
            &states,
        )?;
        family(
            e,
            "jrq_worker_slots",
            "Task slots of the alive workers: their capacity, and the slots in use.",
            MetricType::Gauge,
            &[
                (vec![("state", "capacity".into())], gauge(w.capacity as f64)),
                (vec![("state", "used".into())], gauge(w.load as f64)),
            ],
        )?;
        family(
            e,
            names::ASSIGNERS_ALIVE,
            "Assigners heartbeating.",
            MetricType::Gauge,
            &[(vec![], gauge(w.assigners as f64))],
        )?;
        let sc = &self.schedules;
        let count = |f: &dyn Fn(&schedules::ScheduleRow) -> bool| {
            gauge(sc.iter().filter(|r| f(r)).count() as f64)
        };
        family(
            e,
            "jrq_schedules",
            "Schedules by state: active, paused, failing (the last tick could not be \
             enqueued).",
            MetricType::Gauge,
            &[
                (vec![("state", "active".into())], count(&|r| !r.paused)),
                (vec![("state", "paused".into())], count(&|r| r.paused)),
                (
                    vec![("state", "failing".into())],
                    count(&|r| r.last_error.is_some()),
                ),
            ],
        )?;
        let next: Vec<(Labels, _)> = sc
            .iter()
            .filter(|r| !r.paused)
            .map(|r| {
                (
                    vec![("schedule", r.name.clone())],
                    gauge(r.next_tick.timestamp_millis() as f64 / 1000.0),
                )
            })
            .collect();
        family(
            e,
            "jrq_schedule_next_tick_timestamp_seconds",
            "When an active schedule's next tick is due (Unix time): past by more than a \
             minute, no assigner is enqueueing it.",
            MetricType::Gauge,
            &next,
        )?;
        let ticks: Vec<(Labels, _)> = sc
            .iter()
            .flat_map(|r| {
                [
                    ("enqueued", r.enqueued_total),
                    ("skipped", r.skipped_total),
                    ("missed", r.missed_total),
                ]
                .map(|(o, n)| {
                    (
                        vec![("schedule", r.name.clone()), ("outcome", o.to_string())],
                        gauge(n as f64),
                    )
                })
            })
            .collect();
        family(
            e,
            "jrq_schedule_ticks",
            "A schedule's ticks since it was added: enqueued, skipped (its previous task \
             unfinished, --unique-while-running) and missed (left out by its catch-up \
             policy, or not enqueued).",
            MetricType::Gauge,
            &ticks,
        )?;
        let per_worker =
            |f: &dyn Fn(&WorkerGauge) -> Option<f64>| -> Vec<(Labels, ConstGauge<f64>)> {
                self.fleet
                    .iter()
                    .filter(|g| g.health.is_some())
                    .filter_map(|g| {
                        f(g).map(|v| {
                            (
                                vec![("worker", g.name.clone()), ("host", g.host.clone())],
                                gauge(v),
                            )
                        })
                    })
                    .collect()
            };
        family(
            e,
            "jrq_worker_alive",
            "1 for a registered worker that is online and heartbeating, 0 for one that is not.",
            MetricType::Gauge,
            &per_worker(&|g| Some(if g.alive { 1.0 } else { 0.0 })),
        )?;
        family(
            e,
            "jrq_worker_health",
            "A worker's health score, 0-100, from its recent outcomes (see `jrq workers`).",
            MetricType::Gauge,
            &per_worker(&|g| g.health.map(f64::from)),
        )?;
        for (metric, name, help, by_worker) in [
            (
                "completed",
                "jrq_tasks_completed_total",
                "Tasks completed, by provider and the worker that ran them.",
                true,
            ),
            (
                "failed",
                "jrq_tasks_failed_total",
                "Tasks failed for good (attempts used up, or not retryable).",
                true,
            ),
            (
                "cancelled",
                "jrq_tasks_cancelled_total",
                "Tasks cancelled.",
                true,
            ),
            (
                "attempts",
                "jrq_task_attempts_total",
                "Attempts started, counted when their task finishes.",
                false,
            ),
            (
                "retries",
                "jrq_task_retries_total",
                "Attempts after a task's first, counted when their task finishes.",
                false,
            ),
        ] {
            let samples: Vec<(Labels, _)> = self
                .totals
                .iter()
                .filter(|t| t.metric == metric)
                .map(|t| {
                    let mut labels = vec![("provider", t.provider.clone())];
                    if by_worker {
                        labels.push(("worker", t.worker.clone()));
                    }
                    (labels, ConstCounter::new(t.count.max(0) as u64))
                })
                .collect();
            // The name without `_total`: the encoder adds it to a counter.
            let base = name.trim_end_matches("_total");
            family(e, base, help, MetricType::Counter, &samples)?;
        }
        // Usage the executors reported (JRQ-USAGE), by provider and worker.
        let usage = |metric: &'static str| {
            self.totals
                .iter()
                .filter(move |t| t.metric == metric)
                .map(|t| {
                    (
                        vec![
                            ("provider", t.provider.clone()),
                            ("worker", t.worker.clone()),
                        ],
                        t.count.max(0),
                    )
                })
        };
        let tokens: Vec<(Labels, ConstCounter<u64>)> = [
            ("usage_input_tokens", "input"),
            ("usage_output_tokens", "output"),
        ]
        .into_iter()
        .flat_map(|(metric, direction)| {
            usage(metric).map(move |(mut l, n)| {
                l.push(("direction", direction.to_string()));
                (l, ConstCounter::new(n as u64))
            })
        })
        .collect();
        family(
            e,
            "jrq_usage_tokens",
            "Tokens the executors reported (JRQ-USAGE lines), by provider, worker and \
             direction (input, output).",
            MetricType::Counter,
            &tokens,
        )?;
        let cost: Vec<(Labels, ConstCounter<f64>)> = usage("usage_cost_microusd")
            .map(|(l, n)| (l, ConstCounter::new(n as f64 / 1e6)))
            .collect();
        family(
            e,
            "jrq_usage_cost_usd",
            "US dollars the executors reported spending (JRQ-USAGE lines), by provider and \
             worker.",
            MetricType::Counter,
            &cost,
        )?;
        for (metric, bounds, help) in [
            (
                "dispatch_seconds",
                &dbm::DISPATCH_BOUNDS,
                "Completed tasks: from ready (created, or due) to the start of the attempt \
                 that completed.",
            ),
            (
                "run_seconds",
                &dbm::RUN_BOUNDS,
                "Completed tasks: from the start of the attempt that completed to its end.",
            ),
        ] {
            let name = format!("jrq_task_{metric}");
            let mut m = e.encode_descriptor(&name, help, None, MetricType::Histogram)?;
            let mut providers: Vec<&str> = self
                .totals
                .iter()
                .filter(|t| t.metric == metric)
                .map(|t| t.provider.as_str())
                .collect();
            providers.dedup();
            for p in providers {
                // Every bucket, also the empty ones: a stored bound that is not one of
                // today's (a changed bound) counts in the next bucket up.
                let mut buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .chain([f64::INFINITY].iter())
                    .map(|b| (*b, 0))
                    .collect();
                for t in self
                    .totals
                    .iter()
                    .filter(|t| t.metric == metric && t.provider == p)
                {
                    if let Some(b) = buckets.iter_mut().find(|(b, _)| t.le <= *b) {
                        b.1 += t.count.max(0) as u64;
                    }
                }
                let sum_us: i64 = self
                    .totals
                    .iter()
                    .filter(|t| t.metric == metric && t.provider == p)
                    .map(|t| t.sum_us)
                    .sum();
                let sum = sum_us as f64 / 1e6;
                let count = buckets.iter().map(|(_, n)| n).sum();
                let labels: Labels = vec![("provider", p.to_string())];
                m.encode_family(&labels)?
                    .encode_histogram::<Labels>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}
