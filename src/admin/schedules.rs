//! `jrq schedules ...` (migrations/V17; the ticks are the assigners' to enqueue).

use tokio_postgres::Client;

use super::{render, ScheduleAddArgs, SchedulesCommand};
use crate::db::schedules::{self as db_schedules, NewSchedule, RunNow};
use crate::error::{Error, Result};

/// The schedule `add` asks for, checked without the database.
pub(super) fn prepare_add(args: &ScheduleAddArgs) -> Result<(NewSchedule, crate::task::NewTask)> {
    if args.task.batch.is_some() {
        return Err(Error::usage(
            "--batch is not for schedules: give the task's options (--title, --payload, ...)",
        ));
    }
    let mut input = super::commands::read_enqueue_input(&args.task)?;
    let mut t = input.tasks.remove(0);
    if t.source == "jrq" {
        t.source = "schedule".into();
    }
    let template = t.to_template("the schedule's task").map_err(Error::usage)?;
    let s = NewSchedule {
        name: args.name.clone(),
        cron: args.cron.clone(),
        every: args.every,
        timezone: args.timezone.clone(),
        template,
        catch_up: args.catch_up,
        unique_while_running: args.unique_while_running,
        paused: args.paused,
    };
    if args.every.is_some() && args.timezone != "UTC" {
        return Err(Error::usage(
            "--timezone is for --cron: --every ticks on the Unix epoch, whatever the zone",
        ));
    }
    s.cadence()?;
    Ok((s, t))
}

pub(super) async fn schedules_cmd(
    client: &mut Client,
    cmd: SchedulesCommand,
    added: Option<(NewSchedule, crate::task::NewTask)>,
) -> Result<()> {
    match cmd {
        SchedulesCommand::Add(args) => {
            let (mut s, mut t) = match added {
                Some(x) => x,
                None => prepare_add(&args)?,
            };
            // A run given by a prefix or a name is known once connected.
            if let (Some(r), None) = (&args.task.run, t.run_id) {
                let id = crate::db::runs::runs_resolve(&*client, &r.0).await?;
                t.run_id = Some(id);
                s.template["run_id"] = serde_json::json!(id);
            }
            super::commands::check_stored_task(&*client, &t, "the schedule's task").await?;
            let txn = client.transaction().await?;
            db_schedules::schedules_add(&txn, &s, args.replace).await?;
            let row = db_schedules::schedules_get(&txn, &s.name).await?;
            txn.commit().await?;
            out!(
                "schedule '{}': {}, next {}",
                row.name,
                row.cadence_text(),
                if row.paused {
                    "(paused)".to_string()
                } else {
                    crate::text::local_time(row.next_tick, "%Y-%m-%d %H:%M:%S %Z")
                }
            );
        }
        SchedulesCommand::List { json } => {
            let rows = db_schedules::schedules_list(&*client).await?;
            render::schedules(&rows, json)?;
        }
        SchedulesCommand::Pause { name } => {
            if db_schedules::schedules_set_paused(&*client, &name, true).await? {
                out!("schedule '{name}' is paused");
            } else {
                out!("schedule '{name}' was paused already");
            }
        }
        SchedulesCommand::Resume { name } => {
            let txn = client.transaction().await?;
            let changed = db_schedules::schedules_set_paused(&txn, &name, false).await?;
            let row = db_schedules::schedules_get(&txn, &name).await?;
            txn.commit().await?;
            out!(
                "schedule '{name}' {}: next {}",
                if changed { "resumed" } else { "was not paused" },
                crate::text::local_time(row.next_tick, "%Y-%m-%d %H:%M:%S %Z")
            );
        }
        SchedulesCommand::Remove { name } => {
            db_schedules::schedules_remove(&*client, &name).await?;
            out!("schedule '{name}' removed (its tasks stay)");
        }
        SchedulesCommand::RunNow { name, force } => {
            let txn = client.transaction().await?;
            let r = db_schedules::schedules_run_now(&txn, &name, force).await?;
            txn.commit().await?;
            match r {
                RunNow::Enqueued(id) => out!("{id}"),
                RunNow::StillRunning(id) => {
                    return Err(Error::Conflict(format!(
                        "schedule '{name}' runs one task at a time and its task {id} is \
                         unfinished: wait for it, or give --force"
                    )))
                }
            }
        }
    }
    Ok(())
}
