-- Schedules: tasks enqueued from the database on a cron expression or an interval.
--
-- A row of jr_schedules holds a cadence (cron in a time zone, or every N), a task
-- template (the format of V16's jrq_tasks_from_template) and the next tick due. The
-- assigners own the ticks: each scheduling pass locks the due rows with FOR UPDATE SKIP
-- LOCKED, enqueues the ticks the row's catch-up policy keeps, and moves next_tick past
-- them, in one transaction — so however many assigners run, a tick is handled once.
-- Each tick's task also carries the unique key 'schedule:NAME:TICK' and the tick under
-- the payload's "schedule" key. jrq computes the ticks (cron parsing and time zones are
-- the program's, with croner and chrono-tz); the database only stores them.

CREATE TABLE jr_schedules (
    name          text PRIMARY KEY
                  CONSTRAINT jr_schedules_name_check
                  CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    -- Exactly one cadence: a cron expression (5 fields, optional seconds, @hourly-style
    -- aliases) in `timezone`, or a fixed interval aligned to the Unix epoch.
    cron          text,
    every         interval CONSTRAINT jr_schedules_every_check CHECK (every >= interval '1 second'),
    timezone      text NOT NULL DEFAULT 'UTC',
    CONSTRAINT jr_schedules_cadence_check CHECK ((cron IS NULL) <> (every IS NULL)),
    template      jsonb NOT NULL
                  CONSTRAINT jr_schedules_template_check CHECK (jsonb_typeof(template) = 'object'),
    -- Ticks no assigner handled in time (more than a period, at most a minute, late):
    -- none skips them, one enqueues the latest of them, all enqueues each.
    catch_up      text NOT NULL DEFAULT 'one'
                  CONSTRAINT jr_schedules_catch_up_check CHECK (catch_up IN ('none', 'one', 'all')),
    -- Skip a tick while the schedule's previous task is unfinished.
    unique_while_running boolean NOT NULL DEFAULT false,
    paused        boolean NOT NULL DEFAULT false,
    next_tick     timestamptz NOT NULL
                  CONSTRAINT jr_schedules_next_tick_finite CHECK (isfinite(next_tick)),
    last_tick     timestamptz,
    last_task     bigint,
    enqueued_total bigint NOT NULL DEFAULT 0,
    skipped_total  bigint NOT NULL DEFAULT 0,
    missed_total   bigint NOT NULL DEFAULT 0,
    last_error    text,
    created_by    text NOT NULL DEFAULT current_user,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The scheduling pass: the due rows, soonest first.
CREATE INDEX jr_schedules_due_idx ON jr_schedules (next_tick) WHERE NOT paused;

-- Enqueues schedule `p_name`'s task for tick `p_tick` (the caller holds the row): the
-- template, "schedule": {"name", "tick"} in the payload, the unique key
-- 'schedule:NAME:TICK' (p_tick_text, the tick as jrq writes it), and a 'scheduled'
-- event. Returns the task's id, or NULL when an unfinished task holds that key already.
CREATE FUNCTION jrq_schedules_enqueue(p_name text, p_tick timestamptz, p_tick_text text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_template jsonb;
    v_id bigint;
    v_status text;
BEGIN
    SELECT template INTO v_template FROM public.jr_schedules WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no schedule %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    v_id := public.jrq_tasks_from_template(v_template,
        jsonb_build_object('schedule', jsonb_build_object('name', p_name, 'tick', p_tick_text)),
        format('schedule:%s:%s', p_name, p_tick_text));
    IF v_id IS NOT NULL THEN
        SELECT status INTO v_status FROM public.jr_work_queue WHERE id = v_id;
        INSERT INTO public.jr_task_events (task_id, actor, action, to_status, details)
        VALUES (v_id, 'jrq', 'scheduled', v_status,
                format('enqueued by schedule %s for its tick %s', p_name, p_tick_text));
    END IF;
    RETURN v_id;
END;
$$;

REVOKE EXECUTE ON FUNCTION jrq_schedules_enqueue(text, timestamptz, text) FROM PUBLIC;

-- The rights of V16, and the schedules'.
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
        GRANT SELECT ON public.jr_schedules TO jrq_monitor;
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
        GRANT SELECT ON public.jr_schedules TO jrq_reader;
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
        -- (V17) Schedules.
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.jr_schedules TO jrq_admin;
        GRANT EXECUTE ON FUNCTION public.jrq_schedules_enqueue(text, timestamptz, text)
            TO jrq_admin;
    END IF;
END;
$$;

SELECT jrq_grant_governor();
