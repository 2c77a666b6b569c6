-- Work that depends on work: task dependencies and human approval gates.
--
-- Two new states before `pending`:
--   waiting            the task has dependencies that have not all completed
--   awaiting_approval  the task needs a person's `jrq approve` before it may run
-- A dependency is a row of jr_task_deps (task_id waits for depends_on). Everything that
-- follows from one is done by the database, in the transaction that made it so, whoever
-- wrote the row (a worker's outcome, the monitor, `jrq`, psql):
--   * the last dependency completing makes the task ready (pending, or awaiting_approval
--     when it needs an approval nobody gave yet) in the same transaction;
--   * a dependency ending failed or cancelled cancels its waiting dependents,
--     transitively, each with the cause ("dependency 812 failed") and an event;
--   * `jrq retry` of such a dependency revives the dependents it cancelled.
-- Tasks without dependents pay nothing: the trigger fires only for rows with
-- has_dependents (a WHEN clause, evaluated without calling a function).
-- A task may depend only on tasks created before it (depends_on < task_id): a cycle is
-- impossible by construction.

ALTER TABLE jr_work_queue DROP CONSTRAINT jr_work_queue_status_check;
ALTER TABLE jr_work_queue ADD CONSTRAINT jr_work_queue_status_check
    CHECK (status IN ('waiting', 'awaiting_approval', 'pending', 'assigned', 'in_progress',
                      'completed', 'failed', 'cancelled'));

ALTER TABLE jr_work_queue
    -- Other tasks depend on this one (set when the first dependency row names it).
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    -- While waiting: how many of its dependencies have not completed yet.
    ADD COLUMN deps_pending integer NOT NULL DEFAULT 0
        CONSTRAINT jr_work_queue_deps_pending_check CHECK (deps_pending >= 0),
    -- The dependency whose failure or cancellation cancelled this task (`jrq retry` of
    -- it revives this one); NULL for every other end.
    ADD COLUMN cancelled_by bigint,
    -- The approval gate: NULL none; '' anyone who may run `jrq approve`; else the
    -- database role whose members may approve.
    ADD COLUMN approve_by text,
    ADD COLUMN approved_at timestamptz
        CONSTRAINT jr_work_queue_approved_at_finite CHECK (isfinite(approved_at)),
    ADD COLUMN approved_by text;

-- "At most one unfinished task per key": waiting and awaiting tasks are unfinished too.
DROP INDEX jr_work_queue_unique_key_idx;
CREATE UNIQUE INDEX jr_work_queue_unique_key_idx ON jr_work_queue (unique_key)
    WHERE unique_key IS NOT NULL
      AND status IN ('waiting', 'awaiting_approval', 'pending', 'assigned', 'in_progress');

-- The operator's inbox and the monitor's approval alert.
CREATE INDEX jr_work_queue_awaiting_idx ON jr_work_queue (updated_at)
    WHERE status = 'awaiting_approval';

CREATE TABLE jr_task_deps (
    task_id    bigint NOT NULL REFERENCES jr_work_queue (id) ON DELETE CASCADE,
    depends_on bigint NOT NULL REFERENCES jr_work_queue (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on),
    CONSTRAINT jr_task_deps_order_check CHECK (depends_on < task_id)
);

-- A task's dependents (readiness, cascades, `jrq show`, `jrq tasks --waiting-on`).
CREATE INDEX jr_task_deps_depends_on_idx ON jr_task_deps (depends_on);

-- A new task that needs an approval starts awaiting it (a psql INSERT sets approve_by
-- only). A task inserted with dependencies starts pending and moves to waiting when
-- its dependency rows are inserted, in the same transaction.
CREATE FUNCTION jrq_tasks_gate_new() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.status := 'awaiting_approval';
    RETURN NEW;
END;
$$;

CREATE TRIGGER jr_work_queue_gate_new BEFORE INSERT ON jr_work_queue
    FOR EACH ROW
    WHEN (NEW.approve_by IS NOT NULL AND NEW.approved_at IS NULL AND NEW.status = 'pending')
    EXECUTE FUNCTION jrq_tasks_gate_new();

-- A dependency row: lock the dependency (so that its end cannot slip between reading
-- its status and counting it), mark it as having dependents, and count it against the
-- waiting task — or cancel the task at once when the dependency already failed.
CREATE FUNCTION jrq_task_deps_added() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_dep_status text;
    v_status text;
    v_cancelled_by bigint;
    v_new boolean;
BEGIN
    SELECT q.status INTO v_dep_status FROM public.jr_work_queue q
    WHERE q.id = NEW.depends_on FOR NO KEY UPDATE;
    UPDATE public.jr_work_queue SET has_dependents = true
    WHERE id = NEW.depends_on AND NOT has_dependents;

    SELECT q.status, q.cancelled_by, q.xmin = pg_current_xact_id()::xid
    INTO v_status, v_cancelled_by, v_new
    FROM public.jr_work_queue q WHERE q.id = NEW.task_id FOR UPDATE;
    IF v_status = 'cancelled' AND v_cancelled_by IS NOT NULL THEN
        -- Already cancelled by another dependency (a batch line after a failed one).
        RETURN NULL;
    END IF;
    IF v_status NOT IN ('pending', 'waiting', 'awaiting_approval') THEN
        RAISE EXCEPTION 'task % is %: dependencies can be added only to tasks that have not started',
            NEW.task_id, v_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jr_task_deps_started_check';
    END IF;
    IF v_dep_status = 'completed' THEN
        RETURN NULL;
    END IF;
    IF v_dep_status IN ('failed', 'cancelled') THEN
        UPDATE public.jr_work_queue SET status = 'cancelled', cancelled_by = NEW.depends_on,
            deps_pending = 0, completed_at = now(), updated_at = now(),
            error = format('dependency %s %s', NEW.depends_on, v_dep_status)
        WHERE id = NEW.task_id;
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, details)
        VALUES (NEW.task_id, 'jrq', 'cancelled', v_status, 'cancelled',
            format('dependency %s %s', NEW.depends_on, v_dep_status));
        RETURN NULL;
    END IF;
    UPDATE public.jr_work_queue SET status = 'waiting', deps_pending = deps_pending + 1,
        updated_at = now()
    WHERE id = NEW.task_id;
    -- A task inserted in this transaction starts waiting: that is its creation, not a
    -- transition. An older task put to wait gets an event.
    IF v_status <> 'waiting' AND NOT v_new THEN
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, details)
        VALUES (NEW.task_id, 'jrq', 'waiting', v_status, 'waiting',
            format('waiting for task %s', NEW.depends_on));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jr_task_deps_added AFTER INSERT ON jr_task_deps
    FOR EACH ROW EXECUTE FUNCTION jrq_task_deps_added();

-- A task with dependents reached a final state: its waiting dependents become ready
-- (completed) or are cancelled with the cause, transitively (failed, cancelled).
CREATE FUNCTION jrq_tasks_dependency_ended() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ready integer;
BEGIN
    IF NEW.status = 'completed' THEN
        -- Lock the dependents in id order first (two dependencies ending at once take
        -- turns on them), then count this one off each.
        PERFORM 1 FROM public.jr_work_queue q
        WHERE q.id IN (SELECT d.task_id FROM public.jr_task_deps d
                       WHERE d.depends_on = NEW.id)
          AND q.status = 'waiting'
        ORDER BY q.id FOR UPDATE;
        WITH upd AS (
            UPDATE public.jr_work_queue t SET
                deps_pending = greatest(t.deps_pending - 1, 0),
                status = CASE
                    WHEN t.deps_pending > 1 THEN 'waiting'
                    WHEN t.approve_by IS NOT NULL AND t.approved_at IS NULL
                        THEN 'awaiting_approval'
                    ELSE 'pending' END,
                -- Ready from now: its wait counts from here (oldest pending, pin grace).
                run_after = CASE WHEN t.deps_pending > 1 THEN t.run_after
                                 ELSE greatest(t.run_after, now()) END,
                updated_at = now()
            FROM public.jr_task_deps d
            WHERE d.depends_on = NEW.id AND t.id = d.task_id AND t.status = 'waiting'
            RETURNING t.id, t.status),
        ev AS (
            INSERT INTO public.jr_task_events
                (task_id, actor, action, from_status, to_status, details)
            SELECT upd.id, 'jrq', 'ready', 'waiting', upd.status,
                format('dependency %s completed, the last it waited for', NEW.id)
                    || CASE WHEN upd.status = 'awaiting_approval'
                            THEN ': it awaits approval' ELSE '' END
            FROM upd WHERE upd.status <> 'waiting'
            RETURNING to_status)
        SELECT count(*) FILTER (WHERE to_status = 'pending') INTO v_ready FROM ev;
        IF v_ready > 0 THEN
            PERFORM pg_notify('jrq_pending', 'ready');
        END IF;
        RETURN NULL;
    END IF;

    -- failed or cancelled: every waiting task that depends on it, directly or through
    -- other waiting tasks, is cancelled; the cause is its own dependency that ended.
    PERFORM 1 FROM public.jr_work_queue q
    WHERE q.id IN (
        WITH RECURSIVE r (id) AS (
            SELECT d.task_id FROM public.jr_task_deps d
            JOIN public.jr_work_queue w ON w.id = d.task_id AND w.status = 'waiting'
            WHERE d.depends_on = NEW.id
            UNION
            SELECT d.task_id FROM r
            JOIN public.jr_task_deps d ON d.depends_on = r.id
            JOIN public.jr_work_queue w ON w.id = d.task_id AND w.status = 'waiting')
        SELECT id FROM r)
    ORDER BY q.id FOR UPDATE;
    WITH RECURSIVE r (id, cause) AS (
        SELECT d.task_id, NEW.id FROM public.jr_task_deps d
        JOIN public.jr_work_queue w ON w.id = d.task_id AND w.status = 'waiting'
        WHERE d.depends_on = NEW.id
        UNION
        SELECT d.task_id, r.id FROM r
        JOIN public.jr_task_deps d ON d.depends_on = r.id
        JOIN public.jr_work_queue w ON w.id = d.task_id AND w.status = 'waiting'),
    c AS (
        SELECT DISTINCT ON (id) id, cause,
            format('dependency %s %s', cause,
                   CASE WHEN cause = NEW.id THEN NEW.status ELSE 'cancelled' END) AS why
        FROM r ORDER BY id, cause = NEW.id DESC, cause),
    upd AS (
        UPDATE public.jr_work_queue t SET status = 'cancelled', cancelled_by = c.cause,
            deps_pending = 0, error = c.why, completed_at = now(), updated_at = now()
        FROM c WHERE t.id = c.id AND t.status = 'waiting'
        RETURNING t.id, c.why)
    INSERT INTO public.jr_task_events (task_id, actor, action, from_status, to_status, details)
    SELECT upd.id, 'jrq', 'cancelled', 'waiting', 'cancelled', upd.why FROM upd;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jr_work_queue_dependency_ended AFTER UPDATE OF status ON jr_work_queue
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION jrq_tasks_dependency_ended();

-- A task put back from failed or cancelled to pending (`jrq retry`, or by hand): when it
-- has dependencies it waits for them again — or stays cancelled when one of them is
-- failed or cancelled (retry that one) — and when it needs an approval nobody gave it
-- awaits it again.
CREATE FUNCTION jrq_tasks_regate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_open integer;
    v_bad bigint;
    v_bad_status text;
BEGIN
    -- Lock the dependencies before counting them (see jrq_task_deps_added).
    PERFORM 1 FROM public.jr_work_queue q
    WHERE q.id IN (SELECT d.depends_on FROM public.jr_task_deps d WHERE d.task_id = NEW.id)
    ORDER BY q.id FOR SHARE;
    SELECT count(*) FILTER (WHERE q.status <> 'completed'),
           min(q.id) FILTER (WHERE q.status IN ('failed', 'cancelled'))
    INTO v_open, v_bad
    FROM public.jr_task_deps d JOIN public.jr_work_queue q ON q.id = d.depends_on
    WHERE d.task_id = NEW.id;
    NEW.cancelled_by := NULL;
    NEW.deps_pending := 0;
    IF v_bad IS NOT NULL THEN
        SELECT q.status INTO v_bad_status FROM public.jr_work_queue q WHERE q.id = v_bad;
        NEW.status := 'cancelled';
        NEW.cancelled_by := v_bad;
        NEW.completed_at := now();
        NEW.error := format('dependency %s %s', v_bad, v_bad_status);
    ELSIF v_open > 0 THEN
        NEW.status := 'waiting';
        NEW.deps_pending := v_open;
    ELSIF NEW.approve_by IS NOT NULL AND NEW.approved_at IS NULL THEN
        NEW.status := 'awaiting_approval';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jr_work_queue_regate BEFORE UPDATE OF status ON jr_work_queue
    FOR EACH ROW
    WHEN (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'pending')
    EXECUTE FUNCTION jrq_tasks_regate();

-- A task with dependents put back from failed or cancelled: the dependents it (or a
-- task it cancelled) cancelled wait again, in id order (a dependency is always older
-- than its dependent); one that has another failed dependency stays cancelled.
CREATE FUNCTION jrq_tasks_revive_dependents() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
    v_open integer;
    v_bad bigint;
    v_bad_status text;
    v_status text;
    v_to text;
BEGIN
    FOR v_id IN
        WITH RECURSIVE r (id) AS (
            SELECT d.task_id FROM public.jr_task_deps d
            JOIN public.jr_work_queue w ON w.id = d.task_id
                AND w.status = 'cancelled' AND w.cancelled_by IS NOT NULL
            WHERE d.depends_on = NEW.id
            UNION
            SELECT d.task_id FROM r
            JOIN public.jr_task_deps d ON d.depends_on = r.id
            JOIN public.jr_work_queue w ON w.id = d.task_id
                AND w.status = 'cancelled' AND w.cancelled_by IS NOT NULL)
        SELECT id FROM r ORDER BY id
    LOOP
        PERFORM 1 FROM public.jr_work_queue q
        WHERE q.id IN (SELECT d.depends_on FROM public.jr_task_deps d WHERE d.task_id = v_id)
        ORDER BY q.id FOR SHARE;
        SELECT count(*) FILTER (WHERE q.status <> 'completed'),
               min(q.id) FILTER (WHERE q.status IN ('failed', 'cancelled'))
        INTO v_open, v_bad
        FROM public.jr_task_deps d JOIN public.jr_work_queue q ON q.id = d.depends_on
        WHERE d.task_id = v_id;
        SELECT q.status INTO v_status FROM public.jr_work_queue q WHERE q.id = v_id FOR UPDATE;
        IF v_status <> 'cancelled' THEN
            CONTINUE;
        END IF;
        IF v_bad IS NOT NULL THEN
            SELECT q.status INTO v_bad_status FROM public.jr_work_queue q WHERE q.id = v_bad;
            UPDATE public.jr_work_queue SET cancelled_by = v_bad,
                error = format('dependency %s %s', v_bad, v_bad_status), updated_at = now()
            WHERE id = v_id;
            CONTINUE;
        END IF;
        UPDATE public.jr_work_queue SET
            status = CASE WHEN v_open > 0 THEN 'waiting'
                          WHEN approve_by IS NOT NULL AND approved_at IS NULL
                              THEN 'awaiting_approval'
                          ELSE 'pending' END,
            deps_pending = v_open, cancelled_by = NULL, completed_at = NULL, error = NULL,
            cancel_requested_at = NULL, run_after = now(), updated_at = now()
        WHERE id = v_id
        RETURNING status INTO v_to;
        INSERT INTO public.jr_task_events (task_id, actor, action, from_status, to_status, details)
        VALUES (v_id, 'jrq', 'revived', 'cancelled', v_to,
            format('task %s was retried', NEW.id));
        IF v_to = 'pending' THEN
            PERFORM pg_notify('jrq_pending', 'ready');
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jr_work_queue_revive_dependents AFTER UPDATE OF status ON jr_work_queue
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IN ('failed', 'cancelled')
          AND NEW.status IN ('waiting', 'awaiting_approval', 'pending'))
    EXECUTE FUNCTION jrq_tasks_revive_dependents();

REVOKE EXECUTE ON FUNCTION jrq_task_deps_added(), jrq_tasks_dependency_ended(),
    jrq_tasks_regate(), jrq_tasks_revive_dependents() FROM PUBLIC;

-- The rights of V14, and the new columns' and table's.
CREATE OR REPLACE FUNCTION jrq_grant_governor() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_worker') THEN
        GRANT EXECUTE ON FUNCTION public.jrq_providers_refused(text, uuid, bigint[],
            integer[], bigint[], text[]) TO jrq_worker;
        -- (V12) What a running attempt reports besides its outcome.
        GRANT EXECUTE ON FUNCTION
            public.jrq_tasks_output(text, uuid, bigint[], integer[], text[], text[],
                bigint[], bigint),
            public.jrq_tasks_checkpoint(text, uuid, bigint[], integer[], text[]),
            public.jrq_tasks_usage(text, uuid, bigint[], integer[], text[], bigint[],
                bigint[], bigint[])
        TO jrq_worker;
        -- (V13) Leases on attempts it does not run.
        GRANT EXECUTE ON FUNCTION public.jrq_tasks_release_unrun(text, uuid, bigint[])
        TO jrq_worker;
        -- (V14) The prefetch it measured.
        GRANT EXECUTE ON FUNCTION public.jrq_workers_prefetch(text, uuid, integer)
        TO jrq_worker;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_assigner') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_assigner;
        GRANT UPDATE (tokens, tokens_at) ON public.jr_providers TO jrq_assigner;
        -- Failover: which workers a task's earlier attempts failed on.
        GRANT SELECT (task_id, action, worker) ON public.jr_task_events TO jrq_assigner;
        -- (routed_provider also for jrq_provider_active, which runs with its rights.)
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_assigner;
        GRANT UPDATE (routed_provider) ON public.jr_work_queue TO jrq_assigner;
        GRANT SELECT (last_success_at, health_ok, health_failed, health_at,
                      recent_outcomes)
            ON public.jr_status TO jrq_assigner;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_monitor') THEN
        GRANT SELECT (providers, consecutive_failures, last_failure_at, last_success_at,
                      health_ok, health_failed, health_at, recent_outcomes)
            ON public.jr_status TO jrq_monitor;
        GRANT SELECT, INSERT, UPDATE ON public.jr_monitor_state TO jrq_monitor;
        -- (V15) The approval alert.
        GRANT SELECT (has_dependents, approve_by, approved_at, updated_at)
            ON public.jr_work_queue TO jrq_monitor;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_reader') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_reader;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_metric_totals, public.jr_monitor_state TO jrq_reader;
        -- (V12)
        GRANT SELECT (idle_timeout, max_cost_usd, checkpoint, checkpoint_at)
            ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_task_output, public.jr_task_usage TO jrq_reader;
        -- (V15)
        GRANT SELECT (has_dependents, deps_pending, cancelled_by, approve_by, approved_at,
                      approved_by)
            ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_task_deps TO jrq_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_admin') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.jr_providers, public.jr_pauses
            TO jrq_admin;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_admin;
        GRANT INSERT (fallback_ok) ON public.jr_work_queue TO jrq_admin;
        -- `jrq prune` and `jrq retry` carry what they remove into the totals.
        GRANT SELECT, INSERT, UPDATE ON public.jr_metric_totals TO jrq_admin;
        -- (V12) Enqueue with an idle timeout and a budget; `jrq retry --from-scratch`
        -- clears the checkpoint; `jrq prune` deletes output and usage with their tasks
        -- (carrying the usage into the totals); run budgets.
        GRANT SELECT (idle_timeout, max_cost_usd, checkpoint, checkpoint_at)
            ON public.jr_work_queue TO jrq_admin;
        GRANT INSERT (idle_timeout, max_cost_usd) ON public.jr_work_queue TO jrq_admin;
        GRANT UPDATE (checkpoint, checkpoint_at) ON public.jr_work_queue TO jrq_admin;
        GRANT SELECT, DELETE ON public.jr_task_output, public.jr_task_usage TO jrq_admin;
        GRANT INSERT (max_cost_usd) ON public.jr_runs TO jrq_admin;
        GRANT UPDATE (max_cost_usd) ON public.jr_runs TO jrq_admin;
        -- (V15) Enqueue with dependencies and an approval gate; approve and reject.
        GRANT SELECT (has_dependents, deps_pending, cancelled_by, approve_by, approved_at,
                      approved_by)
            ON public.jr_work_queue TO jrq_admin;
        GRANT INSERT (status, approve_by) ON public.jr_work_queue TO jrq_admin;
        GRANT UPDATE (approved_at, approved_by) ON public.jr_work_queue TO jrq_admin;
        GRANT SELECT, INSERT ON public.jr_task_deps TO jrq_admin;
    END IF;
END;
$$;

SELECT jrq_grant_groups();
SELECT jrq_grant_governor();
