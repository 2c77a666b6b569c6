-- Run callbacks: a task enqueued once when a run ends.
--
-- `jrq runs create --on-complete '<task JSON>' --on-error '<task JSON>'` stores each as a
-- task template: the columns of jr_work_queue, resolved by jrq when the run was created
-- (every default filled in, the run reference made an id), read back by
-- jrq_tasks_from_template. When the run goes from active to completed (or error) —
-- the monitor's auto-complete, `jrq runs set`, or psql — the trigger below enqueues the
-- matching template, once, in the same transaction, with the run's summary under the
-- payload's "run" key: counts by status, the ids of failed and cancelled tasks (the first
-- 100 of each), usage totals. The task's id goes to jr_runs.callback_task; a template
-- that can no longer be enqueued (it names a run since deleted, say) does not block the
-- run's end: the error goes to jr_runs.callback_error, and the monitor alerts on it.
-- Whatever ends the run again later (active again, then completed) enqueues nothing more:
-- a run has at most one callback.

ALTER TABLE jr_runs
    ADD COLUMN on_complete jsonb
        CONSTRAINT jr_runs_on_complete_check CHECK (jsonb_typeof(on_complete) = 'object'),
    ADD COLUMN on_error jsonb
        CONSTRAINT jr_runs_on_error_check CHECK (jsonb_typeof(on_error) = 'object'),
    -- The callback enqueued when the run ended (no foreign key: pruning the task keeps
    -- the record that it was enqueued).
    ADD COLUMN callback_task bigint,
    ADD COLUMN callback_error text;

-- A task from a template (see above), with `p_extra` merged into its payload and
-- `p_unique_key` as its unique key; NULL when an unfinished task holds that key. The one
-- place stored templates become tasks (run callbacks; schedules use it too).
CREATE FUNCTION jrq_tasks_from_template(p_template jsonb, p_extra jsonb, p_unique_key text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t public.jr_work_queue;
    v_id bigint;
BEGIN
    t := jsonb_populate_record(NULL::public.jr_work_queue, p_template);
    INSERT INTO public.jr_work_queue (title, description, source, created_by, priority,
        sacred_fire_priority, payload, provider, fallback_ok, target_jr, run_id,
        max_attempts, timeout, idle_timeout, max_cost_usd, approve_by, unique_key, run_after)
    VALUES (t.title, t.description, t.source, t.created_by, t.priority,
        t.sacred_fire_priority, t.payload || coalesce(p_extra, '{}'), t.provider,
        t.fallback_ok, t.target_jr, t.run_id, t.max_attempts, t.timeout, t.idle_timeout,
        t.max_cost_usd, t.approve_by, p_unique_key,
        now() + coalesce((p_template->>'delay_ms')::bigint, 0) * interval '1 millisecond')
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL
        AND status IN ('waiting', 'awaiting_approval', 'pending', 'assigned', 'in_progress')
    DO NOTHING
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- The run's summary, as the callback's payload carries it.
CREATE FUNCTION jrq_runs_summary(p_run public.jr_runs) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'id', p_run.id,
        'name', p_run.name,
        'status', p_run.status,
        'created_at', p_run.created_at,
        'finished_at', coalesce(p_run.finished_at, now()),
        'tasks', jsonb_build_object(
            'total', count(*),
            'completed', count(*) FILTER (WHERE t.status = 'completed'),
            'failed', count(*) FILTER (WHERE t.status = 'failed'),
            'cancelled', count(*) FILTER (WHERE t.status = 'cancelled')),
        'failed_ids', coalesce((SELECT jsonb_agg(f.id ORDER BY f.id) FROM (
            SELECT id FROM public.jr_work_queue
            WHERE run_id = p_run.id AND status = 'failed' ORDER BY id LIMIT 100) f), '[]'),
        'cancelled_ids', coalesce((SELECT jsonb_agg(c.id ORDER BY c.id) FROM (
            SELECT id FROM public.jr_work_queue
            WHERE run_id = p_run.id AND status = 'cancelled' ORDER BY id LIMIT 100) c), '[]'),
        'usage', (SELECT jsonb_build_object(
            'input_tokens', coalesce(sum(u.input_tokens), 0),
            'output_tokens', coalesce(sum(u.output_tokens), 0),
            'cost_usd', p_run.cost_microusd / 1e6)
            FROM public.jr_task_usage u
            WHERE u.task_id IN (SELECT id FROM public.jr_work_queue WHERE run_id = p_run.id)))
    FROM public.jr_work_queue t WHERE t.run_id = p_run.id;
$$;

CREATE FUNCTION jrq_runs_callback() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_template jsonb := CASE NEW.status WHEN 'completed' THEN NEW.on_complete
                                        ELSE NEW.on_error END;
    v_status text;
BEGIN
    IF v_template IS NULL THEN
        RETURN NEW;
    END IF;
    BEGIN
        NEW.callback_task := public.jrq_tasks_from_template(v_template,
            jsonb_build_object('run', public.jrq_runs_summary(NEW)), NULL);
        SELECT status INTO v_status FROM public.jr_work_queue WHERE id = NEW.callback_task;
        INSERT INTO public.jr_task_events (task_id, actor, action, to_status, details)
        VALUES (NEW.callback_task, 'jrq', 'callback', v_status,
                format('enqueued by run %s%s ending %s', NEW.id,
                       CASE WHEN NEW.name <> '' THEN format(' (%s)', NEW.name) ELSE '' END,
                       NEW.status));
    EXCEPTION WHEN OTHERS THEN
        NEW.callback_task := NULL;
        NEW.callback_error := SQLERRM;
    END;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jr_runs_callback BEFORE UPDATE OF status ON jr_runs
    FOR EACH ROW
    WHEN (OLD.status = 'active' AND NEW.status IN ('completed', 'error')
          AND NEW.callback_task IS NULL AND NEW.callback_error IS NULL
          AND (NEW.on_complete IS NOT NULL OR NEW.on_error IS NOT NULL))
    EXECUTE FUNCTION jrq_runs_callback();

REVOKE EXECUTE ON FUNCTION jrq_tasks_from_template(jsonb, jsonb, text),
    jrq_runs_summary(jr_runs), jrq_runs_callback() FROM PUBLIC;

-- The rights of V15, and the new columns'.
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
        -- (V16) The callback alert.
        GRANT SELECT (name, finished_at, callback_task, callback_error)
            ON public.jr_runs TO jrq_monitor;
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
        -- (V16) Run callbacks.
        GRANT INSERT (on_complete, on_error) ON public.jr_runs TO jrq_admin;
    END IF;
END;
$$;

SELECT jrq_grant_governor();
