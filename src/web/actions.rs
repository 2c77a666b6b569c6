//! The dashboard's actions — retry, cancel, approve or reject a task, pause or resume a provider, drain or
//! undrain a worker — off unless `--allow-actions` (which needs a password). Each is a POST
//! of a form that carries the page's CSRF token (a random secret of this process, compared
//! in constant time; a page of another site cannot read it) from a page of this origin
//! (`Origin`, when the browser sends it, must be this host). The acting user is recorded:
//! in the task's timeline (`web:USER`) and as who set a pause.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;

use super::pages::{self, urlencode, Nav};
use super::pool;
use super::routes::App;
use crate::db::{providers, tasks, workers};
use crate::error::{Error, Result};

/// What every action's form sends.
#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub reason: String,
}

/// A new CSRF token: 128 bits from the system's random source.
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string()
}

/// Refuses what is not an allowed, same-origin POST with this process's token.
fn check(
    app: &App,
    headers: &HeaderMap,
    form: &ActionForm,
) -> std::result::Result<String, Box<Response>> {
    let refuse = |code: StatusCode, msg: &str| {
        Err(Box::new(
            (
                code,
                pages::problem("Action refused", Nav::Overview, msg, None),
            )
                .into_response(),
        ))
    };
    let Some(user) = app.actor() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "actions are off: start jr-web with --allow-actions (it needs JRQ_WEB_PASSWORD)",
        );
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
        if !same {
            return refuse(
                StatusCode::FORBIDDEN,
                "this form was not sent from the dashboard's own pages (Origin)",
            );
        }
    }
    if !super::routes::constant_time_eq(form.csrf.as_bytes(), app.csrf().as_bytes()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the form's token is not this dashboard's (reload the page and try again)",
        );
    }
    Ok(user)
}

/// The answer to an action: back to `to` with what happened, or a page with the error.
fn done(result: Result<String>, to: &str) -> Response {
    match result {
        Ok(notice) => {
            let sep = if to.contains('?') { '&' } else { '?' };
            Redirect::to(&format!("{to}{sep}notice={}", urlencode(&notice))).into_response()
        }
        Err(e) => {
            let code = match &e {
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Usage(_) => StatusCode::BAD_REQUEST,
                Error::Denied(_) => StatusCode::FORBIDDEN,
                e if e.sqlstate() == Some("42501") || e.sqlstate() == Some("25006") => {
                    return (
                        StatusCode::FORBIDDEN,
                        pages::problem(
                            "Action failed",
                            Nav::Overview,
                            &format!(
                                "{e}: the dashboard's database login may not write — give \
                                 it a login in the jrq_admin group (jr-web.env) for actions"
                            ),
                            None,
                        ),
                    )
                        .into_response()
                }
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (
                code,
                pages::problem("Action failed", Nav::Overview, &e.to_string(), None),
            )
                .into_response()
        }
    }
}

/// Runs `f` in a READ WRITE transaction of its own (the pool's sessions are read-only by
/// default) and commits it.
async fn write<T>(
    app: &App,
    f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let mut c = pool::get(app.pool()).await?;
    let txn = c.build_transaction().read_only(false).start().await?;
    let v = f(&txn).await?;
    txn.commit().await?;
    Ok(v)
}

/// An action's whole answer: the checks, then `f` with the acting user, then back to `to`
/// with what it did (or a page with why not).
async fn act(
    app: &App,
    headers: &HeaderMap,
    form: &ActionForm,
    to: &str,
    f: impl AsyncFnOnce(String) -> Result<String>,
) -> Response {
    match check(app, headers, form) {
        Ok(user) => done(f(user).await, to),
        Err(r) => *r,
    }
}

fn task_id(id: &str) -> Result<i64> {
    id.parse()
        .map_err(|_| Error::NotFound(format!("'{id}' is not a task id")))
}

pub async fn retry_task(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &app,
        &headers,
        &form,
        &format!("/tasks/{id}"),
        async |user| {
            let id = task_id(&id)?;
            let t = write(&app, async |txn| tasks::tasks_retry(txn, id, &user).await).await?;
            Ok(format!("task {} is {} again", t.id, t.status))
        },
    )
    .await
}

pub async fn cancel_task(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &app,
        &headers,
        &form,
        &format!("/tasks/{id}"),
        async |user| {
            let id = task_id(&id)?;
            let outcome =
                write(&app, async |txn| tasks::tasks_cancel(txn, id, &user).await).await?;
            Ok(match outcome {
                tasks::CancelOutcome::Cancelled => format!("task {id} cancelled"),
                tasks::CancelOutcome::Requested => {
                    format!("task {id} is running: its worker was asked to end it")
                }
                tasks::CancelOutcome::AlreadyRequested => {
                    format!("task {id}: a cancel was already requested")
                }
            })
        },
    )
    .await
}

pub async fn approve_task(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &app,
        &headers,
        &form,
        &format!("/tasks/{id}"),
        async |user| {
            let id = task_id(&id)?;
            let by = tasks::Approver {
                name: &user,
                comment: &form.reason,
            };
            let a = write(&app, async |txn| tasks::tasks_approve(txn, id, &by).await).await?;
            Ok(format!("task {id} approved: it is {}", a.status))
        },
    )
    .await
}

pub async fn reject_task(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &app,
        &headers,
        &form,
        &format!("/tasks/{id}"),
        async |user| {
            let id = task_id(&id)?;
            if form.reason.trim().is_empty() {
                return Err(Error::Usage(
                    "a rejection needs a reason: it is kept as the task's error".into(),
                ));
            }
            let by = tasks::Approver {
                name: &user,
                comment: &form.reason,
            };
            write(&app, async |txn| tasks::tasks_reject(txn, id, &by).await).await?;
            Ok(format!("task {id} rejected: it is cancelled"))
        },
    )
    .await
}

pub async fn pause_provider(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&app, &headers, &form, "/", async |user| {
        let name = crate::validate::parse_provider(&name).map_err(Error::Usage)?;
        let reason = form.reason.trim();
        write(&app, async |txn| {
            providers::pauses_set(txn, "provider", &name, None, reason, &user).await
        })
        .await?;
        Ok(format!(
            "provider '{name}' paused: no new assignments; running tasks finish"
        ))
    })
    .await
}

pub async fn resume_provider(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&app, &headers, &form, "/", async |user| {
        let was = write(&app, async |txn| {
            providers::pauses_clear(txn, "provider", &name).await
        })
        .await?;
        tracing::info!(provider = %name, by = %user, was_paused = was, "resume from the dashboard");
        Ok(if was {
            format!("provider '{name}' resumed")
        } else {
            format!("provider '{name}' was not paused: nothing changed")
        })
    })
    .await
}

pub async fn drain_worker(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&app, &headers, &form, "/workers", async |user| {
        let mut c = pool::get(app.pool()).await?;
        let n = workers::workers_drain(&mut c, &name, &form.reason, &user).await?;
        Ok(format!(
            "worker '{name}' is draining: it takes nothing new; {n} assigned task(s) went back to pending"
        ))
    })
    .await
}

pub async fn undrain_worker(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&app, &headers, &form, "/workers", async |user| {
        let was = write(&app, async |txn| {
            providers::pauses_clear(txn, "worker", &name).await
        })
        .await?;
        tracing::info!(worker = %name, by = %user, was_draining = was, "undrain from the dashboard");
        Ok(if was {
            format!("worker '{name}' takes tasks again")
        } else {
            format!("worker '{name}' was not draining: nothing changed")
        })
    })
    .await
}
