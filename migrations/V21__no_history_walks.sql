-- jrq schema, version 21: no walk of a worker's history left on the hot path while
-- something holds back the vacuum horizon (issue 19).
--
-- V18's floors needed a walk from the start every 5 s to find a task set assigned
-- without a fresh number (by hand with psql: it kept the number of an earlier
-- assignment, below its worker's floor). Under a held horizon that walk reads every entry
-- the worker's finished tasks left — 26 000 buffers 90 s into a hold, a million after ten
-- minutes, in the worker's claim — and was most of what the hot cycle read. Now the
-- schema keeps the rule the walk checked: a row that enters a held state (assigned, in
-- progress) from another one without a new number gets none (NULL sorts past every
-- floor). The assigner's assignment draws a number, so it is untouched; the trigger's
-- WHEN keeps every other write free of any call. The floors' walks from the start are
-- left to a new connection (docs/architecture.md, *Lease floors*).
--
-- The heartbeat reads the tasks it holds from the same floor (its own, passed by the
-- worker): the in-progress index it read walked the same history.

CREATE FUNCTION jr_work_queue_lease_renumber() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.lease_seq := NULL;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jr_work_queue_lease_renumber
    BEFORE UPDATE ON jr_work_queue
    FOR EACH ROW
    WHEN (NEW.status IN ('assigned', 'in_progress')
          AND OLD.status NOT IN ('assigned', 'in_progress')
          AND NEW.lease_seq IS NOT DISTINCT FROM OLD.lease_seq
          AND NEW.lease_seq IS NOT NULL)
    EXECUTE FUNCTION jr_work_queue_lease_renumber();

-- The tasks a worker holds (its heartbeat), from its floor: held_idx from the floor, as
-- the claim reads it, instead of the in-progress index from the start. p_floor NULL: from
-- the start. It also returns the last lease number drawn: a worker whose floor is past it
-- is on a server whose sequence went back (a restore, a failover it did not see as a new
-- connection, behind a pooler) and forgets its floor. The form of V6 stays for programs
-- of the previous release.
CREATE FUNCTION jrq_workers_heartbeat(p_name text, p_instance uuid, p_load integer,
    p_status text, p_status_text text, p_run uuid, p_floor bigint)
RETURNS TABLE (matched bigint, run_status text, held bigint[], cancel_requested bigint[],
               lease_drawn bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH w AS (
        UPDATE public.jr_status s SET last_seen = now(), current_load = p_load,
            status = p_status, status_text = p_status_text, is_online = true,
            updated_at = now()
        WHERE s.jr_name = p_name AND s.instance_id = p_instance RETURNING 1),
    -- Materialized: the state and the instance are checked on what the scan of held_idx
    -- returned (pushed into the scan, they would let the planner take the in-progress
    -- index, and its whole history, instead).
    mine AS MATERIALIZED (
        SELECT q.id, q.status, q.lease_instance, q.cancel_requested_at
        FROM public.jr_work_queue q
        WHERE q.status IN ('assigned', 'in_progress') AND q.assigned_jr = p_name
          AND coalesce(q.lease_seq, 9223372036854775807) > coalesce(p_floor, -1)),
    held AS (
        SELECT m.id, m.cancel_requested_at FROM mine m
        WHERE m.status = 'in_progress' AND m.lease_instance = p_instance)
    SELECT (SELECT count(*) FROM w),
        (SELECT r.status FROM public.jr_runs r WHERE r.id = p_run),
        coalesce((SELECT array_agg(q.id) FROM held q), '{}'),
        coalesce((SELECT array_agg(q.id) FROM held q
                  WHERE q.cancel_requested_at IS NOT NULL), '{}'),
        (SELECT CASE WHEN l.is_called THEN l.last_value ELSE l.last_value - 1 END
         FROM public.jr_lease_seq l);
END;
$$;

REVOKE EXECUTE ON FUNCTION
    jrq_workers_heartbeat(text, uuid, integer, text, text, uuid, bigint),
    jr_work_queue_lease_renumber()
FROM PUBLIC;

-- The rights of V19, and the heartbeat's from a floor.
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
        -- (V21) The heartbeat from a floor.
        GRANT EXECUTE ON FUNCTION
            public.jrq_workers_heartbeat(text, uuid, integer, text, text, uuid, bigint)
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
        -- (V21) Its own registry row, with the heartbeat's form of V21.
        GRANT EXECUTE ON FUNCTION
            public.jrq_workers_heartbeat(text, uuid, integer, text, text, uuid, bigint)
        TO jrq_assigner;
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
