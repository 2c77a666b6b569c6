-- Leases a live worker holds on tasks it does not run.
--
-- A worker's claim can commit while its reply is lost (the server crashes between the
-- commit and the answer), and after a failover to an asynchronous standby the new primary
-- may not have a worker's last outcomes: either way the task is in_progress under a worker
-- that heartbeats and does not run it, and nothing would look at it before its timeout.
-- The heartbeat's reply already lists the leases held; a worker that finds one it does not
-- know gives it back here. Fenced like every worker write: only in_progress tasks leased
-- by this instance of this worker.

CREATE FUNCTION jrq_tasks_release_unrun(p_worker text, p_instance uuid, p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_notified bigint;
BEGIN
    WITH upd AS (
        UPDATE public.jr_work_queue q SET
            -- As a released attempt: not charged, back to pending at once (a cancel that
            -- was requested meanwhile ends it instead).
            status = CASE WHEN q.cancel_requested_at IS NOT NULL THEN 'cancelled'
                ELSE 'pending' END,
            completed_at = CASE WHEN q.cancel_requested_at IS NOT NULL THEN now() END,
            progress_percent = 0,
            attempts = greatest(q.attempts - 1, 0),
            assigned_jr = CASE WHEN q.cancel_requested_at IS NOT NULL
                THEN q.assigned_jr END,
            assigned_at = CASE WHEN q.cancel_requested_at IS NOT NULL
                THEN q.assigned_at END,
            lease_instance = NULL,
            updated_at = now()
        WHERE q.id = ANY (p_ids) AND q.assigned_jr = p_worker
          AND q.lease_instance = p_instance AND q.status = 'in_progress'
        RETURNING q.id, q.attempts + 1 AS attempt, q.status AS to_status),
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_worker,
            CASE upd.to_status WHEN 'cancelled' THEN 'cancelled' ELSE 'released' END,
            'in_progress', upd.to_status, p_worker, upd.attempt,
            'the worker holds the lease but does not run the attempt: the reply to its '
            'claim, or its outcome, was lost (a database crash, or a failover to a standby '
            'that had not received it); the attempt is not charged'
        FROM upd),
    n AS (SELECT pg_notify('jrq_pending', 'released') FROM upd LIMIT 1)
    SELECT coalesce(array_agg(upd.id), '{}'), (SELECT count(*) FROM n)
    INTO v_ids, v_notified
    FROM upd;
    RETURN v_ids;
END;
$$;

REVOKE EXECUTE ON FUNCTION jrq_tasks_release_unrun(text, uuid, bigint[]) FROM PUBLIC;

-- The rights of V12, and the new function's.
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
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_monitor') THEN
        GRANT SELECT, INSERT, UPDATE ON public.jr_monitor_state TO jrq_monitor;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_reader') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_reader;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_metric_totals, public.jr_monitor_state TO jrq_reader;
        -- (V12)
        GRANT SELECT (idle_timeout, max_cost_usd, checkpoint, checkpoint_at)
            ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_task_output, public.jr_task_usage TO jrq_reader;
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
    END IF;
END;
$$;

SELECT jrq_grant_groups();
SELECT jrq_grant_governor();
