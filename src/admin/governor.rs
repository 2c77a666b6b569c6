//! `jrq providers`, `jrq pause`, `jrq resume`, and what `jrq status` and `jrq show` say
//! about a task the governor holds back.

use chrono::Utc;
use tokio_postgres::Client;

use super::{PauseArgs, ProvidersCommand, ScopeArgs};
use crate::db::providers::{self, Pause, ProviderChange};
use crate::db::Statements;
use crate::error::Result;

/// Who the CLI's writes name: the user, as `jrq enqueue` records its creator.
fn actor() -> String {
    crate::task::default_created_by()
}

pub async fn providers_cmd(client: &Client, cmd: ProvidersCommand) -> Result<()> {
    match cmd {
        ProvidersCommand::Set {
            name,
            max_running,
            max_starts_per_minute,
            max_cost_usd_per_day,
            fallback,
        } => {
            let fallback: Option<Vec<String>> = fallback.map(|f| {
                f.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            });
            if let Some(f) = &fallback {
                if f.contains(&name) {
                    return Err(crate::Error::usage(format!(
                        "provider '{name}' cannot be its own fallback"
                    )));
                }
            }
            let change = ProviderChange {
                max_running: max_running.map(|c| c.0),
                max_starts_per_minute: max_starts_per_minute.map(|c| c.0),
                fallback: fallback.as_deref(),
                max_cost_usd_per_day: max_cost_usd_per_day.map(|c| c.0),
            };
            let row = providers::providers_set(client, &name, &change, &actor()).await?;
            super::render::provider_set(&row);
            Ok(())
        }
        ProvidersCommand::List { json } => {
            let rows = providers::providers_list(client).await?;
            let pauses = providers::pauses_active(client, &Statements::default()).await?;
            super::render::providers(&rows, &pauses, json)
        }
        ProvidersCommand::Unset { name } => {
            if providers::providers_unset(client, &name).await? {
                crate::process::print_out(&format!("provider '{name}' has no limits now\n"));
            } else {
                crate::process::print_out(&format!(
                    "provider '{name}' had no limits: nothing changed\n"
                ));
            }
            Ok(())
        }
    }
}

pub async fn pause(client: &Client, args: &PauseArgs) -> Result<()> {
    let (scope, target) = args.scope.scope(client).await?;
    let until = match args.duration {
        Some(d) => Some(
            Utc::now()
                + chrono::Duration::from_std(d)
                    .map_err(|_| crate::Error::usage("--for is too long: give at most 365d"))?,
        ),
        None => None,
    };
    providers::pauses_set(client, scope, &target, until, args.reason.trim(), &actor()).await?;
    let p = Pause {
        scope: scope.into(),
        target,
        until,
        reason: args.reason.trim().into(),
        set_by: actor(),
        set_at: Utc::now(),
    };
    crate::process::print_out(&crate::text::for_terminal(
        &format!(
            "{} {}: no new assignments; running tasks finish (jrq resume ends it)\n",
            p.what(),
            p.describe()
        ),
        true,
    ));
    Ok(())
}

pub async fn resume(client: &Client, args: &ScopeArgs) -> Result<()> {
    let (scope, target) = args.scope(client).await?;
    let what = Pause {
        scope: scope.into(),
        target: target.clone(),
        until: None,
        reason: String::new(),
        set_by: String::new(),
        set_at: Utc::now(),
    }
    .what();
    let text = if providers::pauses_clear(client, scope, &target).await? {
        format!("{what} resumed: assignments start again with the next round\n")
    } else {
        format!("{what} was not paused: nothing changed\n")
    };
    crate::process::print_out(&crate::text::for_terminal(&text, true));
    Ok(())
}

/// `jrq workers drain NAME`: a pause of the worker, and its assigned tasks given back.
pub async fn drain(client: &mut Client, name: &str, reason: &str) -> Result<()> {
    let given_back = crate::db::workers::workers_drain(client, name, reason, &actor()).await?;
    crate::process::print_out(&format!(
        "worker '{name}' is draining: it takes nothing new and finishes what it runs; \
         {given_back} assigned task(s) went back to pending (`jrq workers undrain {name}` ends it)\n"
    ));
    Ok(())
}

/// `jrq workers undrain NAME`.
pub async fn undrain(client: &mut Client, name: &str) -> Result<()> {
    let text = if providers::pauses_clear(&*client, "worker", name).await? {
        format!("worker '{name}' takes tasks again\n")
    } else {
        format!("worker '{name}' was not draining: nothing changed\n")
    };
    crate::process::print_out(&text);
    Ok(())
}
