-- The rescue rules and the circuit breaker's formula, each in one place. V6 and V7 are
-- released and never change: what follows replaces V6's copy of the rescue rules inside
-- jrq_workers_register (the health monitor and the stale cleanup spelled them again in
-- their own statements) and gives the assigner's two statements one formula.

-- Putting back running tasks whose process is gone, in one place: the health monitor
-- (tasks of a silent worker), the stale cleanup (tasks of a worker whose process is gone)
-- and a worker taking over its name (its dead predecessor's) call it with the ids they
-- locked, the worker each ran on, and why. A task goes back to pending with its attempt
-- counted; it fails when that was its last attempt; it is cancelled when a cancel was
-- requested (the worker died before it could act on it: the request wins, the task does
-- not run again). One event each; one notification when any went back to pending. Runs
-- with the caller's rights.
CREATE FUNCTION jrq_tasks_rescue(p_ids bigint[], p_workers text[], p_whys text[],
    p_actor text)
RETURNS TABLE (id bigint, worker text, status text, error text)
LANGUAGE sql VOLATILE
AS $$
    WITH r AS (
        SELECT * FROM unnest(p_ids, p_workers, p_whys) AS r(id, worker, why)),
    upd AS (
        UPDATE public.jr_work_queue q SET
            status = CASE
                WHEN q.cancel_requested_at IS NOT NULL THEN 'cancelled'
                WHEN q.attempts >= q.max_attempts THEN 'failed' ELSE 'pending' END,
            completed_at = CASE WHEN q.cancel_requested_at IS NOT NULL
                OR q.attempts >= q.max_attempts THEN now() END,
            assigned_jr = CASE WHEN q.cancel_requested_at IS NOT NULL
                OR q.attempts >= q.max_attempts THEN q.assigned_jr END,
            assigned_at = CASE WHEN q.cancel_requested_at IS NOT NULL
                OR q.attempts >= q.max_attempts THEN q.assigned_at END,
            run_after = now(), progress_percent = 0, lease_instance = NULL,
            updated_at = now(),
            error = r.why || CASE
                WHEN q.cancel_requested_at IS NOT NULL
                    THEN ' (a cancel was requested: cancelled)'
                WHEN q.attempts >= q.max_attempts THEN ' (attempts used up)'
                ELSE '' END
        FROM r WHERE q.id = r.id AND q.status = 'in_progress'
        RETURNING q.id, r.worker, q.status, q.attempts, q.error),
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_actor, 'rescued', 'in_progress', upd.status, upd.worker,
            upd.attempts, upd.error
        FROM upd),
    n AS (
        SELECT pg_notify('jrq_pending', 'rescue') FROM upd
        WHERE upd.status = 'pending' LIMIT 1)
    -- The condition on n makes the notification happen (an unread output would not).
    SELECT upd.id, upd.worker, upd.status, upd.error FROM upd
    WHERE (SELECT count(*) FROM n) >= 0
    ORDER BY upd.id
$$;

-- Writes the registry row of a starting worker (or assigner) process: online, starting,
-- load 0; the circuit breaker's state survives. For a worker, the tasks the previous
-- instance of the name left in progress go back in the same statement — pending again
-- with the attempt counted, failed when that was the last attempt, cancelled when a cancel
-- was requested (the rules of jrq_tasks_rescue, above) — each with
-- a `rescued` event saying p_takeover_why. Returns the previous holder's host and instance
-- (NULL for a new name): its leases are gone by then, so the instance fences nothing.
-- The caller decides whether it may take the name (registry::decide) after
-- jrq_workers_lock, in the same transaction.
CREATE OR REPLACE FUNCTION jrq_workers_register(p_name text, p_kind text, p_host text, p_pid integer,
    p_instance uuid, p_invocation_id text, p_boot_id text, p_providers text[],
    p_capacity integer, p_prefetch integer, p_run uuid, p_takeover_why text)
RETURNS TABLE (previous_host text, previous_instance uuid, rescued_ids bigint[],
               rescued_status text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_host text;
    v_instance uuid;
    v_ids bigint[] := '{}';
    v_status text[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('jrq registry name ' || p_name, 0));
    SELECT s.host, s.instance_id INTO v_host, v_instance
    FROM public.jr_status s WHERE s.jr_name = p_name FOR UPDATE OF s;
    INSERT INTO public.jr_status AS s (jr_name, kind, host, pid, instance_id, invocation_id,
        boot_id, providers, capacity, prefetch, current_load, is_online, status, run_id,
        started_at, last_seen, status_text, updated_at)
    VALUES (p_name, p_kind, p_host, p_pid, p_instance, p_invocation_id, p_boot_id,
        p_providers, p_capacity, p_prefetch, 0, true, 'starting', p_run, now(), now(),
        'starting', now())
    ON CONFLICT (jr_name) DO UPDATE SET kind = p_kind, host = p_host, pid = p_pid,
        instance_id = p_instance, invocation_id = p_invocation_id, boot_id = p_boot_id,
        providers = p_providers, capacity = p_capacity, prefetch = p_prefetch,
        current_load = 0, is_online = true, status = 'starting', run_id = p_run,
        started_at = now(), last_seen = now(), status_text = 'starting',
        updated_at = now();
    IF p_kind = 'worker' THEN
        WITH old AS (
            SELECT q.id FROM public.jr_work_queue q
            WHERE q.status = 'in_progress' AND q.assigned_jr = p_name
              AND q.lease_instance IS DISTINCT FROM p_instance
            ORDER BY q.id
            FOR UPDATE OF q),
        ids AS (SELECT coalesce(array_agg(old.id ORDER BY old.id), '{}') AS a FROM old)
        SELECT coalesce(array_agg(r.id ORDER BY r.id), '{}'),
            coalesce(array_agg(r.status ORDER BY r.id), '{}')
        INTO v_ids, v_status
        FROM ids, public.jrq_tasks_rescue(ids.a, array_fill(p_name, ARRAY[cardinality(ids.a)]),
            array_fill(p_takeover_why, ARRAY[cardinality(ids.a)]), p_name) r;
    END IF;
    RETURN QUERY SELECT v_host, v_instance, v_ids, v_status;
END;
$$;

-- The circuit breaker's formula, in one place (the assigner's candidate query and the
-- circuit states it records both use it): a worker with K or more consecutive failed
-- attempts takes no new task until its last failure plus the cool-down, doubled for
-- each failure past K (at most 2^30 times), capped at the longest cool-down. NULL: the
-- circuit is closed. A plain SQL function, so it is inlined into the statements.
CREATE FUNCTION jrq_circuit_open_until(p_last_failure timestamptz, p_failures integer,
    p_k integer, p_cooldown_ms float8, p_max_cooldown_ms float8)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_failures >= p_k AND p_last_failure IS NOT NULL THEN
        p_last_failure + least(p_cooldown_ms * power(2, least(p_failures - p_k, 30)),
                               p_max_cooldown_ms) * interval '1 millisecond'
    END
$$;
