-- Fallback routing and worker health.
--
-- Fallback: while a provider is paused, its tasks that allow it (fallback_ok: `jrq enqueue
-- --fallback-ok`, or a payload with "fallback": true, which the trigger below turns into
-- the column) may go to the workers of the providers in its jr_providers.fallback list.
-- routed_provider is the provider an assignment was made under when it differs from the
-- task's own (NULL otherwise); the assigner writes it with every assignment, so a task
-- assigned or in progress always carries its current one. It is what the worker is told
-- (the claim returns it as the provider: the executor's JR_PROVIDER), what counts against
-- a provider's limits (jrq_provider_active) and what a refusal pauses.
ALTER TABLE jr_work_queue
    ADD COLUMN fallback_ok boolean NOT NULL DEFAULT false,
    ADD COLUMN routed_provider text;

CREATE FUNCTION jrq_task_fallback_from_payload() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.fallback_ok := true;
    RETURN NEW;
END;
$$;

-- The condition is evaluated without calling the function: a task whose payload does not
-- ask for fallback costs one containment test.
CREATE TRIGGER jr_work_queue_fallback_ok BEFORE INSERT ON jr_work_queue
    FOR EACH ROW WHEN (NOT NEW.fallback_ok AND NEW.payload @> '{"fallback": true}')
    EXECUTE FUNCTION jrq_task_fallback_from_payload();

-- The pending tasks that allow fallback, per provider, in the order of service: what a
-- round reads while a provider with a fallback is paused (a small index: few tasks).
CREATE INDEX jr_work_queue_fallback_idx ON jr_work_queue
    (provider, sacred_fire_priority DESC, priority ASC, created_at ASC, id ASC)
    WHERE status = 'pending' AND fallback_ok;

CREATE OR REPLACE FUNCTION jrq_provider_active(p_provider text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT count(*) FROM public.jr_work_queue q
            WHERE q.status = 'assigned'
              AND coalesce(q.routed_provider, q.provider) = p_provider)
         + (SELECT count(*) FROM public.jr_work_queue q
            WHERE q.status = 'in_progress'
              AND coalesce(q.routed_provider, q.provider) = p_provider);
END;
$$;

-- As in V9, but the provider paused is the one the attempt ran under.
CREATE OR REPLACE FUNCTION jrq_providers_refused(p_worker text, p_instance uuid,
    p_ids bigint[], p_attempts integer[], p_pause_ms bigint[], p_whys text[])
RETURNS TABLE (provider text, until timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    WITH f AS (
        SELECT id, attempt, why,
            now() + least(greatest(coalesce(ms, 0), 5000), 86400000)
                * interval '1 millisecond' AS until
        FROM unnest(p_ids, p_attempts, p_pause_ms, p_whys) AS f(id, attempt, ms, why)),
    t AS (
        SELECT coalesce(q.routed_provider, q.provider) AS provider, max(f.until) AS until,
            (array_agg('rate-limited by worker ' || p_worker || ', task ' || q.id || ': '
                || left(f.why, 300) ORDER BY f.until DESC))[1] AS reason
        FROM public.jr_work_queue q JOIN f ON f.id = q.id
        WHERE q.assigned_jr = p_worker AND q.lease_instance = p_instance
          AND q.attempts = f.attempt AND q.status = 'in_progress'
          AND coalesce(q.routed_provider, q.provider) <> ''
          AND length(coalesce(q.routed_provider, q.provider)) <= 200
          AND coalesce(q.routed_provider, q.provider) !~ '[[:cntrl:]]'
        GROUP BY 1)
    INSERT INTO public.jr_pauses AS p (scope, target, until, reason, set_by)
    SELECT 'provider', t.provider, t.until, t.reason, left(p_worker, 200) FROM t
    ON CONFLICT (scope, target) DO UPDATE SET until = EXCLUDED.until,
        reason = EXCLUDED.reason, set_by = EXCLUDED.set_by, set_at = now()
        WHERE p.until IS NOT NULL AND p.until < EXCLUDED.until
    RETURNING p.target, p.until
$$;

-- Worker health: the inputs of the score `jrq workers` shows and the assigner breaks ties
-- with (src/db/workers/health.rs has the formula). The outcome functions below keep them:
-- health_ok / health_failed count successes and failures with exponential decay, a
-- half-life of one hour (as of health_at); recent_outcomes is the last 20 attempts, oldest
-- first ('+' completed, '-' failed); last_success_at is the last completed attempt. A
-- count below 1e-9 becomes 0 before it decays further: PostgreSQL raises an error when a
-- product of floats underflows, and this is the outcome write.
ALTER TABLE jr_status
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN health_ok float8 NOT NULL DEFAULT 0,
    ADD COLUMN health_failed float8 NOT NULL DEFAULT 0,
    ADD COLUMN health_at timestamptz,
    ADD COLUMN recent_outcomes text NOT NULL DEFAULT '';

-- The functions of V6, with routed_provider returned as the provider, and the health
-- inputs kept with the other counters. jrq_tasks_finish_and_claim repeats the statements
-- of jrq_tasks_finish and jrq_tasks_claim: change them together.
CREATE OR REPLACE FUNCTION jrq_tasks_claim(p_worker text, p_limit bigint, p_instance uuid,
                                           p_run uuid)
RETURNS TABLE (id bigint, title text, payload jsonb, attempts integer, max_attempts integer,
               run_id uuid, provider text, timeout_ms bigint)
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
            q.sacred_fire_priority, q.priority, q.created_at),
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_worker, 'started', 'assigned', 'in_progress', p_worker, upd.attempts,
            'attempt ' || upd.attempts || ' of ' || upd.max_attempts
        FROM upd)
    SELECT upd.id, upd.title, upd.payload, upd.attempts, upd.max_attempts, upd.run_id,
        upd.provider, upd.timeout_ms
    FROM upd ORDER BY upd.sacred_fire_priority DESC, upd.priority, upd.created_at, upd.id;
END;
$$;

CREATE OR REPLACE FUNCTION jrq_tasks_finish(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_to_status text[], p_actions text[], p_results text[],
    p_errors text[], p_backoff_ms bigint[], p_failures boolean[])
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_notified bigint;
BEGIN
    WITH f AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_to_status, p_actions, p_results, p_errors,
            p_backoff_ms, p_failures)
        AS f(id, attempt, to_status, action, result, error, backoff_ms, failure)),
    upd AS (
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
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_worker, upd.action, 'in_progress', upd.to_status, p_worker,
            upd.attempt,
            left(upd.details, 500) || CASE WHEN upd.action = 'retry_scheduled'
                THEN ' (next attempt in ' || upd.backoff_ms || ' ms)' ELSE '' END
        FROM upd),
    w AS (
        UPDATE public.jr_status SET
            tasks_completed = tasks_completed +
                (SELECT count(*) FROM upd WHERE upd.to_status = 'completed'),
            tasks_failed = tasks_failed + (SELECT count(*) FROM upd WHERE upd.failure),
            consecutive_failures = CASE
                WHEN EXISTS (SELECT 1 FROM upd WHERE upd.to_status = 'completed') THEN 0
                ELSE consecutive_failures + (SELECT count(*) FROM upd WHERE upd.failure) END,
            last_failure_at = CASE WHEN EXISTS (SELECT 1 FROM upd WHERE upd.failure)
                THEN now() ELSE last_failure_at END,
            last_success_at = CASE WHEN EXISTS (SELECT 1 FROM upd WHERE upd.to_status = 'completed')
                THEN now() ELSE last_success_at END,
            health_ok = CASE WHEN health_ok < 1e-9 THEN 0 ELSE coalesce(health_ok
                * power(0.5::float8, least(greatest(
                    extract(epoch FROM now() - health_at)::float8, 0) / 3600, 64)), 0) END
                + (SELECT count(*) FROM upd WHERE upd.to_status = 'completed'),
            health_failed = CASE WHEN health_failed < 1e-9 THEN 0 ELSE coalesce(health_failed
                * power(0.5::float8, least(greatest(
                    extract(epoch FROM now() - health_at)::float8, 0) / 3600, 64)), 0) END
                + (SELECT count(*) FROM upd WHERE upd.failure),
            health_at = now(),
            recent_outcomes = right(recent_outcomes || coalesce((
                SELECT string_agg(CASE WHEN upd.to_status = 'completed' THEN '+' ELSE '-' END,
                    '' ORDER BY upd.id)
                FROM upd WHERE upd.to_status = 'completed' OR upd.failure), ''), 20),
            updated_at = now()
        WHERE jr_name = p_worker AND instance_id = p_instance
          AND EXISTS (SELECT 1 FROM upd WHERE upd.to_status = 'completed' OR upd.failure)),
    n AS (
        SELECT pg_notify('jrq_pending', 'capacity') FROM upd LIMIT 1)
    SELECT coalesce(array_agg(upd.id), '{}'), (SELECT count(*) FROM n)
    INTO v_ids, v_notified
    FROM upd;
    RETURN v_ids;
END;
$$;

CREATE OR REPLACE FUNCTION jrq_tasks_finish_and_claim(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_to_status text[], p_actions text[], p_results text[],
    p_errors text[], p_backoff_ms bigint[], p_failures boolean[], p_limit bigint, p_run uuid)
RETURNS TABLE (finished bigint[], id bigint, title text, payload jsonb, attempts integer,
               max_attempts integer, run_id uuid, provider text, timeout_ms bigint)
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
        cl.provider, cl.timeout_ms
    FROM done LEFT JOIN cl ON true
    WHERE done.notified >= 0
    ORDER BY cl.sacred_fire_priority DESC, cl.priority, cl.created_at, cl.id;
END;
$$;

-- The rights of V9, and those on the columns above: the assigner reads whether a task
-- allows fallback and writes the provider it routed under, and reads the health inputs;
-- the monitor reads them too; readers and admins read everything; an admin enqueues with
-- fallback_ok.
CREATE OR REPLACE FUNCTION jrq_grant_governor() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_worker') THEN
        GRANT EXECUTE ON FUNCTION public.jrq_providers_refused(text, uuid, bigint[],
            integer[], bigint[], text[]) TO jrq_worker;
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
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_reader') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_reader;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_admin') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.jr_providers, public.jr_pauses
            TO jrq_admin;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_admin;
        GRANT INSERT (fallback_ok) ON public.jr_work_queue TO jrq_admin;
    END IF;
END;
$$;

SELECT jrq_grant_governor();
