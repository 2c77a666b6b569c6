-- V12: long agent tasks — live output, idle timeouts, checkpoints, usage and budgets.
--
-- Live output: a worker streams each running attempt's stdout and stderr into
-- jr_task_output in batches (at most every 500 ms, or sooner at 64 KiB, one statement per
-- batch for all its tasks), fenced like its outcomes, and keeps a bounded tail per task:
-- it trims a task's oldest chunks once the task holds more than its keep (the worker's
-- --output-keep, 1 MiB by default). `jrq logs` reads them; `jrq prune` deletes them with
-- their tasks. Each batch notifies jrq_output with the task ids written (`jrq logs
-- --follow` listens; it polls as well).
--
-- Idle timeout: an attempt that writes no output and no progress for idle_timeout ends as
-- retryable ("idle: no output for 10m"); NULL uses the worker's default.
--
-- Checkpoints: an executor's `JRQ-CHECKPOINT: <JSON>` line is stored on the task (the
-- latest wins, with an event); the next attempt gets it (JR_CHECKPOINT).
--
-- Usage: `JRQ-USAGE: {...}` lines add to jr_task_usage, a ledger of what each attempt
-- reported (tokens, cost in micro-dollars: integers add up the same in any order), by
-- task, attempt, worker, provider, run and model. Budgets: jr_runs.max_cost_usd and
-- jr_providers.max_cost_usd_per_day; the worker's usage write keeps their running sums
-- (jr_runs.cost_microusd, jr_providers.cost_day/cost_day_microusd — counters, which a
-- prune does not lower) and pauses the run (until `jrq resume` or a higher budget) or the
-- provider (until the next midnight UTC) once a sum reaches its budget: the pause is what
-- stops assignments and what `jrq show` gives as the reason a task waits. A task's own
-- max_cost_usd is the worker's to enforce: it ends the attempt "over budget".

-- The new columns are NULL in every existing row, so their checks are added NOT VALID:
-- enforced from now on, without a scan of the whole table under this migration's lock.
ALTER TABLE jr_work_queue
    ADD COLUMN idle_timeout interval,
    ADD COLUMN max_cost_usd float8,
    ADD COLUMN checkpoint jsonb,
    ADD COLUMN checkpoint_at timestamptz,
    ADD CONSTRAINT jr_work_queue_idle_timeout_check CHECK (idle_timeout > interval '0')
        NOT VALID,
    ADD CONSTRAINT jr_work_queue_max_cost_check
        CHECK (max_cost_usd >= 0 AND max_cost_usd <= 1e9) NOT VALID;

ALTER TABLE jr_runs
    ADD COLUMN max_cost_usd float8
        CONSTRAINT jr_runs_max_cost_check CHECK (max_cost_usd >= 0 AND max_cost_usd <= 1e9),
    ADD COLUMN cost_microusd bigint NOT NULL DEFAULT 0;

ALTER TABLE jr_providers
    ADD COLUMN max_cost_usd_per_day float8
        CONSTRAINT jr_providers_max_cost_check
        CHECK (max_cost_usd_per_day >= 0 AND max_cost_usd_per_day <= 1e9),
    -- The UTC day cost_day_microusd counts.
    ADD COLUMN cost_day date,
    ADD COLUMN cost_day_microusd bigint NOT NULL DEFAULT 0;

CREATE TABLE jr_task_output (
    task_id bigint NOT NULL,
    seq     bigint GENERATED ALWAYS AS IDENTITY,
    attempt integer NOT NULL,
    stream  text NOT NULL CONSTRAINT jr_task_output_stream_check
            CHECK (stream IN ('stdout', 'stderr')),
    at      timestamptz NOT NULL DEFAULT now(),
    data    text NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE jr_task_usage (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id        bigint NOT NULL,
    attempt        integer NOT NULL,
    worker         text NOT NULL,
    -- The effective provider (the fallback the task was routed to, else its own).
    provider       text NOT NULL,
    run_id         uuid,
    model          text NOT NULL DEFAULT '',
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    cost_microusd  bigint NOT NULL DEFAULT 0,
    at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jr_task_usage_task_idx ON jr_task_usage (task_id);
CREATE INDEX jr_task_usage_at_idx ON jr_task_usage (at);

-- The claims return what the attempt needs besides the payload: the task's idle
-- timeout, its checkpoint, its budget and what earlier attempts spent. The result type
-- changes, so they are dropped and created again (same arguments, same rights below).
-- A worker of the release before selects its columns by name and goes on working.
DROP FUNCTION jrq_tasks_claim(text, bigint, uuid, uuid);
DROP FUNCTION jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], text[],
    text[], text[], bigint[], boolean[], bigint, uuid);

CREATE FUNCTION jrq_tasks_claim(p_worker text, p_limit bigint, p_instance uuid,
                                           p_run uuid)
RETURNS TABLE (id bigint, title text, payload jsonb, attempts integer, max_attempts integer,
               run_id uuid, provider text, timeout_ms bigint,
               idle_timeout_ms bigint, checkpoint jsonb, max_cost_microusd bigint,
               cost_microusd bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT q.id, q.attempts >= q.max_attempts AS used_up FROM public.jr_work_queue q
        WHERE q.status = 'assigned' AND q.assigned_jr = p_worker
          AND (p_run IS NULL OR q.run_id = p_run)
          AND EXISTS (SELECT 1 FROM public.jr_status s
                      WHERE s.jr_name = p_worker AND s.instance_id = p_instance)
        ORDER BY q.sacred_fire_priority DESC, q.priority, q.created_at, q.id
        LIMIT p_limit FOR UPDATE OF q SKIP LOCKED),
    used_up AS (
        UPDATE public.jr_work_queue q SET status = 'failed', completed_at = now(),
            error = 'no attempts left: ' || q.attempts || ' of ' || q.max_attempts
                || ' used before this claim', updated_at = now()
        FROM c WHERE c.used_up AND q.id = c.id
        RETURNING q.id, q.attempts),
    used_up_ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT u.id, p_worker, 'failed', 'assigned', 'failed', p_worker, u.attempts,
            'no attempts left when claimed'
        FROM used_up u),
    upd AS (
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
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_worker, 'started', 'assigned', 'in_progress', p_worker, upd.attempts,
            'attempt ' || upd.attempts || ' of ' || upd.max_attempts
        FROM upd)
    SELECT upd.id, upd.title, upd.payload, upd.attempts, upd.max_attempts, upd.run_id,
        upd.provider, upd.timeout_ms, upd.idle_timeout_ms, upd.checkpoint,
        upd.max_cost_microusd,
        -- What earlier attempts spent, for a task with a budget of its own (0 without).
        CASE WHEN upd.max_cost_microusd IS NULL THEN 0::int8 ELSE coalesce((
            SELECT sum(u.cost_microusd) FROM public.jr_task_usage u
            WHERE u.task_id = upd.id), 0)::int8 END
    FROM upd ORDER BY upd.sacred_fire_priority DESC, upd.priority, upd.created_at, upd.id;
END;
$$;

CREATE FUNCTION jrq_tasks_finish_and_claim(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_to_status text[], p_actions text[], p_results text[],
    p_errors text[], p_backoff_ms bigint[], p_failures boolean[], p_limit bigint, p_run uuid)
RETURNS TABLE (finished bigint[], id bigint, title text, payload jsonb, attempts integer,
               max_attempts integer, run_id uuid, provider text, timeout_ms bigint,
               idle_timeout_ms bigint, checkpoint jsonb, max_cost_microusd bigint,
               cost_microusd bigint)
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
        WHERE jr_name = p_worker AND instance_id = p_instance
          AND EXISTS (SELECT 1 FROM fin WHERE fin.to_status = 'completed' OR fin.failure)),
    n AS (
        SELECT pg_notify('jrq_pending', 'capacity') FROM fin LIMIT 1),
    c AS (
        SELECT q.id, q.attempts >= q.max_attempts AS used_up FROM public.jr_work_queue q
        WHERE q.status = 'assigned' AND q.assigned_jr = p_worker
          AND (p_run IS NULL OR q.run_id = p_run)
          AND EXISTS (SELECT 1 FROM public.jr_status s
                      WHERE s.jr_name = p_worker AND s.instance_id = p_instance)
        ORDER BY q.sacred_fire_priority DESC, q.priority, q.created_at, q.id
        LIMIT p_limit FOR UPDATE OF q SKIP LOCKED),
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
            WHERE u.task_id = cl.id), 0)::int8 END
    FROM done LEFT JOIN cl ON true
    WHERE done.notified >= 0
    ORDER BY cl.sacred_fire_priority DESC, cl.priority, cl.created_at, cl.id;
END;
$$;

-- A batch of output chunks, fenced row by row like the outcomes; then the oldest chunks
-- of the tasks in p_trim (those of the batch the worker says grew by a quarter of the
-- keep since their last trim) beyond the newest p_keep_bytes. Returns the chunks stored.
CREATE FUNCTION jrq_tasks_output(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_streams text[], p_data text[], p_trim bigint[],
    p_keep_bytes bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    WITH f AS (
        SELECT f.ord, f.id, f.attempt, f.stream, f.data
        FROM unnest(p_ids, p_attempts, p_streams, p_data) WITH ORDINALITY
            AS f(id, attempt, stream, data, ord)),
    ok AS (
        SELECT f.* FROM f JOIN public.jr_work_queue q ON q.id = f.id
        WHERE q.assigned_jr = p_worker AND q.lease_instance = p_instance
          AND q.attempts = f.attempt AND q.status = 'in_progress'),
    ins AS (
        INSERT INTO public.jr_task_output (task_id, attempt, stream, data)
        SELECT ok.id, ok.attempt, ok.stream, ok.data FROM ok ORDER BY ok.ord
        RETURNING task_id),
    trimmed AS (
        DELETE FROM public.jr_task_output o
        USING (SELECT t.task_id, t.seq, sum(octet_length(t.data))
                   OVER (PARTITION BY t.task_id ORDER BY t.seq DESC) AS upto
               FROM public.jr_task_output t
               WHERE t.task_id = ANY (ARRAY(SELECT DISTINCT ok.id FROM ok
                                            WHERE ok.id = ANY (p_trim)))) x
        WHERE o.task_id = x.task_id AND o.seq = x.seq
          AND x.upto > greatest(p_keep_bytes, 0)
        RETURNING 1),
    -- (A notification's payload holds at most 8000 bytes: past that, 'many'.)
    ids AS (
        SELECT string_agg(DISTINCT ok.id::text, ',') AS list FROM ok HAVING count(*) > 0),
    n AS (
        SELECT pg_notify('jrq_output',
            CASE WHEN octet_length(ids.list) > 7000 THEN 'many' ELSE ids.list END)
        FROM ids)
    SELECT (SELECT count(*) FROM ins) + 0 * (SELECT count(*) FROM trimmed)
        + 0 * (SELECT count(*) FROM n)
    INTO v_rows;
    RETURN v_rows;
END;
$$;

-- Text as jsonb, or NULL when jsonb refuses it (a number beyond numeric's range, ...):
-- one bad checkpoint must not fail the batch it came in.
CREATE FUNCTION jrq_jsonb_or_null(p_text text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN p_text::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

-- The latest checkpoint of running attempts (JSON, at most 64 KiB as written and as
-- jsonb prints it: it goes into the next attempt's environment, where a string may hold
-- at most 128 KiB), fenced; one event each. Returns the ids stored.
CREATE FUNCTION jrq_tasks_checkpoint(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_checkpoints text[])
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    WITH f0 AS (
        SELECT f0.id, f0.attempt, public.jrq_jsonb_or_null(f0.ck) AS ck
        FROM unnest(p_ids, p_attempts, p_checkpoints) AS f0(id, attempt, ck)
        WHERE octet_length(f0.ck) <= 65536),
    f AS (
        SELECT f0.* FROM f0
        WHERE f0.ck IS NOT NULL AND octet_length(f0.ck::text) <= 65536),
    upd AS (
        UPDATE public.jr_work_queue q SET checkpoint = f.ck, checkpoint_at = now()
        FROM f
        WHERE q.id = f.id AND q.assigned_jr = p_worker AND q.lease_instance = p_instance
          AND q.attempts = f.attempt AND q.status = 'in_progress'
        RETURNING q.id, f.attempt, octet_length(f.ck::text) AS bytes),
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_worker, 'checkpoint', 'in_progress', 'in_progress', p_worker,
            upd.attempt, 'checkpoint saved (' || upd.bytes || ' bytes)'
        FROM upd)
    SELECT coalesce(array_agg(upd.id ORDER BY upd.id), '{}') INTO v_ids FROM upd;
    RETURN v_ids;
END;
$$;

-- Usage reported by running attempts (deltas: tokens, micro-dollars), fenced; the runs'
-- and providers' running sums; and the pauses of those that reached their budget.
-- Returns the pauses set: (scope, target, reason).
CREATE FUNCTION jrq_tasks_usage(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_models text[], p_input bigint[], p_output bigint[],
    p_cost_microusd bigint[])
RETURNS TABLE (scope text, target text, reason text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    -- The runs' and providers' rows in one order, whatever the batch: two workers
    -- reporting at once wait for each other instead of deadlocking.
    PERFORM 1 FROM public.jr_runs r
    WHERE r.id IN (SELECT q.run_id FROM public.jr_work_queue q WHERE q.id = ANY (p_ids))
    ORDER BY r.id FOR UPDATE;
    PERFORM 1 FROM public.jr_providers p
    WHERE p.name IN (SELECT coalesce(q.routed_provider, q.provider)
                     FROM public.jr_work_queue q WHERE q.id = ANY (p_ids))
    ORDER BY p.name FOR UPDATE;
    RETURN QUERY
    WITH f AS (
        SELECT f.id, f.attempt, left(coalesce(f.model, ''), 200) AS model,
            -- Bounded, whatever a worker login sends: sums never overflow.
            least(greatest(coalesce(f.i, 0), 0), 1000000000000) AS i,
            least(greatest(coalesce(f.o, 0), 0), 1000000000000) AS o,
            least(greatest(coalesce(f.c, 0), 0), 1000000000000000) AS c
        FROM unnest(p_ids, p_attempts, p_models, p_input, p_output, p_cost_microusd)
            AS f(id, attempt, model, i, o, c)),
    ok AS (
        SELECT f.*, coalesce(q.routed_provider, q.provider) AS provider, q.run_id
        FROM f JOIN public.jr_work_queue q ON q.id = f.id
        WHERE q.assigned_jr = p_worker AND q.lease_instance = p_instance
          AND q.attempts = f.attempt AND q.status = 'in_progress'),
    ins AS (
        INSERT INTO public.jr_task_usage (task_id, attempt, worker, provider, run_id, model,
            input_tokens, output_tokens, cost_microusd)
        SELECT ok.id, ok.attempt, p_worker, ok.provider, ok.run_id, ok.model, ok.i, ok.o,
            ok.c
        FROM ok ORDER BY ok.id
        RETURNING 1),
    -- The runs' sums (every run: `jrq runs` shows them), then their budgets.
    runs AS (
        UPDATE public.jr_runs r SET cost_microusd = r.cost_microusd + b.cost
        FROM (SELECT b.run_id, sum(b.cost)::int8 AS cost, max(b.task_id) AS task_id
              FROM (SELECT ok.run_id, ok.c AS cost, ok.id AS task_id FROM ok) b
              WHERE b.run_id IS NOT NULL AND b.cost > 0
              GROUP BY b.run_id) b
        WHERE r.id = b.run_id
        RETURNING r.id, r.name, r.cost_microusd, r.max_cost_usd, b.task_id),
    run_pause AS (
        INSERT INTO public.jr_pauses AS p (scope, target, until, reason, set_by)
        SELECT 'run', runs.id::text, NULL,
            'over budget: $' || to_char(runs.cost_microusd / 1e6, 'FM999999990.00')
                || ' spent of the run''s $'
                || to_char(runs.max_cost_usd, 'FM999999990.00')
                || ' (reached with task ' || runs.task_id || ')',
            'budget'
        FROM runs
        WHERE runs.max_cost_usd IS NOT NULL
          AND runs.cost_microusd >= runs.max_cost_usd * 1e6
        ON CONFLICT (scope, target) DO UPDATE SET reason = EXCLUDED.reason,
            set_at = now()
            WHERE p.set_by = 'budget'
        RETURNING p.scope, p.target, p.reason),
    -- The providers' sums of the day (UTC), for those with a row, then their budgets.
    provs AS (
        UPDATE public.jr_providers p SET
            cost_day_microusd = CASE WHEN p.cost_day = (now() AT TIME ZONE 'UTC')::date
                THEN p.cost_day_microusd ELSE 0 END + b.cost,
            cost_day = (now() AT TIME ZONE 'UTC')::date
        FROM (SELECT b.provider, sum(b.cost)::int8 AS cost, max(b.task_id) AS task_id
              FROM (SELECT ok.provider, ok.c AS cost, ok.id AS task_id FROM ok) b
              WHERE b.provider <> '' AND b.cost > 0
              GROUP BY b.provider) b
        WHERE p.name = b.provider
        RETURNING p.name, p.cost_day_microusd, p.max_cost_usd_per_day, b.task_id),
    prov_pause AS (
        INSERT INTO public.jr_pauses AS p (scope, target, until, reason, set_by)
        SELECT 'provider', provs.name,
            (((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC'),
            'over budget: $' || to_char(provs.cost_day_microusd / 1e6, 'FM999999990.00')
                || ' spent today (UTC) of its $'
                || to_char(provs.max_cost_usd_per_day, 'FM999999990.00')
                || ' a day (reached with task ' || provs.task_id || ')',
            'budget'
        FROM provs
        WHERE provs.max_cost_usd_per_day IS NOT NULL
          AND provs.cost_day_microusd >= provs.max_cost_usd_per_day * 1e6
        -- A pause set by hand is left as it is (also a timed one); a refusal's pause
        -- (set by a worker, rate-limited) gives way to the longer budget pause.
        ON CONFLICT (scope, target) DO UPDATE SET until = EXCLUDED.until,
            reason = EXCLUDED.reason, set_by = EXCLUDED.set_by, set_at = now()
            WHERE p.until IS NOT NULL AND p.until <= EXCLUDED.until
              AND (p.set_by = 'budget' OR p.reason LIKE 'rate-limited by worker %')
        RETURNING p.scope, p.target, p.reason)
    SELECT * FROM run_pause UNION ALL SELECT * FROM prov_pause
    -- (the insert runs whether or not a row is returned: a data-modifying WITH always does)
    ;
END;
$$;

REVOKE EXECUTE ON FUNCTION
    jrq_tasks_claim(text, bigint, uuid, uuid),
    jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], text[], text[],
        text[], bigint[], boolean[], bigint, uuid),
    jrq_tasks_output(text, uuid, bigint[], integer[], text[], text[], bigint[], bigint),
    jrq_tasks_checkpoint(text, uuid, bigint[], integer[], text[]),
    jrq_tasks_usage(text, uuid, bigint[], integer[], text[], bigint[], bigint[], bigint[])
FROM PUBLIC;

-- The rights of V11, and those on what V12 adds. The claims were created again above:
-- jrq_grant_groups() grants them (by their unchanged arguments), then this.
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
