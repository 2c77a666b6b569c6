//! What each `jrq` subcommand does.

use std::io::{BufRead, Read};
use std::path::Path;

use tokio_postgres::Client;

use super::render;
use super::{
    ApproveArgs, BulkFilter, CancelArgs, Cli, Command, EnqueueArgs, PruneArgs, RejectArgs,
    RetryArgs, RolesCommand, RunsCommand, ShowArgs, StatusArgs, TasksArgs, WorkersAction,
    WorkersArgs,
};
use crate::db::{self, events, migrate, roles, runs, tasks, workers};
use crate::error::{Error, Result};
use crate::task::{default_created_by, NewTask, RunAfter, TaskStatus};

/// The actor recorded in events written by the CLI.
const ACTOR: &str = "jrq";

/// Runs one `jrq` command. Input is validated before the database is touched; every
/// change a command makes commits in one transaction, or not at all.
pub async fn run(cli: Cli) -> Result<u8> {
    render::set_wide(cli.wide);
    // What needs no database.
    match &cli.command {
        Command::Completions { shell, program } => {
            let mut cmd = super::program_command(program)
                .ok_or_else(|| Error::usage(format!("'{program}' is not a jrq program")))?;
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, program.as_str(), &mut out);
            crate::process::print_out(&String::from_utf8_lossy(&out));
            return Ok(0);
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            for p in super::PROGRAMS {
                let cmd = super::program_command(p).expect("every program has its command");
                clap_mangen::generate_to(cmd, dir).map_err(|e| {
                    Error::io(format!("cannot write man pages in {}", dir.display()), e)
                })?;
            }
            out!("man pages written in {}", dir.display());
            return Ok(0);
        }
        _ => {}
    }
    let cfg = db::config_from(cli.database_url.as_deref(), "jrq")?;
    // Read and check the input first: a bad batch never needs a database to be refused.
    let new_tasks = match &cli.command {
        Command::Enqueue(args) => Some(read_enqueue_input(args)?),
        _ => None,
    };
    let new_schedule = match &cli.command {
        Command::Schedules(super::SchedulesCommand::Add(args)) => {
            Some(super::schedules::prepare_add(args)?)
        }
        _ => None,
    };
    let mut client = db::connect(&cfg).await?;
    if let Command::Migrate = cli.command {
        let report = migrate::migrate(&mut client).await?;
        render::migrate(&report);
        // The migration creates the groups only where this user may create roles.
        let missing = roles::roles_missing(&client).await?;
        if !missing.is_empty() {
            render::groups_missing(&missing);
        }
        return Ok(0);
    }
    db::check_schema(&client).await?;
    let done = match cli.command {
        Command::Logs(args) => return super::logs::logs(&cfg, &client, &args).await,
        Command::Migrate => unreachable!("handled above"),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
        Command::Enqueue(args) => match new_tasks {
            Some(input) => enqueue(&mut client, &args, input).await,
            // Read above for every enqueue.
            None => unreachable!("the enqueue input is read before connecting"),
        },
        Command::Status(args) => status(&client, &args).await,
        Command::Tasks(args) => list_tasks(&client, &args).await,
        Command::Show(args) => show(&client, &args).await,
        Command::Retry(args) => retry(&mut client, &args).await,
        Command::Cancel(args) => cancel(&mut client, &args).await,
        Command::Approve(args) => approve(&mut client, &args).await,
        Command::Reject(args) => reject(&mut client, &args).await,
        Command::Runs(cmd) => runs_cmd(&mut client, cmd).await,
        Command::Schedules(cmd) => {
            super::schedules::schedules_cmd(&mut client, cmd, new_schedule).await
        }
        Command::Workers(args) => list_workers(&mut client, &args).await,
        Command::Prune(args) => prune(&client, &args).await,
        Command::Roles(cmd) => roles_cmd(&mut client, cmd).await,
        Command::Providers(cmd) => super::governor::providers_cmd(&client, cmd).await,
        Command::Pause(args) => super::governor::pause(&client, &args).await,
        Command::Resume(args) => super::governor::resume(&client, &args).await,
    };
    done.map(|()| 0)
}

/// The tasks an `enqueue` asks for, or the lines it must refuse.
pub(super) struct EnqueueInput {
    pub(super) tasks: Vec<NewTask>,
    /// Input line number (1-based) of each task, for batch reports.
    lines: Vec<usize>,
    /// Lines refused before touching the database: (line, reason).
    rejected: Vec<(usize, String)>,
}

pub(super) fn read_enqueue_input(args: &EnqueueArgs) -> Result<EnqueueInput> {
    let max_payload = match args.max_payload {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    if let Some(path) = &args.batch {
        return read_batch(path, max_payload);
    }
    let mut t = NewTask::new(args.title.clone().unwrap_or_default());
    t.description = args.description.clone();
    if let Some(p) = &args.payload {
        t.payload = p.clone();
    }
    if let Some(path) = &args.payload_file {
        let text = read_input(path)?;
        t.payload = serde_json::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "payload in {} is not valid JSON ({e})",
                display_path(path)
            ))
        })?;
    }
    t.priority = args.priority;
    t.urgent = args.urgent;
    t.provider = args.provider.clone();
    t.fallback_ok = args.fallback_ok;
    t.target = args.target.clone();
    // A run named by its id is known now; by a prefix or a name, once connected.
    t.run_id = args
        .run
        .as_ref()
        .and_then(|r| uuid::Uuid::parse_str(&r.0).ok());
    t.max_attempts = args.max_attempts;
    t.timeout = args.timeout;
    t.idle_timeout = args.idle_timeout;
    t.max_cost_usd = args.max_cost_usd;
    t.run_after = match (args.delay, args.run_at) {
        (Some(d), _) => RunAfter::Delay(d),
        (None, Some(at)) => RunAfter::At(at),
        (None, None) => RunAfter::Now,
    };
    t.unique_key = args.unique_key.clone();
    t.source = args.source.clone();
    t.created_by = args.created_by.clone().unwrap_or_else(default_created_by);
    t.after = args.after.iter().flatten().copied().collect();
    t.after.sort_unstable();
    t.after.dedup();
    t.approve_by = match (&args.approve_by, args.needs_approval) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => Some(String::new()),
        (None, false) => None,
    };
    t.validate().map_err(Error::usage)?;
    t.check_payload_size(max_payload).map_err(Error::usage)?;
    Ok(EnqueueInput {
        tasks: vec![t],
        lines: vec![0],
        rejected: vec![],
    })
}

fn display_path(path: &Path) -> String {
    if path == Path::new("-") {
        "standard input".into()
    } else {
        path.display().to_string()
    }
}

fn read_input(path: &Path) -> Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::io("cannot read standard input", e))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    }
    Ok(text)
}

fn read_batch(path: &Path, max_payload: usize) -> Result<EnqueueInput> {
    let mut reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut input = EnqueueInput {
        tasks: vec![],
        lines: vec![],
        rejected: vec![],
    };
    // Lines are read as bytes: one that is not UTF-8 is a bad line, not a bad file.
    let mut buf = Vec::new();
    for i in 1.. {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", display_path(path)), e))?;
        if n == 0 {
            break;
        }
        let parsed = std::str::from_utf8(&buf)
            .map_err(|e| {
                format!(
                    "not UTF-8 text (invalid bytes at column {})",
                    e.valid_up_to() + 1
                )
            })
            .and_then(|line| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                let t = NewTask::from_json_line(line)?;
                t.check_payload_size(max_payload)?;
                Ok(Some(t))
            });
        match parsed {
            Ok(None) => {}
            Ok(Some(t)) => {
                input.tasks.push(t);
                input.lines.push(i);
            }
            Err(why) => input.rejected.push((i, why)),
        }
    }
    Ok(input)
}

async fn enqueue(client: &mut Client, args: &EnqueueArgs, mut input: EnqueueInput) -> Result<()> {
    let batch = args.batch.is_some();
    // --run (or JRQ_RUN): the task's run, or in a batch the run of the lines naming none.
    if let Some(r) = &args.run {
        let id = runs::runs_resolve(&*client, &r.0).await?;
        for t in input
            .tasks
            .iter_mut()
            .filter(|t| !batch || t.run_id.is_none())
        {
            t.run_id = Some(id);
        }
    }
    let txn = client.transaction().await?;
    // Runs named by the tasks must exist: refuse those lines with a clear reason.
    let mut run_ids: Vec<uuid::Uuid> = input.tasks.iter().filter_map(|t| t.run_id).collect();
    run_ids.sort();
    run_ids.dedup();
    if !run_ids.is_empty() {
        let known = runs::runs_existing(&txn, &run_ids).await?;
        let mut keep_tasks = vec![];
        let mut keep_lines = vec![];
        for (t, line) in input.tasks.into_iter().zip(input.lines) {
            match t.run_id {
                Some(r) if !known.contains(&r) => {
                    if !batch {
                        return Err(Error::NotFound(format!(
                            "there is no run {r}: create it with `jrq runs create` or check \
                             the id with `jrq runs list`"
                        )));
                    }
                    input.rejected.push((line, format!("there is no run {r}")));
                }
                _ => {
                    keep_tasks.push(t);
                    keep_lines.push(line);
                }
            }
        }
        input.tasks = keep_tasks;
        input.lines = keep_lines;
    }
    // Dependencies: keys name earlier lines; ids must be tasks; gates name roles.
    let refused = check_dependencies(&txn, &mut input, batch).await?;
    input.rejected.extend(refused);
    // Duplicates are found by the insert itself; a refused batch rolls back below.
    let outcomes = tasks::tasks_insert(&txn, &input.tasks).await?;
    let mut added = vec![];
    // Input index -> the id it got (None: refused as a duplicate, or waits for one).
    let mut ids: Vec<Option<i64>> = vec![None; input.tasks.len()];
    let mut key_index: std::collections::HashMap<&str, usize> = Default::default();
    let mut dropped = vec![];
    for (i, (o, line)) in outcomes.iter().zip(&input.lines).enumerate() {
        let t = &input.tasks[i];
        if let Some(k) = t.key.as_deref() {
            key_index.insert(k, i);
        }
        // A line waiting for a line that was refused is refused too (and its row,
        // inserted with the others, removed before the commit).
        let lost = t
            .after_keys
            .iter()
            .find(|k| key_index.get(k.as_str()).is_none_or(|&j| ids[j].is_none()));
        if let (Some(k), tasks::InsertOutcome::Inserted(id)) = (lost, o) {
            dropped.push(*id);
            input.rejected.push((
                *line,
                format!("after: the line with key '{k}' was refused, so this one is too"),
            ));
            continue;
        }
        match o {
            tasks::InsertOutcome::Inserted(id) => {
                ids[i] = Some(*id);
                added.push(*id);
            }
            tasks::InsertOutcome::Duplicate { key, existing } => {
                let why = match existing {
                    Some(id) => format!(
                        "duplicate unique key '{key}': task {id} with that key is not finished yet"
                    ),
                    None => format!("duplicate unique key '{key}' (repeated in this batch)"),
                };
                if !batch {
                    return Err(Error::Conflict(format!(
                        "{why}; nothing added (see `jrq show {}`)",
                        existing.unwrap_or_default()
                    )));
                }
                input.rejected.push((*line, why));
            }
        }
    }
    tasks::tasks_delete_new(&txn, &dropped).await?;
    let mut pairs = vec![];
    for (i, t) in input.tasks.iter().enumerate() {
        let Some(id) = ids[i] else { continue };
        pairs.extend(t.after.iter().map(|d| (id, *d)));
        pairs.extend(
            t.after_keys
                .iter()
                .filter_map(|k| key_index.get(k.as_str()).and_then(|&j| ids[j]))
                .map(|d| (id, d)),
        );
    }
    tasks::tasks_deps_insert(&txn, &pairs).await?;
    if batch && !input.rejected.is_empty() && !args.skip_invalid {
        txn.rollback().await?;
        input.rejected.sort();
        if args.json {
            let rejected: Vec<serde_json::Value> = input
                .rejected
                .iter()
                .map(|(line, why)| serde_json::json!({ "line": line, "reason": why }))
                .collect();
            out!(
                "{}",
                serde_json::json!({ "ids": [], "added": 0, "rejected": rejected })
            );
        } else {
            render::rejected_lines(&input.rejected);
        }
        return Err(Error::Rejected(format!(
            "{} of {} lines rejected, nothing added: fix them, or add --skip-invalid to add \
             the valid lines only",
            input.rejected.len(),
            input.rejected.len() + added.len()
        )));
    }
    txn.commit().await?;
    input.rejected.sort();
    if args.json {
        let rejected: Vec<serde_json::Value> = input
            .rejected
            .iter()
            .map(|(line, why)| serde_json::json!({ "line": line, "reason": why }))
            .collect();
        let v = if batch {
            serde_json::json!({ "ids": added, "added": added.len(), "rejected": rejected })
        } else {
            serde_json::json!({ "id": added[0] })
        };
        out!("{v}");
    } else if batch {
        render::rejected_lines(&input.rejected);
        render::batch_added(added.len(), input.rejected.len());
    } else {
        out!("{}", added[0]);
    }
    Ok(())
}

/// A task template (see [`NewTask::to_template`]) from a JSON task line, checked as an
/// enqueue would check it: its payload's size, its run and its gate's role exist.
async fn stored_task(
    client: &impl db::Sql,
    line: &str,
    what: &str,
    source: &str,
) -> Result<serde_json::Value> {
    let (t, template) =
        NewTask::template_from_json_line(line, what, source).map_err(Error::usage)?;
    t.check_payload_size(crate::task::DEFAULT_MAX_PAYLOAD_BYTES)
        .map_err(|e| Error::usage(format!("{what}: {e}")))?;
    check_stored_task(client, &t, what).await?;
    Ok(template)
}

/// What the database would refuse only when the stored task is enqueued: a run or a
/// gate's role that does not exist.
pub(super) async fn check_stored_task(
    client: &impl db::Sql,
    t: &NewTask,
    what: &str,
) -> Result<()> {
    if let Some(r) = t.run_id {
        if runs::runs_existing(client, &[r]).await?.is_empty() {
            return Err(Error::NotFound(format!(
                "{what}: there is no run {r}: create it with `jrq runs create` or check the \
                 id with `jrq runs list`"
            )));
        }
    }
    if let Some(role) = t.approve_by.as_deref().filter(|r| !r.is_empty()) {
        if roles::roles_existing(client, &[role]).await?.is_empty() {
            return Err(Error::NotFound(format!(
                "{what}: approve_by names role '{}', which does not exist: create it or \
                 name another",
                crate::text::for_terminal(role, false)
            )));
        }
    }
    Ok(())
}

/// Refuses (in a batch: the lines) what would make a dependency or a gate impossible:
/// a key given twice, an `after` key no earlier line has, a task id that does not exist,
/// a gate's role that does not exist. Returns the refused lines; keeps the rest.
async fn check_dependencies(
    client: &impl db::Sql,
    input: &mut EnqueueInput,
    batch: bool,
) -> Result<Vec<(usize, String)>> {
    let mut ids: Vec<i64> = input.tasks.iter().flat_map(|t| t.after.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    let known: std::collections::HashSet<i64> = tasks::tasks_existing(client, &ids)
        .await?
        .into_iter()
        .collect();
    let mut roles: Vec<&str> = input
        .tasks
        .iter()
        .filter_map(|t| t.approve_by.as_deref())
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort_unstable();
    roles.dedup();
    let known_roles = roles::roles_existing(client, &roles).await?;
    let mut refused = vec![];
    let mut keys: std::collections::HashMap<String, usize> = Default::default();
    let mut keep_tasks = vec![];
    let mut keep_lines = vec![];
    let tasks = std::mem::take(&mut input.tasks);
    let lines = std::mem::take(&mut input.lines);
    for (t, line) in tasks.into_iter().zip(lines) {
        let why = if let Some(id) = t.after.iter().find(|id| !known.contains(id)) {
            Some(format!(
                "after: there is no task {id} (check the id with `jrq tasks`)"
            ))
        } else if let Some(k) = t.after_keys.iter().find(|k| !keys.contains_key(*k)) {
            Some(format!(
                "after: no earlier line has key '{}' (a line may wait only for lines above it)",
                crate::text::for_terminal(k, false)
            ))
        } else if let Some(j) = t.key.as_ref().and_then(|k| keys.get(k)) {
            Some(format!(
                "key '{}' is the key of line {j} already: give each line its own",
                crate::text::for_terminal(t.key.as_deref().unwrap_or_default(), false)
            ))
        } else {
            t.approve_by
                .as_deref()
                .filter(|r| !r.is_empty() && !known_roles.contains(*r))
                .map(|r| {
                    format!(
                        "approve_by: there is no database role '{}' (CREATE ROLE it and grant \
                         it to the approvers, or use --needs-approval)",
                        crate::text::for_terminal(r, false)
                    )
                })
        };
        match why {
            Some(why) if !batch => {
                return Err(if why.starts_with("after: there is no task") {
                    Error::NotFound(why)
                } else {
                    Error::usage(why)
                })
            }
            Some(why) => refused.push((line, why)),
            None => {
                if let Some(k) = &t.key {
                    keys.insert(k.clone(), line);
                }
                keep_tasks.push(t);
                keep_lines.push(line);
            }
        }
    }
    input.tasks = keep_tasks;
    input.lines = keep_lines;
    Ok(refused)
}

async fn status(client: &Client, args: &StatusArgs) -> Result<()> {
    let t = tasks::tasks_summary(client, args.window).await?;
    let w = workers::workers_summary(client, args.online_threshold).await?;
    let held = crate::db::providers::providers_held(client).await?;
    let since = chrono::Utc::now() - chrono::Duration::from_std(args.window).unwrap_or_default();
    let (by_provider, by_worker) = tasks::usage_since(client, since).await?;
    let usage = render::StatusUsage {
        by_provider,
        by_worker,
    };
    let schedules = crate::db::schedules::schedules_summary(client).await?;
    // A holder of the vacuum horizon worth a line: 10 s or more (or a million
    // transactions behind when its age is hidden).
    let horizon = db::server::server_horizon_holder(client, None)
        .await?
        .filter(|h| h.age_s.map_or(h.xid_age >= 1_000_000, |a| a >= 10.0));
    render::status(
        &t,
        &w,
        &held,
        &usage,
        &schedules,
        horizon.as_ref(),
        args.json,
    )
}

async fn list_tasks(client: &Client, args: &TasksArgs) -> Result<()> {
    let filter = tasks::TaskFilter {
        status: args.status,
        worker: args.worker.clone(),
        run_id: match &args.run {
            Some(r) => Some(runs::runs_resolve(client, &r.0).await?),
            None => None,
        },
        provider: args.provider.clone(),
        limit: args.limit,
        before: None,
        waiting_on: args.waiting_on,
    };
    if let Some(id) = args.waiting_on {
        tasks::tasks_get_existing(client, id).await?;
    }
    let rows = tasks::tasks_list(client, &filter).await?;
    render::tasks(&rows, args.json)
}

/// Bytes of output `jrq show` reads (it prints the last lines of them).
const SHOW_OUTPUT_BYTES: i64 = 8 * 1024;

async fn show(client: &Client, args: &ShowArgs) -> Result<()> {
    let task = tasks::tasks_get_existing(client, args.id).await?;
    let events = events::events_for_task(client, args.id).await?;
    let waiting = crate::db::providers::providers_waiting(client, &task).await?;
    let usage = tasks::usage_of_task(client, args.id).await?;
    let output_tail = tasks::output_tail(client, args.id, SHOW_OUTPUT_BYTES).await?;
    let (deps, dependents) = tasks::tasks_deps_of(client, args.id).await?;
    let extras = render::ShowExtras {
        waiting: waiting.as_deref(),
        deps: &deps,
        dependents: &dependents,
        usage: &usage,
        output_tail: &output_tail,
    };
    render::show(&task, &events, &extras, args.json)
}

async fn retry(client: &mut Client, args: &RetryArgs) -> Result<()> {
    if args.all_failed && !args.filter.dry_run {
        let txn = client.transaction().await?;
        let failed: Vec<i64> = if args.from_scratch {
            let f = tasks::TaskFilter {
                status: Some(TaskStatus::Failed),
                ..Default::default()
            };
            tasks::tasks_select(&txn, &[], &f, None)
                .await?
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        } else {
            vec![]
        };
        let report = tasks::tasks_retry_all_failed(&txn, ACTOR).await?;
        if !failed.is_empty() {
            tasks::tasks_clear_checkpoint(&txn, &failed, ACTOR).await?;
        }
        txn.commit().await?;
        if args.filter.json {
            out!("{}", serde_json::json!(report));
        } else {
            render::retry_all(&report);
        }
        return Ok(());
    }
    if let ([id], false, false) = (args.ids.as_slice(), args.filter.any(), args.filter.dry_run) {
        let txn = client.transaction().await?;
        let task = tasks::tasks_retry(&txn, *id, ACTOR).await?;
        if args.from_scratch {
            tasks::tasks_clear_checkpoint(&txn, &[*id], ACTOR).await?;
        }
        txn.commit().await?;
        if args.filter.json {
            out!(
                "{}",
                serde_json::json!({ "id": task.id, "status": task.status, "max_attempts": task.max_attempts })
            );
        } else {
            match task.status {
                TaskStatus::Pending => out!(
                    "task {} is pending again ({} attempts available)",
                    task.id,
                    task.max_attempts
                ),
                TaskStatus::Waiting => out!(
                    "task {} is waiting again for its dependencies ({} attempts available)",
                    task.id,
                    task.max_attempts
                ),
                TaskStatus::AwaitingApproval => out!(
                    "task {} awaits approval again (`jrq approve {}`)",
                    task.id,
                    task.id
                ),
                other => out!(
                    "task {} is {other} again: {} (retry that one first)",
                    task.id,
                    task.error.as_deref().unwrap_or("")
                ),
            }
        }
        return Ok(());
    }
    let mut filter = args.filter.status;
    if args.all_failed {
        filter = Some(TaskStatus::Failed);
    }
    let action = if args.from_scratch {
        Bulk::RetryFromScratch
    } else {
        Bulk::Retry
    };
    bulk(client, &args.ids, &args.filter, filter, action).await
}

async fn approve(client: &mut Client, args: &ApproveArgs) -> Result<()> {
    let name = args.actor.clone().unwrap_or_else(default_created_by);
    let by = tasks::Approver {
        name: &name,
        comment: &args.comment,
    };
    let txn = client.transaction().await?;
    let done = tasks::tasks_approve(&txn, args.id, &by).await?;
    txn.commit().await?;
    if args.json {
        out!("{}", serde_json::json!(done));
    } else if done.status == TaskStatus::Pending {
        out!("task {} approved: it is pending", done.id);
    } else {
        out!(
            "task {} approved: it is {} (it runs once its dependencies complete)",
            done.id,
            done.status
        );
    }
    Ok(())
}

async fn reject(client: &mut Client, args: &RejectArgs) -> Result<()> {
    if args.reason.trim().is_empty() {
        return Err(Error::usage(
            "--reason is empty: say why the task is rejected (it is kept as its error)",
        ));
    }
    let name = args.actor.clone().unwrap_or_else(default_created_by);
    let by = tasks::Approver {
        name: &name,
        comment: &args.reason,
    };
    let txn = client.transaction().await?;
    tasks::tasks_reject(&txn, args.id, &by).await?;
    txn.commit().await?;
    if args.json {
        out!(
            "{}",
            serde_json::json!({ "id": args.id, "status": "cancelled" })
        );
    } else {
        out!("task {} rejected: it is cancelled", args.id);
    }
    Ok(())
}

async fn cancel(client: &mut Client, args: &CancelArgs) -> Result<()> {
    if let ([id], false, false) = (args.ids.as_slice(), args.filter.any(), args.filter.dry_run) {
        let id = *id;
        let txn = client.transaction().await?;
        let outcome = tasks::tasks_cancel(&txn, id, ACTOR).await?;
        txn.commit().await?;
        if args.filter.json {
            out!("{}", serde_json::json!({ "id": id, "outcome": outcome }));
            return Ok(());
        }
        match outcome {
            tasks::CancelOutcome::Cancelled => out!("task {id} cancelled"),
            tasks::CancelOutcome::Requested => out!(
                "task {id} is running: its worker was asked to end it (follow with `jrq show {id}`)"
            ),
            tasks::CancelOutcome::AlreadyRequested => out!(
                "task {id} is running and a cancel was already requested: its worker will end it"
            ),
        }
        return Ok(());
    }
    bulk(
        client,
        &args.ids,
        &args.filter,
        args.filter.status,
        Bulk::Cancel,
    )
    .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bulk {
    Cancel,
    Retry,
    /// Retry, and clear the checkpoint.
    RetryFromScratch,
}

/// A bulk cancel or retry: every task among `ids` matching the filters, each in its own
/// transaction, one line each; the statuses the action does not apply to are skipped.
/// Unknown ids make the exit status non-zero after the others are done.
async fn bulk(
    client: &mut Client,
    ids: &[i64],
    f: &BulkFilter,
    status: Option<TaskStatus>,
    action: Bulk,
) -> Result<()> {
    if ids.is_empty() && status.is_none() && !f.any() {
        return Err(Error::usage(
            "task ids or a filter are required: give ids, or --status, --provider, \
             --worker, --run, --older-than (retry also takes --all-failed)",
        ));
    }
    let filter = tasks::TaskFilter {
        status,
        worker: f.worker.clone(),
        run_id: match &f.run {
            Some(r) => Some(runs::runs_resolve(&*client, &r.0).await?),
            None => None,
        },
        provider: f.provider.clone(),
        limit: 0,
        before: None,
        waiting_on: None,
    };
    let selected = tasks::tasks_select(&*client, ids, &filter, f.older_than).await?;
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !selected.iter().any(|(s, _)| s == id))
        .collect();
    let applies = |s: TaskStatus| match action {
        Bulk::Cancel => !s.is_finished(),
        Bulk::Retry | Bulk::RetryFromScratch => {
            matches!(s, TaskStatus::Failed | TaskStatus::Cancelled)
        }
    };
    let verb = match action {
        Bulk::Cancel => "cancel",
        Bulk::Retry | Bulk::RetryFromScratch => "retry",
    };
    let (mut done, mut skipped) = (0usize, 0usize);
    // With --json, one document at the end instead of a line each.
    let (mut changed, mut passed): (Vec<i64>, Vec<serde_json::Value>) = (vec![], vec![]);
    macro_rules! line {
        ($($arg:tt)*) => {
            if !f.json {
                out!($($arg)*);
            }
        };
    }
    for (id, s) in &selected {
        if !applies(*s) {
            skipped += 1;
            let past = match action {
                Bulk::Cancel => "cancelled",
                Bulk::Retry | Bulk::RetryFromScratch => "retried",
            };
            passed.push(serde_json::json!({ "id": id, "why": format!("{s}: not {past}") }));
            line!("task {id} is {s}: not {past}");
            continue;
        }
        if f.dry_run {
            done += 1;
            changed.push(*id);
            line!("task {id} ({s}): would {verb}");
            continue;
        }
        let txn = client.transaction().await?;
        let result = match action {
            Bulk::Cancel => tasks::tasks_cancel(&txn, *id, ACTOR)
                .await
                .map(|o| match o {
                    tasks::CancelOutcome::Cancelled => format!("task {id} cancelled"),
                    tasks::CancelOutcome::Requested => {
                        format!("task {id} is running: its worker was asked to end it")
                    }
                    tasks::CancelOutcome::AlreadyRequested => {
                        format!("task {id} is running: a cancel was already requested")
                    }
                }),
            Bulk::Retry => tasks::tasks_retry(&txn, *id, ACTOR)
                .await
                .map(|_| format!("task {id} is pending again")),
            Bulk::RetryFromScratch => match tasks::tasks_retry(&txn, *id, ACTOR).await {
                Ok(_) => tasks::tasks_clear_checkpoint(&txn, &[*id], ACTOR)
                    .await
                    .map(|_| format!("task {id} is pending again, from scratch")),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(text) => {
                txn.commit().await?;
                done += 1;
                changed.push(*id);
                line!("{text}");
            }
            // Changed meanwhile (finished, retried by someone else): said, and skipped.
            Err(e @ (Error::Conflict(_) | Error::NotFound(_))) => {
                skipped += 1;
                passed.push(serde_json::json!({ "id": id, "why": e.to_string() }));
                line!("task {id}: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if f.json {
        let key = if f.dry_run { "would_change" } else { "changed" };
        out!(
            "{}",
            serde_json::json!({ key: changed, "skipped": passed, "missing": missing, "dry_run": f.dry_run })
        );
        if missing.is_empty() {
            return Ok(());
        }
    }
    let what = match (action, f.dry_run) {
        (Bulk::Cancel, false) => "cancelled (or asked to stop)",
        (Bulk::Retry | Bulk::RetryFromScratch, false) => "retried",
        (Bulk::Cancel, true) => "would be cancelled",
        (Bulk::Retry | Bulk::RetryFromScratch, true) => "would be retried",
    };
    line!(
        "{done} task(s) {what}, {skipped} skipped{}",
        if f.dry_run {
            "; dry run: nothing was changed"
        } else {
            ""
        }
    );
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|i| i.to_string()).collect();
        return Err(Error::NotFound(format!(
            "no such task(s) matching the filters: {} (see `jrq tasks`)",
            list.join(", ")
        )));
    }
    Ok(())
}

async fn runs_cmd(client: &mut Client, cmd: RunsCommand) -> Result<()> {
    match cmd {
        RunsCommand::Create {
            name,
            auto_complete,
            max_cost_usd,
            on_complete,
            on_error,
            json,
        } => {
            let mut run = runs::NewRun {
                name: name.clone(),
                auto_complete,
                max_cost_usd,
                ..Default::default()
            };
            if let Some(line) = on_complete {
                run.on_complete =
                    Some(stored_task(&*client, &line, "--on-complete", "run-callback").await?);
            }
            if let Some(line) = on_error {
                run.on_error =
                    Some(stored_task(&*client, &line, "--on-error", "run-callback").await?);
            }
            if (run.on_complete.is_some() || run.on_error.is_some()) && !auto_complete {
                eprintln!(
                    "jrq: warning: the run is not --auto-complete: its callback is enqueued \
                     only when `jrq runs set` ends it"
                );
            }
            let id = runs::runs_create(client, &run).await?;
            if json {
                out!(
                    "{}",
                    serde_json::json!({ "id": id, "name": name, "auto_complete": auto_complete, "max_cost_usd": max_cost_usd })
                );
            } else {
                out!("{id}");
            }
        }
        RunsCommand::List {
            status,
            limit,
            json,
        } => {
            let rows = runs::runs_list(client, status, limit).await?;
            render::runs(&rows, json)?;
        }
        RunsCommand::Budget { id, max_cost_usd } => {
            let id = runs::runs_resolve(&*client, &id.0).await?;
            let (resumed, paused) = runs::runs_set_budget(&*client, id, max_cost_usd.0).await?;
            match max_cost_usd.0 {
                Some(b) => out!("run {id} has a budget of ${b:.2}"),
                None => out!("run {id} has no budget"),
            }
            if resumed {
                out!("its budget pause ended: it gets assignments again");
            }
            if paused {
                out!("it has spent that already: paused (no new assignments)");
            }
        }
        RunsCommand::Set { id, status } => {
            let id = runs::runs_resolve(&*client, &id.0).await?;
            let txn = client.transaction().await?;
            runs::runs_set_status(&txn, id, status).await?;
            txn.commit().await?;
            out!("run {id} is {status}");
        }
    }
    Ok(())
}

async fn list_workers(client: &mut Client, args: &WorkersArgs) -> Result<()> {
    match &args.action {
        Some(WorkersAction::Drain { name, reason }) => {
            return super::governor::drain(client, name, reason).await
        }
        Some(WorkersAction::Undrain { name }) => {
            return super::governor::undrain(client, name).await
        }
        None => {}
    }
    let rows = workers::workers_list(&*client, args.online_threshold).await?;
    let pauses = db::providers::pauses_active(&*client, &db::Statements::default()).await?;
    render::workers(&rows, &pauses, args.json)
}

async fn prune(client: &Client, args: &PruneArgs) -> Result<()> {
    if args.dry_run {
        let report = tasks::tasks_prune_count(client, args.older_than).await?;
        return render::prune_dry_run(&report, args.json);
    }
    let report = tasks::tasks_prune(client, args.older_than).await?;
    render::prune(&report, args.json)
}

async fn roles_cmd(client: &mut Client, cmd: RolesCommand) -> Result<()> {
    match cmd {
        RolesCommand::List { json } => render::roles(&roles::roles_list(client).await?, json),
        RolesCommand::Setup => {
            let report = roles::roles_setup(client).await?;
            render::roles_setup(&report);
            if report.not_permitted.is_empty() {
                return Ok(());
            }
            let sql: Vec<String> = report
                .not_permitted
                .iter()
                .map(|g| format!("CREATE ROLE {g} NOLOGIN;"))
                .collect();
            Err(Error::Denied(format!(
                "{} not created: this user may not create roles (CREATEROLE); have a DBA run \
                 {} then run `jrq roles setup` again",
                report.not_permitted.join(", "),
                sql.join(" ")
            )))
        }
        RolesCommand::Grant { group, login } => {
            let report = roles::roles_grant(client, group, &login).await?;
            render::roles_granted(&report);
            Ok(())
        }
        RolesCommand::Revoke { group, login } => {
            if roles::roles_revoke(client, group, &login).await? {
                out!("'{login}' is no longer in {group}");
            } else {
                out!("'{login}' is not in {group}: nothing to do");
            }
            Ok(())
        }
    }
}
