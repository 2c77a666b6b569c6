//! `jr-web`: the dashboard in a real browser (headless Chromium through chromedriver), the
//! Prometheus metrics checked by promtool, `/healthz` across a database outage, the
//! authentication rules, and the unit under a real systemd user manager.
//!
//! With JRQ_SCREENSHOTS=DIR the browser test writes overview.png, workers.png and task.png
//! there (`scripts/screenshots` uses it to refresh the ones in docs/).

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::Locator;

const WAIT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (bound, then released for the program that takes it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Headless Chromium driven through chromedriver (Debian's chromium, chromium-driver).
struct Browser {
    driver: Child,
    client: Option<fantoccini::Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver; scripts/test does)");
        // fantoccini's HTTP client asks rustls for the process's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let profile = tempfile::tempdir().unwrap();
        let caps: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,1000",
                             format!("--user-data-dir={}", profile.path().display())]
                }
            }))
            .unwrap();
        // Built first: a failure below still ends the driver and the browser (Drop).
        let mut b = Browser {
            driver,
            client: None,
            _profile: profile,
        };
        let deadline = Instant::now() + WAIT;
        let client = loop {
            match fantoccini::ClientBuilder::rustls()
                .unwrap()
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no browser session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        b.client = Some(client);
        b
    }

    fn c(&self) -> &fantoccini::Client {
        self.client.as_ref().unwrap()
    }

    /// Loads `url` and waits until `css` is in the page.
    async fn open(&self, url: &str, css: &str) -> fantoccini::elements::Element {
        self.c().goto(url).await.unwrap();
        self.find(css).await
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.c().find(Locator::Css(css)).await {
                Ok(e) => return e,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!(
                    "{css} is not in the page: {e}\n{}",
                    self.c().source().await.unwrap_or_default()
                ),
            }
        }
    }

    /// The text of `css`; found again when the live page replaced the element between the
    /// find and the read (a stale element reference).
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.text().await {
                Ok(t) => return t,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{css}: cannot read its text: {e}"),
            }
        }
    }

    /// The inner HTML of the element `css` names, found again when the page's refresh
    /// replaced it between the find and the read (a stale element).
    async fn html(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.html(false).await {
                Ok(t) => return t,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{css}: cannot read its HTML: {e}"),
            }
        }
    }

    /// Attribute `name` of the element `css` names, found again when it went stale.
    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.attr(name).await {
                Ok(t) => return t,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{css}: cannot read its {name}: {e}"),
            }
        }
    }

    /// Clicks `button` and waits for the page it leads to: one whose #notice says `says`
    /// (the old page's elements go stale meanwhile).
    async fn submit(&self, button: &str, says: &str) {
        self.find(button).await.click().await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.c().find(Locator::Css("#notice")).await {
                if e.text().await.is_ok_and(|t| t.contains(says)) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no notice {says:?} after {button}:\n{}",
                self.c().source().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A screenshot of the page (PNG), kept in JRQ_SCREENSHOTS when set.
    async fn screenshot(&self, name: &str) {
        let png = self.c().screenshot().await.unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{name}"
        );
        if let Ok(dir) = std::env::var("JRQ_SCREENSHOTS") {
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
        }
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium's own processes (zygote, utilities) are not the driver's children by
        // the time a test fails: every process naming this test's profile goes.
        let profile = format!("--user-data-dir={}", self._profile.path().display());
        for (pid, _) in processes_mentioning(&profile) {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Adds a task with `jrq enqueue ARGS`; its id.
fn enqueue(db: &TestDb, args: &[&str]) -> i64 {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    db.run(&all).ok().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let gate = tempfile::tempdir().unwrap();
    let release = gate.path().join("release");
    let exec = test_executor();
    let assigner = WorkerProc::assigner(&db.url, "a1", &[]);
    let _worker = WorkerProc::start(
        &db.url,
        "w-alpha",
        &["--exec", &exec, "--capacity", "2"],
        &[],
    );
    let ok1 = enqueue(&db, &["--title", "write the summary"]);
    let ok2 = enqueue(&db, &["--title", "review the plan"]);
    let failed = enqueue(
        &db,
        &[
            "--title",
            "deploy to staging",
            "--max-attempts",
            "1",
            "--payload",
            r#"{"exit": 3, "stderr": "staging refused the deploy"}"#,
        ],
    );
    for id in [ok1, ok2] {
        wait_status(&c, id, "completed").await;
    }
    wait_status(&c, failed, "failed").await;
    let payload = serde_json::json!({"progress": [40], "wait_file": release.to_str().unwrap()});
    let running = enqueue(
        &db,
        &[
            "--title",
            "refactor the parser",
            "--payload",
            &payload.to_string(),
        ],
    );
    wait_for(WAIT, "the running task at 40 %", || async {
        count(
            &c,
            &format!(
                "SELECT count(*) FROM jr_work_queue WHERE id = {running} AND progress_percent = 40"
            ),
        )
        .await
            == 1
    })
    .await;
    let pending = enqueue(&db, &["--title", "later", "--delay", "1h"]);
    let cancelled = enqueue(&db, &["--title", "never mind", "--delay", "1h"]);
    db.run(&["cancel", &cancelled.to_string()]).ok();
    // No assigner from here on: a stale worker (its heartbeat old, its row online) and a
    // task assigned to it stay as they are.
    drop(assigner);
    exec_sql(
        &c,
        "INSERT INTO jr_status (jr_name, kind, host, pid, capacity, is_online, status, last_seen, started_at) \
         VALUES ('w-stale', 'worker', 'other-host', 4242, 1, true, 'idle', now() - interval '10 minutes', now() - interval '1 hour')",
    )
    .await;
    let assigned = enqueue(&db, &["--title", "waiting for w-stale"]);
    exec_sql(
        &c,
        &format!("UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'w-stale', assigned_at = now() WHERE id = {assigned}"),
    )
    .await;

    let web = Web::start(&db.url, &["--refresh", "300ms"], &[]);
    let b = Browser::start().await;

    // Overview: counts, the chart, the facts.
    b.open(&format!("{}/", web.base), "#throughput").await;
    assert_eq!(b.text("#count-completed .n").await, "2");
    assert_eq!(b.text("#count-failed .n").await, "1");
    assert_eq!(b.text("#count-in_progress .n").await, "1");
    assert_eq!(b.text("#count-assigned .n").await, "1");
    assert_eq!(b.text("#count-cancelled .n").await, "1");
    let svg = b.html("#throughput").await;
    assert!(svg.contains("2 completed, 1 failed"), "{svg}");
    assert!(b.text("#failure-1h").await.contains("33.3 %"));
    b.screenshot("overview").await;

    // Workers: every row, the stale one marked, the running task with its progress.
    b.open(&format!("{}/workers", web.base), "#worker-w-alpha")
        .await;
    b.find("#worker-a1").await;
    assert_eq!(
        b.attr("#worker-w-stale", "class").await.as_deref(),
        Some("stale")
    );
    assert_eq!(
        b.attr("#worker-w-alpha .current progress", "value")
            .await
            .as_deref(),
        Some("40")
    );
    b.screenshot("workers").await;

    // Live: the progress moves without a reload.
    exec_sql(
        &c,
        &format!("UPDATE jr_work_queue SET progress_percent = 70 WHERE id = {running}"),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let v = b
            .c()
            .execute(
                "var p = document.querySelector('#worker-w-alpha .current progress'); \
                 var m = document.querySelector('main'); \
                 return [p ? p.value : null, m.getAttribute('data-refreshed')];",
                vec![],
            )
            .await
            .unwrap();
        if v[0] == serde_json::json!(70.0) || v[0] == serde_json::json!(70) {
            assert!(v[1].is_string(), "the page was not refreshed in place: {v}");
            break;
        }
        assert!(Instant::now() < deadline, "progress did not move: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Tasks: the list, a filter through the form, the task page with its timeline.
    b.open(&format!("{}/tasks", web.base), "#tasks").await;
    let rows = b
        .c()
        .find_all(Locator::Css("#tasks tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 7);
    b.find("select[name=status]")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.find("form.filters button").await.click().await.unwrap();
    b.find(&format!("#task-{failed}")).await;
    let deadline = Instant::now() + WAIT;
    while b
        .c()
        .find_all(Locator::Css("#tasks tbody tr"))
        .await
        .unwrap()
        .len()
        != 1
    {
        assert!(Instant::now() < deadline, "the filter did not apply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b
        .c()
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains("status=failed"));

    b.open(&format!("{}/tasks/{failed}", web.base), "#timeline")
        .await;
    let events = count(
        &c,
        &format!("SELECT count(*) FROM jr_task_events WHERE task_id = {failed}"),
    )
    .await;
    let rows = b
        .c()
        .find_all(Locator::Css("#timeline tbody tr"))
        .await
        .unwrap();
    assert_eq!(
        rows.len() as i64,
        events + 1,
        "every event and the creation"
    );
    assert!(b
        .text("#task-error")
        .await
        .contains("staging refused the deploy"));
    assert!(b.text("#timeline").await.contains("w-alpha"));
    b.screenshot("task").await;

    // Unknown ids and pages: a page that says so, not a crash.
    assert_eq!(web.get("/tasks/999999").0, 404);
    assert_eq!(web.get("/tasks/abc").0, 404);
    assert_eq!(web.get("/tasks?status=bogus").0, 400);
    assert_eq!(web.get("/nope").0, 404);
    let _ = (pending, ok1);
    std::fs::write(&release, "").unwrap();
    b.close().await;
}

async fn exec_sql(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql).await.unwrap();
}

/// The samples of a Prometheus text: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// promtool's verdict on a metrics text (it must parse, and follow the conventions).
fn promtool_check(text: &str) {
    let out = run_with_stdin(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        text,
    );
    assert_eq!(
        out.code,
        Some(0),
        "promtool check metrics: {out:#?}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_their_counters_never_go_down() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let exec = test_executor();
    let assigner = WorkerProc::assigner(&db.url, "a1", &[]);
    let worker = WorkerProc::start(&db.url, "w1", &["--exec", &exec, "--capacity", "2"], &[]);
    let mut ids = vec![];
    for i in 0..3 {
        ids.push(enqueue(
            &db,
            &["--title", &format!("ok {i}"), "--provider", ""],
        ));
    }
    // Two attempts (a retry), then failed for good.
    let failed = enqueue(
        &db,
        &[
            "--title",
            "broken",
            "--max-attempts",
            "2",
            "--payload",
            r#"{"exit_attempt": {"1": 75}, "exit": 3}"#,
        ],
    );
    for id in &ids {
        wait_status(&c, *id, "completed").await;
    }
    wait_status(&c, failed, "failed").await;
    drop(worker);
    drop(assigner);
    // A paused schedule (no assigner ticks it): its series are there all the same.
    db.run(&[
        "schedules",
        "add",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--title",
        "n",
        "--paused",
    ])
    .ok();
    db.run(&[
        "schedules",
        "add",
        "hourly",
        "--cron",
        "@hourly",
        "--title",
        "h",
    ])
    .ok();

    let web = Web::start(&db.url, &[], &[]);
    let (status, page) = web.get("/schedules");
    assert_eq!(status, 200);
    assert!(
        page.contains("cron &#39;@hourly&#39; UTC") || page.contains("cron '@hourly' UTC"),
        "{page}"
    );
    assert!(page.contains("id=\"schedule-nightly\""), "{page}");
    let (status, text) = web.get("/metrics");
    assert_eq!(status, 200);
    promtool_check(&text);
    let m = samples(&text);
    let v = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
    assert_eq!(
        v(r#"jrq_tasks_completed_total{provider="",worker="w1"}"#),
        3.0
    );
    assert_eq!(v(r#"jrq_tasks_failed_total{provider="",worker="w1"}"#), 1.0);
    assert_eq!(v(r#"jrq_task_attempts_total{provider=""}"#), 5.0);
    assert_eq!(v(r#"jrq_task_retries_total{provider=""}"#), 1.0);
    assert_eq!(v(r#"jrq_task_run_seconds_count{provider=""}"#), 3.0);
    assert_eq!(
        v(r#"jrq_task_dispatch_seconds_bucket{provider="",le="+Inf"}"#),
        3.0
    );
    assert_eq!(v(r#"jrq_tasks{status="completed",provider=""}"#), 3.0);
    assert_eq!(v("jrq_database_up"), 1.0);
    assert_eq!(v(r#"jrq_build_info{version="0.1.0"}"#), 1.0);
    assert_eq!(v(r#"jrq_schedules{state="active"}"#), 1.0);
    assert_eq!(v(r#"jrq_schedules{state="paused"}"#), 1.0);
    assert_eq!(
        v(r#"jrq_schedule_ticks{schedule="hourly",outcome="enqueued"}"#),
        0.0
    );
    let next = v(r#"jrq_schedule_next_tick_timestamp_seconds{schedule="hourly"}"#);
    assert!(
        next > chrono::Utc::now().timestamp() as f64 && next % 3600.0 == 0.0,
        "the next full hour: {next}"
    );

    // A retry takes the failed row back to pending, a prune deletes the completed ones:
    // the counters stay where they were.
    db.run(&["retry", &failed.to_string()]).ok();
    db.run(&["prune", "--older-than", "0s"]).ok();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'"
        )
        .await,
        0
    );
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let (_, text) = web.get("/metrics");
        let m = samples(&text);
        // A fresh scrape (not the cached one) no longer sees the completed rows.
        if !m.contains_key(r#"jrq_tasks{status="completed",provider=""}"#) {
            promtool_check(&text);
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never showed the prune"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (k, want) in [
        (r#"jrq_tasks_completed_total{provider="",worker="w1"}"#, 3.0),
        (r#"jrq_tasks_failed_total{provider="",worker="w1"}"#, 1.0),
        (r#"jrq_task_attempts_total{provider=""}"#, 5.0),
        (r#"jrq_task_retries_total{provider=""}"#, 1.0),
        (r#"jrq_task_run_seconds_count{provider=""}"#, 3.0),
    ] {
        assert_eq!(after.get(k), Some(&want), "{k} after retry and prune");
    }
    // Every counter and bucket of before is still there, none lower.
    for (k, before) in &m {
        if k.contains("_total{")
            || k.contains("_bucket{")
            || k.contains("_count{")
            || k.contains("_sum{")
        {
            let now = after.get(k).copied().unwrap_or(0.0);
            assert!(now >= *before, "{k} went down: {before} -> {now}");
        }
    }
    // The gauges did move: the failed row is pending again.
    assert_eq!(after.get(r#"jrq_tasks{status="failed",provider=""}"#), None);
    assert_eq!(
        after.get(r#"jrq_tasks{status="pending",provider=""}"#),
        Some(&1.0)
    );

    // A bound is inside its bucket (Prometheus' le): a run of exactly 1 s counts under
    // le="1", a dispatch of 0 s under the first bound.
    exec_sql(
        &c,
        "INSERT INTO jr_work_queue (title, status, provider, assigned_jr, attempts, created_at, \
             run_after, started_at, completed_at) \
         VALUES ('edge', 'completed', 'edge', 'w1', 1, '2026-01-01 10:00:00+00', \
                 '2026-01-01 10:00:00+00', '2026-01-01 10:00:00+00', '2026-01-01 10:00:01+00')",
    )
    .await;
    // A bulk retry carries what it takes away too.
    exec_sql(
        &c,
        "INSERT INTO jr_work_queue (title, status, provider, assigned_jr, attempts, completed_at) \
         VALUES ('b1', 'failed', 'bulk', 'w1', 3, now()), ('b2', 'failed', 'bulk', 'w1', 3, now())",
    )
    .await;
    let fresh = |pred: &dyn Fn(&HashMap<String, f64>) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, text) = web.get("/metrics");
            let m = samples(&text);
            if pred(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "never: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let m = fresh(&|m| m.contains_key(r#"jrq_tasks{status="failed",provider="bulk"}"#));
    assert_eq!(
        m[r#"jrq_task_run_seconds_bucket{provider="edge",le="0.5"}"#],
        0.0
    );
    assert_eq!(
        m[r#"jrq_task_run_seconds_bucket{provider="edge",le="1"}"#],
        1.0
    );
    assert_eq!(
        m[r#"jrq_task_dispatch_seconds_bucket{provider="edge",le="0.001"}"#],
        1.0
    );
    assert_eq!(m[r#"jrq_task_run_seconds_sum{provider="edge"}"#], 1.0);
    assert_eq!(
        m[r#"jrq_tasks_failed_total{provider="bulk",worker="w1"}"#],
        2.0
    );
    assert_eq!(m[r#"jrq_task_attempts_total{provider="bulk"}"#], 6.0);
    let out = db.run(&["retry", "--all-failed"]);
    assert!(
        out.ok().contains("2 failed task(s) pending again"),
        "{out:#?}"
    );
    let m = fresh(&|m| !m.contains_key(r#"jrq_tasks{status="failed",provider="bulk"}"#));
    assert_eq!(
        m[r#"jrq_tasks_failed_total{provider="bulk",worker="w1"}"#],
        2.0
    );
    assert_eq!(m[r#"jrq_task_attempts_total{provider="bulk"}"#], 6.0);
}

/// A GET of /healthz with another Host header: the status.
fn http_get_host(addr: &str, host: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_when_the_database_goes_and_200_when_it_is_back() {
    let cluster = PrivateCluster::start();
    cluster.migrated().await;
    let web = Web::start(&cluster.url, &[], &[]);
    let (status, body) = web.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["schema_version"], jrq::db::migrate::latest_version());

    cluster.stop_server();
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = web.get("/healthz");
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["status"], "unavailable");
    assert!(
        j["reason"].as_str().unwrap().contains("PostgreSQL"),
        "{body}"
    );
    // The pages say so; /metrics answers with jrq_database_up 0.
    let (status, page) = web.get("/");
    assert_eq!(status, 503);
    assert!(page.contains("cannot connect to PostgreSQL"), "{page}");
    let (status, text) = web.get("/metrics");
    assert_eq!(status, 200);
    let deadline = Instant::now() + WAIT;
    let mut text = text;
    while samples(&text).get("jrq_database_up") != Some(&0.0) {
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = web.get("/metrics").1;
    }

    cluster.start_server();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = web.get("/healthz");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(web.get("/").0, 200);

    // A database without the schema is not healthy either.
    let empty = TestDb::empty().await;
    let web = Web::start(&empty.url, &[], &[]);
    let (status, body) = web.get("/healthz");
    assert_eq!(status, 503);
    assert!(body.contains("jrq migrate"), "{body}");
}

#[tokio::test]
async fn jr_web_listens_beyond_loopback_only_with_a_password() {
    let db = TestDb::new().await;
    let out = Run::from(
        bin("jr-web")
            .env("DATABASE_URL", &db.url)
            .args(["--listen", "0.0.0.0:0"])
            .output()
            .unwrap(),
    );
    out.fails(2, "refusing to listen on 0.0.0.0:0 without authentication");
    assert!(out.stderr.contains("JRQ_WEB_PASSWORD"));
    // The password is never an option.
    let out = Run::from(bin("jr-web").args(["--password", "x"]).output().unwrap());
    assert_eq!(out.code, Some(2), "{out:#?}");

    let web = Web::start(
        &db.url,
        &[],
        &[
            ("JRQ_WEB_PASSWORD", "correct horse"),
            ("JRQ_WEB_USER", "ops"),
        ],
    );
    assert_eq!(http_get(&web.base, "/", None).0, 401);
    assert_eq!(http_get(&web.base, "/metrics", None).0, 401);
    assert_eq!(http_get(&web.base, "/", Some("ops:wrong")).0, 401);
    assert_eq!(http_get(&web.base, "/", Some("ops:correct horse")).0, 200);
    assert_eq!(
        http_get(&web.base, "/metrics", Some("ops:correct horse")).0,
        200
    );
    // Health checks need no password (they say nothing but up or down).
    assert_eq!(http_get(&web.base, "/healthz", None).0, 200);
    // The password is not in its log.
    assert!(!web.log().contains("correct horse"), "{}", web.log());

    // Without a password, only this host's names are served (DNS rebinding).
    let local = Web::start(&db.url, &[], &[]);
    let addr = local.base.strip_prefix("http://").unwrap().to_string();
    let port = addr.rsplit_once(':').unwrap().1;
    assert_eq!(http_get_host(&addr, &format!("localhost:{port}")), 200);
    assert_eq!(http_get_host(&addr, &format!("evil.example:{port}")), 421);
}

#[tokio::test]
async fn jr_web_runs_as_a_user_unit() {
    let db = TestDb::new().await;
    let sd = UserSystemd::start(&[("DATABASE_URL", &db.url)]);
    let port = free_port();
    sd.drop_in(
        "jr-web.service",
        &format!(
            "[Service]\nExecStart=\nExecStart=%h/.local/bin/jr-web --listen 127.0.0.1:{port}\n"
        ),
    );
    let started = sd.ctl(&["start", "jr-web.service"]);
    assert_eq!(
        started.code,
        Some(0),
        "{started:#?}\n{}\n{:#?}",
        sd.log("jr-web.service"),
        sd.ctl(&["status", "--no-pager", "jr-web.service"])
    );
    sd.wait_prop("jr-web.service", "ActiveState", "active", WAIT)
        .await;
    let base = format!("http://127.0.0.1:{port}");
    let (status, body) = http_get(&base, "/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert!(sd
        .prop("jr-web.service", "StatusText")
        .starts_with("serving on"));
    sd.ctl(&["stop", "jr-web.service"]).ok();
    sd.wait_prop("jr-web.service", "ActiveState", "inactive", WAIT)
        .await;
    assert_eq!(sd.prop("jr-web.service", "Result"), "success");
}

#[test]
fn the_documented_alerts_load_and_fire_on_jr_webs_series() {
    let root = project_root();
    let check = Run::from(
        std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(root.join("docs/prometheus-alerts.yml"))
            .output()
            .expect("promtool (apt-get install prometheus; scripts/test does)"),
    );
    assert_eq!(check.code, Some(0), "{check:#?}");
    let test = Run::from(
        std::process::Command::new("promtool")
            .args(["test", "rules"])
            .arg(root.join("tests/fixtures/prometheus-alerts.test.yml"))
            .output()
            .unwrap(),
    );
    assert_eq!(test.code, Some(0), "{test:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_go_through_the_forms_with_the_password_and_the_token_and_are_recorded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let exec = test_executor();
    let assigner = WorkerProc::assigner(&db.url, "a1", &[]);
    let _worker = WorkerProc::start(&db.url, "w1", &["--exec", &exec], &[]);
    let failed = enqueue(
        &db,
        &[
            "--title",
            "deploy",
            "--max-attempts",
            "1",
            "--payload",
            r#"{"exit": 3}"#,
        ],
    );
    wait_status(&c, failed, "failed").await;
    drop(assigner);
    db.run(&["providers", "set", "claude", "--max-running", "4"])
        .ok();
    let fingerprint = db.fingerprint().await;

    // Read-only by default: no buttons, and a POST is refused even with the password.
    let pw = [("JRQ_WEB_PASSWORD", "s3cret pw"), ("JRQ_WEB_USER", "ops")];
    let ro = Web::start(&db.url, &[], &pw);
    let (_, page) = http_get(&ro.base, &format!("/tasks/{failed}"), Some("ops:s3cret pw"));
    assert!(!page.contains("task-actions"), "{page}");
    let (status, body) = http_post(
        &ro.base,
        &format!("/tasks/{failed}/retry"),
        "csrf=x",
        Some("ops:s3cret pw"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allow-actions"), "{body}");
    drop(ro);
    // Actions without a password are refused at start.
    let out = Run::from(
        bin("jr-web")
            .env("DATABASE_URL", &db.url)
            .args(["--listen", "127.0.0.1:0", "--allow-actions"])
            .output()
            .unwrap(),
    );
    out.fails(2, "--allow-actions needs authentication");

    let web = Web::start(&db.url, &["--allow-actions", "--refresh", "0s"], &pw);
    // Without the password, or without the page's token: refused, nothing changed.
    let path = format!("/tasks/{failed}/retry");
    assert_eq!(http_post(&web.base, &path, "csrf=x", None).0, 401);
    let (status, body) = http_post(&web.base, &path, "csrf=forged", Some("ops:s3cret pw"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(
        http_post(&web.base, &path, "", Some("ops:s3cret pw")).0,
        403
    );
    assert_eq!(db.fingerprint().await, fingerprint);

    // Through the forms, in the browser, with the password.
    let b = Browser::start().await;
    let authed = web.base.replace("http://", "http://ops:s3cret%20pw@");
    b.open(&format!("{authed}/tasks/{failed}"), "#task-actions")
        .await;
    b.submit(
        "#task-actions form[action$='/retry'] button",
        "pending again",
    )
    .await;
    assert_eq!(status_of(&c, failed).await, "pending");
    let actor: String = c
        .query_one(
            "SELECT actor FROM jr_task_events WHERE task_id = $1 AND action = 'retried'",
            &[&failed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, "web:ops");
    // The timeline shows who did it.
    b.open(&format!("{}/tasks/{failed}", web.base), "#timeline")
        .await;
    assert!(b.text("#timeline").await.contains("web:ops"));
    // Cancel it (pending: at once).
    b.submit("#task-actions form[action$='/cancel'] button", "cancelled")
        .await;
    assert_eq!(status_of(&c, failed).await, "cancelled");

    // Drain and undrain a worker from the workers page.
    b.open(&format!("{}/workers", web.base), "#worker-w1").await;
    b.find("#worker-w1 input[name=reason]")
        .await
        .send_keys("maintenance")
        .await
        .unwrap();
    b.submit("#worker-w1 form[action$='/drain'] button", "is draining")
        .await;
    let row = c
        .query_one(
            "SELECT reason, set_by FROM jr_pauses WHERE scope = 'worker' AND target = 'w1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "draining: maintenance");
    assert_eq!(row.get::<_, String>(1), "web:ops");
    b.submit(
        "#worker-w1 form[action$='/undrain'] button",
        "takes tasks again",
    )
    .await;
    assert_eq!(count(&c, "SELECT count(*) FROM jr_pauses").await, 0);

    // Pause and resume a provider from the overview.
    b.open(&format!("{}/", web.base), "#providers").await;
    b.find("#providers input[name=reason]")
        .await
        .send_keys("quota")
        .await
        .unwrap();
    b.submit(
        "#providers form[action$='/pause'] button",
        "provider 'claude' paused",
    )
    .await;
    let row = c
        .query_one(
            "SELECT reason, set_by FROM jr_pauses WHERE scope = 'provider' AND target = 'claude'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "quota");
    assert_eq!(row.get::<_, String>(1), "web:ops");
    b.submit("#providers form[action$='/resume'] button", "resumed")
        .await;
    assert_eq!(count(&c, "SELECT count(*) FROM jr_pauses").await, 0);
    // An action that does not apply says why.
    let token = b
        .find("#providers form input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let (status, body) = http_post(
        &web.base,
        &format!("/tasks/{failed}/cancel"),
        &format!("csrf={token}"),
        Some("ops:s3cret pw"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already cancelled"), "{body}");
    b.close().await;
}
