//! Output of `jrq providers`.

use serde::Serialize;

use super::{add_row, print_json, print_table, right, table};
use crate::db::providers::{Pause, Pauses, ProviderRow};
use crate::error::Result;

fn limit(v: Option<i32>) -> String {
    v.map_or_else(|| "-".into(), |n| n.to_string())
}

/// A budget and what was spent of it, or what was spent.
pub fn spent(cost: f64, budget: Option<f64>) -> String {
    match budget {
        Some(b) => format!("${cost:.2} of ${b:.2}"),
        None if cost > 0.0 => format!("${cost:.2}"),
        None => "-".into(),
    }
}

pub fn provider_set(r: &ProviderRow) {
    say!(
        "provider '{}': max running {}, max starts per minute {}, budget {} a day, fallback {}",
        r.name,
        limit(r.max_running),
        limit(r.max_starts_per_minute),
        r.max_cost_usd_per_day
            .map_or_else(|| "-".to_string(), |b| format!("${b:.2}")),
        if r.fallback.is_empty() {
            "-".to_string()
        } else {
            r.fallback.join(",")
        }
    );
}

#[derive(Serialize)]
struct ProviderJson<'a> {
    #[serde(flatten)]
    row: &'a ProviderRow,
    pause: Option<&'a Pause>,
}

#[derive(Serialize)]
struct ProvidersJson<'a> {
    providers: Vec<ProviderJson<'a>>,
    /// Pauses of other scopes (everything, runs, workers).
    pauses: Vec<&'a Pause>,
}

pub fn providers(rows: &[ProviderRow], pauses: &Pauses, json: bool) -> Result<()> {
    let others: Vec<&Pause> = pauses.iter().filter(|p| p.scope != "provider").collect();
    if json {
        return print_json(&ProvidersJson {
            providers: rows
                .iter()
                .map(|row| ProviderJson {
                    row,
                    pause: pauses.providers.get(&row.name),
                })
                .collect(),
            pauses: others,
        });
    }
    let mut t = table(&[
        "provider",
        "running",
        "max running",
        "starts/min",
        "pending",
        "cost today",
        "fallback",
        "state",
    ]);
    for r in rows {
        let state = match pauses.providers.get(&r.name) {
            Some(p) => p.describe(),
            None => match r.max_running {
                Some(m) if r.running >= i64::from(m) => "at its limit".into(),
                _ => "-".into(),
            },
        };
        add_row(
            &mut t,
            vec![
                r.name.clone(),
                r.running.to_string(),
                limit(r.max_running),
                limit(r.max_starts_per_minute),
                r.pending.to_string(),
                spent(r.cost_today_usd, r.max_cost_usd_per_day),
                if r.fallback.is_empty() {
                    "-".into()
                } else {
                    r.fallback.join(",")
                },
                state,
            ],
        );
    }
    right(&mut t, &[1, 2, 3, 4, 5]);
    print_table(&t);
    for p in others {
        say!("{} {}", p.what(), p.describe());
    }
    Ok(())
}
