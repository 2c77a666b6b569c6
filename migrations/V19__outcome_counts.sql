-- jrq schema, version 19: a worker's outcome counters written at most about once a second
-- (issue 19).
--
-- Every outcome write updated the worker's registry row (counters, health, recent
-- outcomes): hundreds of row versions a second per busy worker. While something holds back
-- the vacuum horizon none of them can be removed, and every statement that finds the row
-- — the fence of each claim, the next outcome write, the assigners' candidates, the
-- heartbeat — walks all of them, longer every second (docs/benchmarks-notes.md, issue 19).
-- The hot cycle now leaves the counters to the worker, which adds its outcomes up and
-- writes them with jrq_workers_count_outcomes: at once when the batch holds a failure, or
-- a success after failures (the circuit breaker reads consecutive_failures every round),
-- otherwise once a second at most, and before it leaves.

-- The counters of outcomes already written (fenced) by this instance: p_outcomes is their
-- sequence, '+' a completion, '-' a failed attempt, oldest first. The update of V10's
-- outcome write, from the string instead of the rows; consecutive failures are those
-- after the last completion. Returns the rows updated (0: the name is not this
-- instance's any more; its counters are lost with it, the tasks are not).
CREATE FUNCTION jrq_workers_count_outcomes(p_worker text, p_instance uuid, p_outcomes text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ok bigint := length(p_outcomes) - length(replace(p_outcomes, '+', ''));
    v_failed bigint := length(p_outcomes) - length(replace(p_outcomes, '-', ''));
    -- Failures after the last completion (all of them when there is none).
    v_tail bigint := length(p_outcomes) - length(rtrim(p_outcomes, '-'));
    v_rows bigint;
BEGIN
    IF p_outcomes !~ '^[+-]+$' THEN
        RETURN 0;
    END IF;
    UPDATE public.jr_status SET
        tasks_completed = tasks_completed + v_ok,
        tasks_failed = tasks_failed + v_failed,
        consecutive_failures = CASE WHEN v_ok > 0 THEN v_tail
            ELSE consecutive_failures + v_failed END,
        last_failure_at = CASE WHEN v_failed > 0 THEN now() ELSE last_failure_at END,
        last_success_at = CASE WHEN v_ok > 0 THEN now() ELSE last_success_at END,
        health_ok = CASE WHEN health_ok < 1e-9 THEN 0 ELSE coalesce(health_ok
            * power(0.5::float8, least(greatest(
                extract(epoch FROM now() - health_at)::float8, 0) / 3600, 64)), 0) END
            + v_ok,
        health_failed = CASE WHEN health_failed < 1e-9 THEN 0 ELSE coalesce(health_failed
            * power(0.5::float8, least(greatest(
                extract(epoch FROM now() - health_at)::float8, 0) / 3600, 64)), 0) END
            + v_failed,
        health_at = now(),
        recent_outcomes = right(recent_outcomes || p_outcomes, 20),
        updated_at = now()
    WHERE jr_name = p_worker AND instance_id = p_instance;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

-- The hot cycle of V18 with p_count: false leaves the counters to the worker (above).
DROP FUNCTION jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], text[],
    text[], text[], bigint[], boolean[], bigint, uuid, bigint);
CREATE FUNCTION jrq_tasks_finish_and_claim(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_to_status text[], p_actions text[], p_results text[],
    p_errors text[], p_backoff_ms bigint[], p_failures boolean[], p_limit bigint, p_run uuid,
    p_floor bigint, p_count boolean)
RETURNS TABLE (finished bigint[], id bigint, title text, payload jsonb, attempts integer,
               max_attempts integer, run_id uuid, provider text, timeout_ms bigint,
               idle_timeout_ms bigint, checkpoint jsonb, max_cost_microusd bigint,
               cost_microusd bigint, lease_floor bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH f AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_to_status, p_actions, p_results, p_errors,
            p_backoff_ms, p_failures)
        AS f(id, attempt, to_status, action, result, error, backoff_ms, failure)),
    fin AS (
        UPDATE public.jr_work_queue q SET
            status = CASE WHEN f.to_status = 'pending'
                AND q.cancel_requested_at IS NOT NULL THEN 'cancelled'
                ELSE f.to_status END,
            completed_at = CASE WHEN f.to_status = 'pending'
                AND q.cancel_requested_at IS NULL THEN NULL ELSE now() END,
            progress_percent = CASE f.to_status WHEN 'completed' THEN 100
                WHEN 'pending' THEN 0 ELSE q.progress_percent END,
            result = f.result,
            error = f.error,
            run_after = CASE WHEN f.to_status = 'pending'
                THEN now() + f.backoff_ms * interval '1 millisecond'
                ELSE q.run_after END,
            attempts = CASE WHEN f.action = 'released' THEN q.attempts - 1
                ELSE q.attempts END,
            assigned_jr = CASE WHEN f.to_status = 'pending'
                AND q.cancel_requested_at IS NULL THEN NULL ELSE q.assigned_jr END,
            assigned_at = CASE WHEN f.to_status = 'pending'
                AND q.cancel_requested_at IS NULL THEN NULL ELSE q.assigned_at END,
            lease_instance = NULL,
            updated_at = now()
        FROM f
        WHERE q.id = f.id AND q.assigned_jr = p_worker AND q.attempts = f.attempt
          AND q.lease_instance = p_instance AND q.status = 'in_progress'
        RETURNING q.id, f.attempt, q.status AS to_status,
            CASE WHEN q.status = 'cancelled' AND f.to_status = 'pending'
                THEN 'cancelled' ELSE f.action END AS action,
            f.failure, f.backoff_ms,
            coalesce(f.error, '') || CASE WHEN q.status = 'cancelled'
                AND f.to_status = 'pending'
                THEN ' (a cancel was requested: cancelled, not retried)'
                ELSE '' END AS details),
    w AS (
        UPDATE public.jr_status SET
            tasks_completed = tasks_completed +
                (SELECT count(*) FROM fin WHERE fin.to_status = 'completed'),
            tasks_failed = tasks_failed + (SELECT count(*) FROM fin WHERE fin.failure),
            consecutive_failures = CASE
                WHEN EXISTS (SELECT 1 FROM fin WHERE fin.to_status = 'completed') THEN 0
                ELSE consecutive_failures + (SELECT count(*) FROM fin WHERE fin.failure) END,
            last_failure_at = CASE WHEN EXISTS (SELECT 1 FROM fin WHERE fin.failure)
                THEN now() ELSE last_failure_at END,
            last_success_at = CASE WHEN EXISTS (SELECT 1 FROM fin WHERE fin.to_status = 'completed')
                THEN now() ELSE last_success_at END,
            health_ok = CASE WHEN health_ok < 1e-9 THEN 0 ELSE coalesce(health_ok
                * power(0.5::float8, least(greatest(
                    extract(epoch FROM now() - health_at)::float8, 0) / 3600, 64)), 0) END
                + (SELECT count(*) FROM fin WHERE fin.to_status = 'completed'),
            health_failed = CASE WHEN health_failed < 1e-9 THEN 0 ELSE coalesce(health_failed
                * power(0.5::float8, least(greatest(
                    extract(epoch FROM now() - health_at)::float8, 0) / 3600, 64)), 0) END
                + (SELECT count(*) FROM fin WHERE fin.failure),
            health_at = now(),
            recent_outcomes = right(recent_outcomes || coalesce((
                SELECT string_agg(CASE WHEN fin.to_status = 'completed' THEN '+' ELSE '-' END,
                    '' ORDER BY fin.id)
                FROM fin WHERE fin.to_status = 'completed' OR fin.failure), ''), 20),
            updated_at = now()
        WHERE jr_name = p_worker AND instance_id = p_instance AND p_count
          AND EXISTS (SELECT 1 FROM fin WHERE fin.to_status = 'completed' OR fin.failure)),
    n AS (
        SELECT pg_notify('jrq_pending', 'capacity') FROM fin LIMIT 1),
    c AS (
        SELECT q.id, q.attempts >= q.max_attempts AS used_up FROM public.jr_work_queue q
        WHERE q.status = 'assigned' AND q.assigned_jr = p_worker
          AND coalesce(q.lease_seq, 9223372036854775807) > coalesce(p_floor, -1)
          AND (p_run IS NULL OR q.run_id = p_run)
          AND EXISTS (SELECT 1 FROM public.jr_status s
                      WHERE s.jr_name = p_worker AND s.instance_id = p_instance)
        ORDER BY q.sacred_fire_priority DESC, q.priority, q.created_at, q.id
        LIMIT p_limit FOR UPDATE OF q SKIP LOCKED),
    -- The next floor: one below the smallest number this worker holds past the floor
    -- (what this statement claims or finishes included), else the floor as it was.
    fl AS (
        SELECT coalesce(min(q.lease_seq) - 1, p_floor) AS f
        FROM public.jr_work_queue q
        WHERE q.status IN ('assigned', 'in_progress') AND q.assigned_jr = p_worker
          AND coalesce(q.lease_seq, 9223372036854775807) > coalesce(p_floor, -1)),
    used_up AS (
        UPDATE public.jr_work_queue q SET status = 'failed', completed_at = now(),
            error = 'no attempts left: ' || q.attempts || ' of ' || q.max_attempts
                || ' used before this claim', updated_at = now()
        FROM c WHERE c.used_up AND q.id = c.id
        RETURNING q.id, q.attempts),
    cl AS (
        UPDATE public.jr_work_queue q SET status = 'in_progress', started_at = now(),
            attempts = q.attempts + 1, lease_instance = p_instance, progress_percent = 0,
            result = NULL, error = NULL, updated_at = now()
        FROM c WHERE NOT c.used_up AND q.id = c.id
        RETURNING q.id, q.title, q.payload, q.attempts, q.max_attempts, q.run_id,
            coalesce(q.routed_provider, q.provider) AS provider,
            (extract(epoch FROM q.timeout) * 1000)::int8 AS timeout_ms,
            (extract(epoch FROM q.idle_timeout) * 1000)::int8 AS idle_timeout_ms,
            q.checkpoint, (q.max_cost_usd * 1000000)::int8 AS max_cost_microusd,
            q.sacred_fire_priority, q.priority, q.created_at),
    -- One insert for every event, in the order things happened: the outcomes first, then
    -- the starts their capacity made room for.
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT e.task_id, p_worker, e.action, e.from_status, e.to_status, p_worker,
            e.attempt, e.details
        FROM (
            SELECT 1 AS ord, fin.id AS task_id, fin.action, 'in_progress' AS from_status,
                fin.to_status, fin.attempt,
                left(fin.details, 500) || CASE WHEN fin.action = 'retry_scheduled'
                    THEN ' (next attempt in ' || fin.backoff_ms || ' ms)' ELSE '' END
                    AS details
            FROM fin
            UNION ALL
            SELECT 2, u.id, 'failed', 'assigned', 'failed', u.attempts,
                'no attempts left when claimed'
            FROM used_up u
            UNION ALL
            SELECT 3, cl.id, 'started', 'assigned', 'in_progress', cl.attempts,
                'attempt ' || cl.attempts || ' of ' || cl.max_attempts
            FROM cl) e
        ORDER BY e.ord, e.task_id),
    done AS (
        SELECT coalesce(array_agg(fin.id), '{}') AS ids, (SELECT count(*) FROM n) AS notified
        FROM fin)
    -- The condition on `notified` makes the notification happen: an output nobody reads
    -- would be left unevaluated, and the assigners would learn of the freed capacity only
    -- at their next poll.
    SELECT done.ids, cl.id, cl.title, cl.payload, cl.attempts, cl.max_attempts, cl.run_id,
        cl.provider, cl.timeout_ms, cl.idle_timeout_ms, cl.checkpoint, cl.max_cost_microusd,
        CASE WHEN cl.max_cost_microusd IS NULL THEN 0::int8 ELSE coalesce((
            SELECT sum(u.cost_microusd) FROM public.jr_task_usage u
            WHERE u.task_id = cl.id), 0)::int8 END,
        (SELECT fl.f FROM fl)
    FROM done LEFT JOIN cl ON true
    WHERE done.notified >= 0
    ORDER BY cl.sacred_fire_priority DESC, cl.priority, cl.created_at, cl.id;
END;
$$;

REVOKE EXECUTE ON FUNCTION
    jrq_workers_count_outcomes(text, uuid, text),
    jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], text[], text[],
        text[], bigint[], boolean[], bigint, uuid, bigint, boolean)
FROM PUBLIC;

-- The rights of V18, and the outcome counts'.
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
        -- (V18) The claims from a floor.
        GRANT EXECUTE ON FUNCTION
            public.jrq_tasks_claim(text, bigint, uuid, uuid, bigint),
            public.jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[],
                text[], text[], text[], bigint[], boolean[], bigint, uuid, bigint, boolean)
        TO jrq_worker;
        -- (V19) Its outcome counters.
        GRANT EXECUTE ON FUNCTION public.jrq_workers_count_outcomes(text, uuid, text)
        TO jrq_worker;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_assigner') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_assigner;
        GRANT UPDATE (tokens, tokens_at) ON public.jr_providers TO jrq_assigner;
        -- Failover: which workers a task's earlier attempts failed on.
        GRANT SELECT (task_id, action, worker) ON public.jr_task_events TO jrq_assigner;
        -- (routed_provider also for jrq_provider_active, which runs with its rights.)
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_assigner;
        -- (V17) Schedules: the assigners enqueue their ticks.
        GRANT SELECT, UPDATE (next_tick, last_tick, last_task, enqueued_total,
                              skipped_total, missed_total, last_error, paused, updated_at)
            ON public.jr_schedules TO jrq_assigner;
        GRANT EXECUTE ON FUNCTION public.jrq_schedules_enqueue(text, timestamptz, text)
            TO jrq_assigner;
        GRANT UPDATE (routed_provider) ON public.jr_work_queue TO jrq_assigner;
        GRANT SELECT (last_success_at, health_ok, health_failed, health_at,
                      recent_outcomes)
            ON public.jr_status TO jrq_assigner;
        -- (V18) Each assignment draws its number; loads are counted from a floor.
        GRANT SELECT (lease_seq), UPDATE (lease_seq) ON public.jr_work_queue TO jrq_assigner;
        GRANT USAGE, SELECT ON SEQUENCE public.jr_lease_seq TO jrq_assigner;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_monitor') THEN
        GRANT SELECT (lease_seq) ON public.jr_work_queue TO jrq_monitor;
        GRANT SELECT (providers, consecutive_failures, last_failure_at, last_success_at,
                      health_ok, health_failed, health_at, recent_outcomes)
            ON public.jr_status TO jrq_monitor;
        GRANT SELECT, INSERT, UPDATE ON public.jr_monitor_state TO jrq_monitor;
        -- (V15) The approval alert.
        GRANT SELECT (has_dependents, approve_by, approved_at, updated_at)
            ON public.jr_work_queue TO jrq_monitor;
        -- (V16) The callback alert.
        GRANT SELECT (name, finished_at, callback_task, callback_error)
            ON public.jr_runs TO jrq_monitor;
        GRANT SELECT ON public.jr_schedules TO jrq_monitor;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_reader') THEN
        GRANT SELECT (lease_seq) ON public.jr_work_queue TO jrq_reader;
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
        GRANT SELECT ON public.jr_schedules TO jrq_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_admin') THEN
        GRANT SELECT (lease_seq) ON public.jr_work_queue TO jrq_admin;
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
        -- (V16) Run callbacks.
        GRANT INSERT (on_complete, on_error) ON public.jr_runs TO jrq_admin;
        -- (V17) Schedules.
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.jr_schedules TO jrq_admin;
        GRANT EXECUTE ON FUNCTION public.jrq_schedules_enqueue(text, timestamptz, text)
            TO jrq_admin;
    END IF;
END;
$$;

SELECT jrq_grant_governor();
