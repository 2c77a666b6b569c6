//! The dashboard's routes and handlers, the authentication guard and the security headers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::pages::{self, Nav, TaskQuery};
use super::pool::{self, Pool};
use super::{chart, WebConfig, CHART_MINUTES, DB_DEADLINE, METRICS_DEADLINE, METRICS_MAX_AGE};
use crate::db::{self, events, providers, tasks, workers, Statements};
use crate::error::{Error, Result};
use crate::metrics::Snapshot;
use crate::monitor::Monitor;
use crate::task::TaskStatus;

const STYLE: &str = include_str!("static/style.css");
/// Bytes of live output the task page shows (its end).
const TASK_OUTPUT_BYTES: i64 = 16 * 1024;
const SCRIPT: &str = include_str!("static/live.js");

/// What every handler shares.
pub struct App {
    cfg: WebConfig,
    pool: Pool,
    monitor: Monitor,
    /// The last `/metrics` answer and when it was made.
    metrics: Mutex<Option<(Instant, String)>>,
    /// The forms' CSRF token (actions on only).
    csrf: String,
}

impl App {
    pub fn new(cfg: WebConfig, pool: Pool) -> Arc<App> {
        let monitor = Monitor::new(cfg.monitor.clone());
        Arc::new(App {
            cfg,
            pool,
            monitor,
            metrics: Mutex::new(None),
            csrf: super::actions::new_token(),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Who the actions name (`web:USER`), when actions are on.
    pub fn actor(&self) -> Option<String> {
        match (&self.cfg.auth, self.cfg.allow_actions) {
            (Some(a), true) => Some(format!("web:{}", a.user)),
            _ => None,
        }
    }

    /// What a page needs besides its data; `q` is its query string's notice.
    fn ctx(&self, notice: Option<String>) -> pages::Ctx {
        pages::Ctx {
            refresh: self.cfg.refresh,
            notice: notice.filter(|n| !n.is_empty()),
            csrf: self.actor().map(|_| self.csrf.clone()),
        }
    }

    /// "database ok" or why not, for the STATUS= line.
    pub async fn database_state(&self) -> String {
        match self.ready().await {
            Ok(v) => format!("database ok (schema V{v})"),
            Err(e) => format!("database unavailable: {e}"),
        }
    }

    /// A connection, and the schema this program needs behind it (within
    /// [`DB_DEADLINE`]).
    async fn ready(&self) -> Result<i32> {
        bounded("the database check", async {
            let c = pool::get(&self.pool).await?;
            db::check_schema(&c).await?;
            Ok(crate::db::migrate::latest_version())
        })
        .await
    }
}

/// `work` within [`DB_DEADLINE`], or an error saying what did not answer in time.
async fn bounded<T>(what: &str, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    bounded_by(DB_DEADLINE, what, work).await
}

/// `work` within `limit`.
async fn bounded_by<T>(
    limit: std::time::Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect {
            target: "the database".into(),
            reason: format!(
                "{what} got no answer within {}",
                crate::validate::format_duration(limit)
            ),
        }),
    }
}

/// The router with every route, the guard and the headers.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/workers", get(workers_page))
        .route("/tasks", get(tasks_page))
        .route("/schedules", get(schedules_page))
        .route("/tasks/{id}", get(task_page))
        .route("/tasks/{id}/retry", post(super::actions::retry_task))
        .route("/tasks/{id}/cancel", post(super::actions::cancel_task))
        .route("/tasks/{id}/approve", post(super::actions::approve_task))
        .route("/tasks/{id}/reject", post(super::actions::reject_task))
        .route(
            "/providers/{name}/pause",
            post(super::actions::pause_provider),
        )
        .route(
            "/providers/{name}/resume",
            post(super::actions::resume_provider),
        )
        .route("/workers/{name}/drain", post(super::actions::drain_worker))
        .route(
            "/workers/{name}/undrain",
            post(super::actions::undrain_worker),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/static/style.css", get(style))
        .route("/static/live.js", get(script))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

/// Authentication (when configured) and the headers every answer carries.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // Without a password the dashboard is for this host only: a page of another site that
    // points a name of its own at 127.0.0.1 (DNS rebinding) sends that name as Host.
    if app.cfg.auth.is_none() && !host_allowed(req.headers(), &app.cfg.listen) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers to localhost and its own address only (Host header); \
             set JRQ_WEB_PASSWORD to serve other names\n",
        )
            .into_response();
    }
    let open = matches!(req.uri().path(), "/healthz");
    if let (Some(auth), false) = (&app.cfg.auth, open) {
        if !authorized(req.headers(), auth) {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                "authentication required: the user and password of JRQ_WEB_USER / JRQ_WEB_PASSWORD\n",
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"jrq\", charset=\"UTF-8\""),
            );
            return r;
        }
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// Whether the Host header names this host: `localhost`, a loopback address, or the
/// address listened on (any port). No Host header (HTTP/1.0 tools) passes.
fn host_allowed(headers: &HeaderMap, listen: &std::net::SocketAddr) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == listen.ip(),
        Err(_) => false,
    }
}

/// Whether the request carries the configured user and password (compared in constant
/// time).
fn authorized(headers: &HeaderMap, auth: &super::Auth) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", auth.user, auth.password);
    constant_time_eq(&decoded, expected.as_bytes())
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A page for an error: 503 when the database is away (the page keeps refreshing and
/// recovers by itself), 404 for what does not exist, 400 for bad input.
fn failure(title: &str, nav: Nav, e: &Error, refresh: Option<Duration>) -> Response {
    let status = match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Usage(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(page = title, error = %e, "page failed");
    }
    (status, pages::problem(title, nav, &e.to_string(), refresh)).into_response()
}

/// The `notice` of a page's query string (what the last action did).
#[derive(Debug, Default, serde::Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

async fn overview(State(app): State<Arc<App>>, Query(n): Query<NoticeQuery>) -> Response {
    let ctx = app.ctx(n.notice);
    match overview_data(&app).await {
        Ok(o) => pages::overview(&o, &ctx).into_response(),
        Err(e) => failure("Overview", Nav::Overview, &e, ctx.refresh),
    }
}

async fn overview_data(app: &App) -> Result<pages::Overview> {
    let c = pool::get(&app.pool).await?;
    let hour = tasks::tasks_summary(&*c, Duration::from_secs(3600)).await?;
    let day = tasks::tasks_summary(&*c, Duration::from_secs(86_400)).await?;
    let minutes = tasks::tasks_per_minute(&*c, CHART_MINUTES)
        .await?
        .into_iter()
        .map(|(at, completed, failed)| chart::Minute {
            at,
            completed,
            failed,
        })
        .collect();
    Ok(pages::Overview {
        hour,
        day_failure_rate: day.failure_rate,
        by_provider: tasks::tasks_by_provider(&*c).await?,
        minutes,
        providers: providers::providers_list(&*c).await?,
        pauses: providers::pauses_active(&*c, &Statements::default()).await?,
        held: providers::providers_held(&*c).await?,
        workers: workers::workers_summary(&*c, app.cfg.online_threshold).await?,
        report: app.monitor.observe(&c).await?,
        usage: tasks::usage_since(&*c, chrono::Utc::now() - chrono::Duration::hours(24)).await?,
    })
}

async fn workers_page(State(app): State<Arc<App>>, Query(n): Query<NoticeQuery>) -> Response {
    let ctx = app.ctx(n.notice);
    let refresh = ctx.refresh;
    let data = async {
        let c = pool::get(&app.pool).await?;
        let rows = workers::workers_list(&*c, app.cfg.online_threshold).await?;
        let running = tasks::tasks_list(
            &*c,
            &tasks::TaskFilter {
                status: Some(TaskStatus::InProgress),
                limit: 10_000,
                ..Default::default()
            },
        )
        .await?;
        let pauses = providers::pauses_active(&*c, &Statements::default()).await?;
        Ok::<_, Error>((rows, running, pauses))
    };
    match data.await {
        Ok((rows, running, pauses)) => {
            pages::workers(&rows, &running, &pauses, &ctx).into_response()
        }
        Err(e) => failure("Workers", Nav::Workers, &e, refresh),
    }
}

async fn schedules_page(State(app): State<Arc<App>>, Query(n): Query<NoticeQuery>) -> Response {
    let ctx = app.ctx(n.notice);
    let refresh = ctx.refresh;
    let data = async {
        let c = pool::get(&app.pool).await?;
        crate::db::schedules::schedules_list(&*c).await
    };
    match data.await {
        Ok(rows) => pages::schedules(&rows, &ctx).into_response(),
        Err(e) => failure("Schedules", Nav::Schedules, &e, refresh),
    }
}

async fn tasks_page(State(app): State<Arc<App>>, Query(q): Query<TaskQuery>) -> Response {
    let data = async {
        let filter = task_filter(&q, app.cfg.page_size)?;
        let limit = filter.limit;
        let c = pool::get(&app.pool).await?;
        Ok::<_, Error>((tasks::tasks_list(&*c, &filter).await?, limit))
    };
    match data.await {
        // The list does not refresh by itself: it would move under the reader.
        Ok((rows, limit)) => pages::tasks(&rows, &q, limit, None).into_response(),
        Err(e) => failure("Tasks", Nav::Tasks, &e, None),
    }
}

/// The list's filters from the query string; a bad value is a 400 that says which.
fn task_filter(q: &TaskQuery, page_size: i64) -> Result<tasks::TaskFilter> {
    let some = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let status = some(&q.status)
        .map(|s| s.parse::<TaskStatus>())
        .transpose()
        .map_err(Error::Usage)?;
    let run_id = some(&q.run)
        .map(|r| crate::validate::parse_run_id(&r))
        .transpose()
        .map_err(Error::Usage)?;
    let limit = q.limit.unwrap_or(page_size);
    if !(1..=1000).contains(&limit) {
        return Err(Error::Usage(format!(
            "limit {limit} is out of range: give 1 to 1000"
        )));
    }
    Ok(tasks::TaskFilter {
        status,
        worker: some(&q.worker),
        run_id,
        provider: q.provider.clone().filter(|p| !p.is_empty()),
        limit,
        before: q.before,
        waiting_on: None,
    })
}

async fn task_page(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(n): Query<NoticeQuery>,
) -> Response {
    let ctx = app.ctx(n.notice);
    let data = async {
        let id: i64 = id.parse().map_err(|_| {
            Error::NotFound(format!(
                "'{id}' is not a task id: task ids are whole numbers (see the task list)"
            ))
        })?;
        let c = pool::get(&app.pool).await?;
        let task = tasks::tasks_get_existing(&*c, id).await?;
        let events = events::events_for_task(&*c, id).await?;
        let waiting = providers::providers_waiting(&*c, &task).await?;
        let (deps, dependents) = tasks::tasks_deps_of(&*c, id).await?;
        let extras = pages::TaskExtras {
            waiting,
            usage: tasks::usage_of_task(&*c, id).await?,
            output: tasks::output_tail(&*c, id, TASK_OUTPUT_BYTES).await?,
            deps,
            dependents,
        };
        Ok::<_, Error>((task, events, extras))
    };
    match data.await {
        Ok((task, events, extras)) => {
            // A task that can still change refreshes by itself.
            let ctx = if task.status.is_finished() {
                ctx.still()
            } else {
                ctx
            };
            pages::task(&task, &events, &extras, &ctx).into_response()
        }
        Err(e) => failure("Task", Nav::Tasks, &e, None),
    }
}

/// `/metrics`: Prometheus' text format. With the database away it still answers, with
/// `jrq_database_up 0`.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut cache = app.metrics.lock().await;
    let text = match &*cache {
        Some((at, text)) if at.elapsed() < METRICS_MAX_AGE => text.clone(),
        _ => {
            let snapshot = bounded_by(METRICS_DEADLINE, "the metrics' reads", async {
                let c = pool::get(&app.pool).await?;
                Snapshot::gather(&*c, app.cfg.online_threshold).await
            });
            let text = match snapshot.await {
                Ok(s) => s.render(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: the database cannot be read");
                    Snapshot::default().render()
                }
            };
            *cache = Some((Instant::now(), text.clone()));
            text
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `/healthz`: 200 and `{"status":"ok",…}` when the database answers and its schema is
/// the one this program needs; 503 with the reason otherwise.
async fn healthz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    // Open to health checkers; the reason (it names the database's host and name) only to
    // those who may look, when a password is set.
    let may_know = app
        .cfg
        .auth
        .as_ref()
        .is_none_or(|a| authorized(&headers, a));
    let (status, body) = match app.ready().await {
        Ok(v) => (
            StatusCode::OK,
            serde_json::json!({ "status": "ok", "database": "reachable", "schema_version": v }),
        ),
        Err(e) if may_know => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unavailable", "reason": e.to_string() }),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unavailable" }),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::problem(
            "Not found",
            Nav::Overview,
            "There is no such page: the dashboard has Overview, Workers and Tasks.",
            None,
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_authentication_compares_user_and_password() {
        let auth = super::super::Auth {
            user: "jrq".into(),
            password: "s3cret".into(),
        };
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, &auth));
        let good = base64::engine::general_purpose::STANDARD.encode("jrq:s3cret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {good}").parse().unwrap(),
        );
        assert!(authorized(&h, &auth));
        let bad = base64::engine::general_purpose::STANDARD.encode("jrq:s3cre");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {bad}").parse().unwrap(),
        );
        assert!(!authorized(&h, &auth));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
    }

    #[test]
    fn without_a_password_only_this_hosts_names_are_served() {
        let listen: std::net::SocketAddr = "127.0.0.1:8470".parse().unwrap();
        let with = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            host_allowed(&m, &listen)
        };
        for ok in [
            "localhost:8470",
            "LOCALHOST",
            "127.0.0.1:8470",
            "[::1]:8470",
            "127.0.0.2",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in [
            "evil.example:8470",
            "evil.example",
            "10.0.0.1:8470",
            "[fe80::1]:80",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(host_allowed(&HeaderMap::new(), &listen));
    }
}
