//! jr-stale-cleanup against real worker processes and a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{Run, TestDb, WorkerProc};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

fn cleanup(db: &TestDb, args: &[&str]) -> Run {
    Run::from(
        common::bin("jr-stale-cleanup")
            .env("DATABASE_URL", &db.url)
            .args(args)
            .output()
            .unwrap(),
    )
}

fn alive(pid: i32) -> bool {
    jrq::host::is_live_worker(pid)
}

/// A process that is not a worker but has "jr-queue-worker" in its command line.
struct Impostor(std::process::Child);

impl Impostor {
    fn start() -> Impostor {
        Impostor(
            std::process::Command::new("bash")
                .args(["-c", "exec -a jr-queue-worker sleep 300"])
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_worker_of_a_finished_run_is_stale_and_ended_by_force_and_nothing_else_is() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let done_run = db.run(&["runs", "create"]).ok().trim().to_string();
    let live_run = db.run(&["runs", "create"]).ok().trim().to_string();
    let mut stale = WorkerProc::start(
        &db.url,
        "run_w",
        &["--exec", "noop"],
        &[("RUN_FILTER_ID", &done_run)],
    );
    let active = WorkerProc::start(
        &db.url,
        "live_w",
        &["--exec", "noop", "--run", &live_run],
        &[],
    );
    let impostor = Impostor::start();
    stale.wait_log(T, "worker ready").await;
    active.wait_log(T, "worker ready").await;
    // The old failure: a worker that keeps polling after its run ended. Freeze it so that
    // it cannot notice by itself, then finish the run.
    stale.signal(Signal::SIGSTOP);
    client
        .execute(
            "UPDATE jr_runs SET status = 'completed' WHERE id = $1::text::uuid",
            &[&done_run],
        )
        .await
        .unwrap();

    let before = db.fingerprint().await;
    let out = cleanup(&db, &[]);
    let text = out.ok();
    assert!(
        text.contains(&format!(
            "STALE pid {} worker run_w: targeting run {done_run} (status: completed)",
            stale.pid()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ok    pid {} worker live_w: targeting run {live_run} (status: active); registered",
            active.pid()
        )),
        "{text}"
    );
    assert!(
        !text.contains(&format!("pid {} ", impostor.0.id())),
        "{text}"
    );
    assert!(text.contains("Found 1 stale worker(s)"), "{text}");
    assert!(text.contains("Dry run: nothing was changed"), "{text}");
    assert!(alive(stale.pid()), "a dry run ends nothing");
    assert_eq!(db.fingerprint().await, before, "a dry run changes nothing");

    let out = cleanup(&db, &["--force", "--grace", "1s"]);
    let text = out.ok();
    assert!(
        text.contains(&format!("STALE pid {} worker run_w", stale.pid())),
        "{text}"
    );
    assert!(text.contains("killed with SIGKILL after 1s"), "{text}");
    assert!(text.contains("Cleanup complete"), "{text}");
    stale.wait_exit(T).await;
    assert!(
        alive(active.pid()),
        "a worker of an active run is left alone"
    );
    assert!(
        std::fs::metadata(format!("/proc/{}", impostor.0.id())).is_ok(),
        "a process that is not a worker is never touched"
    );
    // The registry row of the ended worker is released on the database side.
    let online: bool = client
        .query_one(
            "SELECT is_online FROM jr_status WHERE jr_name = 'run_w'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!online);
}

#[tokio::test]
async fn of_two_processes_with_one_name_the_one_the_registry_does_not_name_is_ended() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let mut first = WorkerProc::start(&db.url, "dup_w", &["--exec", "noop"], &[]);
    first.wait_log(T, "worker ready").await;
    // The first instance hangs; its heartbeat goes stale and a second takes the name over.
    first.signal(Signal::SIGSTOP);
    client
        .execute(
            "UPDATE jr_status SET last_seen = now() - interval '1 hour' WHERE jr_name = 'dup_w'",
            &[],
        )
        .await
        .unwrap();
    let second = WorkerProc::start(&db.url, "dup_w", &["--exec", "noop"], &[]);
    second.wait_log(T, "worker ready").await;

    let out = cleanup(&db, &["--json"]);
    let j = out.json();
    let finding = |pid: i32| {
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["process"]["pid"] == pid)
            .unwrap()
            .clone()
    };
    let f1 = finding(first.pid());
    assert_eq!(f1["verdict"]["verdict"], "stale");
    let reason = f1["verdict"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("belongs to pid {}", second.pid()))
            && reason.contains("duplicate"),
        "{reason}"
    );
    assert_eq!(finding(second.pid())["verdict"]["verdict"], "ok");

    let out = cleanup(&db, &["--force", "--grace", "1s"]);
    out.ok();
    first.wait_exit(T).await;
    assert!(alive(second.pid()), "the registered instance keeps running");
}

#[tokio::test]
async fn registry_rows_of_gone_processes_are_released_only_with_force_and_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO jr_status (jr_name, host, pid, is_online, status, capacity, last_seen) \
             VALUES ('ghost_w', $1, 999999, true, 'busy', 2, now())",
            &[&jrq::host::hostname()],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, started_at) VALUES \
               ('running', 'in_progress', 'ghost_w', 1, now()), \
               ('queued', 'assigned', 'ghost_w', 0, NULL)",
        )
        .await
        .unwrap();
    let before = db.fingerprint().await;
    let out = cleanup(&db, &[]);
    assert!(
        out.ok().contains(
            "registry: worker 'ghost_w' its process (pid 999999) is gone: would be marked offline"
        ),
        "{out:#?}"
    );
    assert_eq!(db.fingerprint().await, before, "a dry run changes nothing");

    // Two at once give the same result as one.
    let spawn = || {
        common::bin("jr-stale-cleanup")
            .env("DATABASE_URL", &db.url)
            .args(["--force", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut released = 0;
    for c in [a, b] {
        let out = Run::from(c.wait_with_output().unwrap());
        let j = out.json();
        for r in j["registry"].as_array().unwrap() {
            released += r["tasks_released"].as_u64().unwrap();
        }
    }
    assert_eq!(released, 2, "both tasks released, once");
    let statuses: Vec<(String, String)> = client
        .query("SELECT title, status FROM jr_work_queue ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        statuses,
        [
            ("running".to_string(), "pending".to_string()),
            ("queued".to_string(), "pending".to_string())
        ]
    );
    let online: bool = client
        .query_one(
            "SELECT is_online FROM jr_status WHERE jr_name = 'ghost_w'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!online);
}

#[tokio::test]
async fn workers_are_matched_by_server_not_by_the_text_of_their_address() {
    // One server, reached as localhost by the workers and as 127.0.0.1 by the cleanup.
    let cluster = common::PrivateCluster::start_with(&["--tcp"]);
    let client = cluster.migrated().await;
    let port = cluster.port();
    let by_name = format!("host=localhost port={port} user=postgres dbname=postgres");
    let by_ip = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let first = WorkerProc::start(&by_name, "addr_w", &["--exec", "noop"], &[]);
    first.wait_log(T, "worker ready").await;
    first.signal(Signal::SIGSTOP);
    client
        .execute(
            "UPDATE jr_status SET last_seen = now() - interval '1 hour' WHERE jr_name = 'addr_w'",
            &[],
        )
        .await
        .unwrap();
    let second = WorkerProc::start(&by_name, "addr_w", &["--exec", "noop"], &[]);
    second.wait_log(T, "worker ready").await;
    let out = Run::from(
        common::bin("jr-stale-cleanup")
            .env("DATABASE_URL", &by_ip)
            .output()
            .unwrap(),
    );
    let text = out.ok();
    assert!(
        text.contains(&format!("STALE pid {} worker addr_w", first.pid())),
        "the stray duplicate is found although its address is written differently: {text}"
    );
    // A worker of another database on the same host is listed as not judged.
    let other = TestDb::new().await;
    let w = WorkerProc::start(&other.url, "other_w", &["--exec", "noop"], &[]);
    w.wait_log(T, "worker ready").await;
    let out = Run::from(
        common::bin("jr-stale-cleanup")
            .env("DATABASE_URL", &by_ip)
            .output()
            .unwrap(),
    );
    let text = out.ok();
    assert!(
        text.contains(&format!(
            "skip  pid {} worker other_w: uses another database",
            w.pid()
        )),
        "{text}"
    );
    assert!(text.contains("Not judged:"), "{text}");
    // A registry row forged in this database with that worker's pid does not make it ours:
    // its own environment says which database it uses.
    let done: String = client
        .query_one(
            "INSERT INTO jr_runs (status) VALUES ('completed') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO jr_status (jr_name, host, pid, is_online, status, last_seen, run_id) \
             VALUES ('other_w', $1, $2, true, 'idle', now(), $3::text::uuid)",
            &[&jrq::host::hostname(), &w.pid(), &done],
        )
        .await
        .unwrap();
    let out = Run::from(
        common::bin("jr-stale-cleanup")
            .env("DATABASE_URL", &by_ip)
            .args(["--force", "--grace", "1s"])
            .output()
            .unwrap(),
    );
    let text = out.ok();
    assert!(
        text.contains(&format!(
            "skip  pid {} worker other_w: uses another database",
            w.pid()
        )),
        "{text}"
    );
    assert!(alive(w.pid()), "another database's worker is never ended");
}

#[tokio::test]
async fn a_hidden_worker_is_judged_by_its_registry_row() {
    // An ordinary user's worker hides its environment (its RUN_FILTER_ID too) from the
    // cleanup running as the same user: the registry tells its run.
    let cluster = common::PrivateCluster::start();
    cluster.allow_other_users();
    let client = cluster.migrated().await;
    let run: String = client
        .query_one("INSERT INTO jr_runs DEFAULT VALUES RETURNING id::text", &[])
        .await
        .unwrap()
        .get(0);
    let nobody = common::AS_NOBODY;
    let mut w = WorkerProc::start_wrapped(
        &nobody,
        "jr-queue-worker",
        &cluster.url,
        // A worker that runs programs protects itself from them.
        &["--name", "hidden_w", "--exec", "/bin/true"],
        &[("RUN_FILTER_ID", &run)],
    );
    w.wait_log(T, "worker ready").await;
    w.signal(Signal::SIGSTOP);
    client
        .execute(
            "UPDATE jr_runs SET status = 'completed' WHERE id = $1::text::uuid",
            &[&run],
        )
        .await
        .unwrap();
    let mut cmd = std::process::Command::new(nobody[0]);
    cmd.args(&nobody[1..])
        .arg(common::bin_path("jr-stale-cleanup"))
        .args(["--force", "--grace", "1s"])
        .env("DATABASE_URL", &cluster.url)
        .env_remove("RUST_LOG");
    let out = Run::from(cmd.output().unwrap());
    let text = out.ok();
    assert!(
        text.contains(&format!(
            "STALE pid {} worker hidden_w: targeting run {run} (status: completed)",
            w.pid()
        )),
        "{text}"
    );
    w.wait_exit(T).await;
}
