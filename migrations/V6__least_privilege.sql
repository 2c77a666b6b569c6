-- jrq schema, version 6: least privilege.
--
-- One group role (NOLOGIN) per program, each granted exactly what that program does; a
-- login user gets the rights of its program by membership (`jrq roles grant GROUP LOGIN`).
-- The schema owner (the user that runs `jrq migrate`) keeps the DDL. docs/security.md has
-- the threat model and the list of rights.
--
--   jrq_worker    jr-queue-worker: no table rights at all besides reading a run's status;
--                 every write goes through the SECURITY DEFINER functions below, fenced
--                 as the statements were (task id, worker name, attempt, lease_instance;
--                 the registry row's instance for claims and registry writes), so a
--                 worker login touches only what its own process holds, and cannot read
--                 the fences (lease_instance, instance_id) of others.
--   jrq_assigner  jr-auto-assigner: routes (column grants: status and assignment, the error
--                 of an unreachable pin, the circuit columns); registers like a worker.
--   jrq_monitor   jr-health-monitor and jr-stale-cleanup: rescues, fails overdue, marks
--                 workers dead or lost, closes auto-complete runs.
--   jrq_reader    dashboards, `jrq status/tasks/show/runs list/workers`: SELECT only.
--   jrq_admin     the CLI's writes: enqueue, retry, cancel, runs, prune (the only DELETE).
--
-- Roles are cluster-wide and jrq's schema is per database: the groups are created when the
-- migrating user may (CREATEROLE or superuser), race-safe against migrations of other
-- databases at the same moment; a user that may not leaves them to a DBA and the migration
-- still succeeds (`jrq migrate` says so in one line; `jrq roles setup` applies the grants
-- later). The grants go to whichever groups exist, and running them again changes nothing.
-- A later migration that adds a table, a column or a function replaces jrq_grant_groups()
-- and calls it again.
--
-- Every function below is owned by the schema owner, sets a search_path of pg_catalog
-- alone (pg_temp last, so a temporary table cannot capture a name; it is never searched
-- for functions or operators) and names jrq's tables with their schema.

-- The worker claims up to p_limit tasks assigned to p_worker, in the order of service, and
-- starts them (one `started` event each). Only a process that holds the name — the
-- registry row of p_worker carries p_instance — may claim.
-- The claim starts only tasks with an attempt left: an assigned task whose attempts are
-- used up (a psql write can leave one) fails at once, with an event, instead of running
-- as "attempt 4 of 3" (or failing every claim once the count would pass its limit).
CREATE FUNCTION jrq_tasks_claim(p_worker text, p_limit bigint, p_instance uuid,
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
        RETURNING q.id, q.title, q.payload, q.attempts, q.max_attempts, q.run_id, q.provider,
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

-- The worker writes outcomes, each fenced row by row by (id, worker, attempt,
-- lease_instance, in_progress), each with its event, and its registry counters (fenced by
-- its instance). One notification on jrq_pending (db::CHANNEL_PENDING) tells the assigners
-- that capacity freed up. Returns the ids whose write matched.
CREATE FUNCTION jrq_tasks_finish(p_worker text, p_instance uuid, p_ids bigint[],
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

-- The worker records progress (0–100) of the attempts it runs, fenced like every outcome.
-- Returns how many rows matched.
-- The worker's hot cycle in one call: write a batch of outcomes, then claim what the freed
-- capacity allows — one statement, so one round trip, one implicit transaction and one
-- plan (no BEGIN/COMMIT around two calls, no function calling functions). It repeats the
-- statements of jrq_tasks_finish and jrq_tasks_claim as CTEs: change them together. The
-- finished and the claimed tasks are different rows (in_progress, assigned), and the
-- limit is the capacity the outcomes free, so the two parts need no order between them.
-- Each row carries the ids whose outcome matched; with nothing claimed, one row has them
-- and NULL elsewhere.
CREATE FUNCTION jrq_tasks_finish_and_claim(p_worker text, p_instance uuid, p_ids bigint[],
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
        RETURNING q.id, q.title, q.payload, q.attempts, q.max_attempts, q.run_id, q.provider,
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

CREATE FUNCTION jrq_tasks_progress(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_percent smallint[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    UPDATE public.jr_work_queue q SET progress_percent = f.pct, updated_at = now()
    FROM unnest(p_ids, p_attempts, p_percent) AS f(id, attempt, pct)
    WHERE q.id = f.id AND q.assigned_jr = p_worker AND q.attempts = f.attempt
      AND q.lease_instance = p_instance AND q.status = 'in_progress';
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

-- A stopping worker gives the tasks assigned to it but not started back to pending (one
-- event each). Only the process that holds the name may.
CREATE FUNCTION jrq_tasks_unassign_own(p_worker text, p_instance uuid, p_why text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
    v_notified bigint;
BEGIN
    WITH upd AS (
        UPDATE public.jr_work_queue q SET status = 'pending', assigned_jr = NULL,
            assigned_at = NULL, updated_at = now()
        WHERE q.status = 'assigned' AND q.assigned_jr = p_worker
          AND EXISTS (SELECT 1 FROM public.jr_status s
                      WHERE s.jr_name = p_worker AND s.instance_id = p_instance)
        RETURNING q.id, q.attempts),
    ev AS (
        INSERT INTO public.jr_task_events
            (task_id, actor, action, from_status, to_status, worker, attempt, details)
        SELECT upd.id, p_worker, 'unassigned', 'assigned', 'pending', p_worker, upd.attempts,
            p_why
        FROM upd),
    n AS (SELECT pg_notify('jrq_pending', 'unassign') FROM upd LIMIT 1)
    SELECT count(*), (SELECT count(*) FROM n) INTO v_count, v_notified FROM upd;
    RETURN v_count;
END;
$$;

-- A worker's (or assigner's) heartbeat: refreshes its registry row (fenced by its
-- instance) and reads back the status of the run it serves, the tasks it holds a lease
-- on, and which of those have a cancel request. matched = 0: the name was taken over.
CREATE FUNCTION jrq_workers_heartbeat(p_name text, p_instance uuid, p_load integer,
    p_status text, p_status_text text, p_run uuid)
RETURNS TABLE (matched bigint, run_status text, held bigint[], cancel_requested bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH w AS (
        UPDATE public.jr_status s SET last_seen = now(), current_load = p_load,
            status = p_status, status_text = p_status_text, is_online = true,
            updated_at = now()
        WHERE s.jr_name = p_name AND s.instance_id = p_instance RETURNING 1)
    SELECT (SELECT count(*) FROM w),
        (SELECT r.status FROM public.jr_runs r WHERE r.id = p_run),
        coalesce((SELECT array_agg(q.id) FROM public.jr_work_queue q
                  WHERE q.status = 'in_progress' AND q.assigned_jr = p_name
                    AND q.lease_instance = p_instance), '{}'),
        coalesce((SELECT array_agg(q.id) FROM public.jr_work_queue q
                  WHERE q.status = 'in_progress' AND q.assigned_jr = p_name
                    AND q.lease_instance = p_instance
                    AND q.cancel_requested_at IS NOT NULL), '{}');
END;
$$;

-- Locks a name for the rest of the transaction (the name, not only its row: processes
-- registering one new name at the same moment take turns) and returns its holder —
-- without its instance id, which fences the holder's writes.
CREATE FUNCTION jrq_workers_lock(p_name text)
RETURNS TABLE (kind text, host text, pid integer, boot_id text, is_online boolean,
               last_seen_age_s double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('jrq registry name ' || p_name, 0));
    RETURN QUERY
    SELECT s.kind, s.host, s.pid, s.boot_id, s.is_online,
        extract(epoch FROM now() - s.last_seen)::float8
    FROM public.jr_status s WHERE s.jr_name = p_name FOR UPDATE OF s;
END;
$$;

-- Writes the registry row of a starting worker (or assigner) process: online, starting,
-- load 0; the circuit breaker's state survives. For a worker, the tasks the previous
-- instance of the name left in progress go back in the same statement — pending again
-- with the attempt counted, failed when that was the last attempt, cancelled when a cancel
-- was requested (the same rules as the monitor's rescue: db::tasks RESCUE_SET) — each with
-- a `rescued` event saying p_takeover_why. Returns the previous holder's host and instance
-- (NULL for a new name): its leases are gone by then, so the instance fences nothing.
-- The caller decides whether it may take the name (registry::decide) after
-- jrq_workers_lock, in the same transaction.
CREATE FUNCTION jrq_workers_register(p_name text, p_kind text, p_host text, p_pid integer,
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
    v_notified bigint;
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
            FOR UPDATE OF q),
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
                error = p_takeover_why || CASE
                    WHEN q.cancel_requested_at IS NOT NULL
                        THEN ' (a cancel was requested: cancelled)'
                    WHEN q.attempts >= q.max_attempts THEN ' (attempts used up)'
                    ELSE '' END
            FROM old WHERE q.id = old.id
            RETURNING q.id, q.status, q.attempts),
        ev AS (
            INSERT INTO public.jr_task_events
                (task_id, actor, action, from_status, to_status, worker, attempt, details)
            SELECT upd.id, p_name, 'rescued', 'in_progress', upd.status, p_name, upd.attempts,
                p_takeover_why
            FROM upd),
        n AS (SELECT pg_notify('jrq_pending', 'rescue') FROM upd
              WHERE upd.status = 'pending' LIMIT 1)
        SELECT coalesce(array_agg(upd.id ORDER BY upd.id), '{}'),
            coalesce(array_agg(upd.status ORDER BY upd.id), '{}'),
            (SELECT count(*) FROM n)
        INTO v_ids, v_status, v_notified
        FROM upd;
    END IF;
    RETURN QUERY SELECT v_host, v_instance, v_ids, v_status;
END;
$$;

-- Marks this instance's registry row offline (a clean exit). Returns how many rows matched.
CREATE FUNCTION jrq_workers_set_offline(p_name text, p_instance uuid, p_status_text text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    UPDATE public.jr_status s SET is_online = false, status = 'offline', current_load = 0,
        status_text = p_status_text, updated_at = now()
    WHERE s.jr_name = p_name AND s.instance_id = p_instance;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

-- Only the groups that need them may call the fenced functions (jrq_grant_groups grants).
REVOKE EXECUTE ON FUNCTION
    jrq_tasks_claim(text, bigint, uuid, uuid),
    jrq_tasks_finish(text, uuid, bigint[], integer[], text[], text[], text[], text[],
        bigint[], boolean[]),
    jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], text[], text[],
        text[], bigint[], boolean[], bigint, uuid),
    jrq_tasks_progress(text, uuid, bigint[], integer[], smallint[]),
    jrq_tasks_unassign_own(text, uuid, text),
    jrq_workers_heartbeat(text, uuid, integer, text, text, uuid),
    jrq_workers_lock(text),
    jrq_workers_register(text, text, text, integer, uuid, text, text, text[], integer,
        integer, uuid, text),
    jrq_workers_set_offline(text, uuid, text)
FROM PUBLIC;

-- Creates the groups that do not exist yet, as far as the caller may: 'created', 'exists'
-- or 'not permitted' (no CREATEROLE). Runs with the caller's rights, so a DBA who does
-- not own the schema can run it too. One block per group: a failure on one does not undo
-- another. A concurrent CREATE ROLE of the same name (a migration of another database of
-- the cluster) fails with duplicate_object or, when both insert at once, unique_violation
-- on pg_authid: both mean the group exists now.
CREATE FUNCTION jrq_create_groups()
RETURNS TABLE (group_name text, outcome text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g text;
BEGIN
    FOREACH g IN ARRAY ARRAY['jrq_worker', 'jrq_assigner', 'jrq_monitor', 'jrq_reader',
                             'jrq_admin'] LOOP
        group_name := g;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g) THEN
            outcome := 'exists';
        ELSE
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', g);
                outcome := 'created';
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    outcome := 'exists';
                WHEN insufficient_privilege THEN
                    outcome := 'not permitted';
            END;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Grants each existing group exactly its program's rights in this database, after taking
-- away whatever it had on jrq's objects (so the result is the same however often it runs).
-- Must run as the schema owner (or a superuser). Returns the groups it granted to.
CREATE FUNCTION jrq_grant_groups()
RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g text;
    done text[] := '{}';
BEGIN
    FOREACH g IN ARRAY ARRAY['jrq_worker', 'jrq_assigner', 'jrq_monitor', 'jrq_reader',
                             'jrq_admin'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g);
        EXECUTE format('REVOKE ALL ON TABLE public.jr_work_queue, public.jr_status, '
            'public.jr_runs, public.jr_task_events, public.jrq_schema_history FROM %I', g);
        EXECUTE format('REVOKE ALL ON FUNCTION '
            'public.jrq_tasks_claim(text, bigint, uuid, uuid), '
            'public.jrq_tasks_finish(text, uuid, bigint[], integer[], text[], text[], '
                'text[], text[], bigint[], boolean[]), '
            'public.jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], '
                'text[], text[], text[], bigint[], boolean[], bigint, uuid), '
            'public.jrq_tasks_progress(text, uuid, bigint[], integer[], smallint[]), '
            'public.jrq_tasks_unassign_own(text, uuid, text), '
            'public.jrq_workers_heartbeat(text, uuid, integer, text, text, uuid), '
            'public.jrq_workers_lock(text), '
            'public.jrq_workers_register(text, text, text, integer, uuid, text, text, '
                'text[], integer, integer, uuid, text), '
            'public.jrq_workers_set_offline(text, uuid, text) FROM %I', g);
        -- Every program checks the schema version; the schema itself is usable by PUBLIC
        -- on PostgreSQL's defaults, this keeps it so where PUBLIC lost it.
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', g);
        EXECUTE format('GRANT SELECT ON public.jrq_schema_history TO %I', g);
        done := done || g;
    END LOOP;

    IF 'jrq_worker' = ANY (done) THEN
        -- A run-scoped worker checks its run; everything else goes through the functions.
        GRANT SELECT (id, status) ON public.jr_runs TO jrq_worker;
        GRANT EXECUTE ON FUNCTION
            public.jrq_tasks_claim(text, bigint, uuid, uuid),
            public.jrq_tasks_finish(text, uuid, bigint[], integer[], text[], text[], text[],
                text[], bigint[], boolean[]),
            public.jrq_tasks_finish_and_claim(text, uuid, bigint[], integer[], text[], text[],
                text[], text[], bigint[], boolean[], bigint, uuid),
            public.jrq_tasks_progress(text, uuid, bigint[], integer[], smallint[]),
            public.jrq_tasks_unassign_own(text, uuid, text),
            public.jrq_workers_heartbeat(text, uuid, integer, text, text, uuid),
            public.jrq_workers_lock(text),
            public.jrq_workers_register(text, text, text, integer, uuid, text, text, text[],
                integer, integer, uuid, text),
            public.jrq_workers_set_offline(text, uuid, text)
        TO jrq_worker;
    END IF;

    IF 'jrq_assigner' = ANY (done) THEN
        -- Routing: candidates, loads, pending tasks (FOR UPDATE needs an UPDATE right),
        -- assignments, giving back tasks of vanished workers, failing unreachable pins
        -- (their status and error), and the circuit breaker's columns.
        GRANT SELECT (id, status, assigned_jr, assigned_at, provider, target_jr, run_id,
                      run_after, sacred_fire_priority, priority, created_at, attempts, error)
            ON public.jr_work_queue TO jrq_assigner;
        GRANT UPDATE (status, assigned_jr, assigned_at, completed_at, error, updated_at)
            ON public.jr_work_queue TO jrq_assigner;
        GRANT INSERT (task_id, actor, action, from_status, to_status, worker, attempt,
                      details)
            ON public.jr_task_events TO jrq_assigner;
        GRANT SELECT (jr_name, kind, providers, capacity, prefetch, run_id, is_online,
                      status, last_seen, consecutive_failures, last_failure_at,
                      circuit_open_until, circuit_reason)
            ON public.jr_status TO jrq_assigner;
        GRANT UPDATE (circuit_open_until, circuit_reason, updated_at)
            ON public.jr_status TO jrq_assigner;
        -- Its own registry row, as a worker's.
        GRANT EXECUTE ON FUNCTION
            public.jrq_workers_heartbeat(text, uuid, integer, text, text, uuid),
            public.jrq_workers_lock(text),
            public.jrq_workers_register(text, text, text, integer, uuid, text, text, text[],
                integer, integer, uuid, text),
            public.jrq_workers_set_offline(text, uuid, text)
        TO jrq_assigner;
    END IF;

    IF 'jrq_monitor' = ANY (done) THEN
        -- Rescues (stuck tasks, a dead worker's tasks for the stale cleanup), overdue
        -- failures, giving back assigned tasks, the summaries. It clears lease_instance
        -- but cannot read it.
        GRANT SELECT (id, status, assigned_jr, assigned_at, started_at, completed_at,
                      created_at, run_after, timeout, attempts, max_attempts,
                      cancel_requested_at, error, run_id)
            ON public.jr_work_queue TO jrq_monitor;
        GRANT UPDATE (status, completed_at, assigned_jr, assigned_at, run_after,
                      progress_percent, lease_instance, error, updated_at)
            ON public.jr_work_queue TO jrq_monitor;
        GRANT INSERT (task_id, actor, action, from_status, to_status, worker, attempt,
                      details)
            ON public.jr_task_events TO jrq_monitor;
        GRANT SELECT (jr_name, kind, host, pid, boot_id, invocation_id, run_id, is_online,
                      status, last_seen, capacity, circuit_open_until)
            ON public.jr_status TO jrq_monitor;
        GRANT UPDATE (is_online, status, current_load, status_text, updated_at)
            ON public.jr_status TO jrq_monitor;
        GRANT SELECT (id, status, auto_complete) ON public.jr_runs TO jrq_monitor;
        GRANT UPDATE (status, finished_at, updated_at) ON public.jr_runs TO jrq_monitor;
    END IF;

    IF 'jrq_reader' = ANY (done) THEN
        -- Everything but a task's lease fence. jr_status.instance_id is read: `jrq workers`
        -- shows it to match a registry row with the journal.
        GRANT SELECT (id, title, description, source, created_by, priority,
                      sacred_fire_priority, status, assigned_jr, created_at, assigned_at,
                      started_at, completed_at, progress_percent, payload, provider,
                      target_jr, run_id, attempts, max_attempts, timeout, run_after, result,
                      error, unique_key, cancel_requested_at, updated_at)
            ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_status, public.jr_runs, public.jr_task_events
            TO jrq_reader;
    END IF;

    IF 'jrq_admin' = ANY (done) THEN
        -- What a reader reads, and the CLI's writes. A task's title, payload and the other
        -- columns given at enqueue are written once, by INSERT; DELETE is for `jrq prune`.
        GRANT SELECT (id, title, description, source, created_by, priority,
                      sacred_fire_priority, status, assigned_jr, created_at, assigned_at,
                      started_at, completed_at, progress_percent, payload, provider,
                      target_jr, run_id, attempts, max_attempts, timeout, run_after, result,
                      error, unique_key, cancel_requested_at, updated_at)
            ON public.jr_work_queue TO jrq_admin;
        GRANT SELECT ON public.jr_status, public.jr_runs, public.jr_task_events
            TO jrq_admin;
        GRANT INSERT (title, description, source, created_by, priority, sacred_fire_priority,
                      payload, provider, target_jr, run_id, max_attempts, timeout, run_after,
                      unique_key)
            ON public.jr_work_queue TO jrq_admin;
        GRANT UPDATE (status, attempts, run_after, assigned_jr, assigned_at, started_at,
                      completed_at, progress_percent, result, error, cancel_requested_at,
                      lease_instance, updated_at)
            ON public.jr_work_queue TO jrq_admin;
        GRANT DELETE ON public.jr_work_queue, public.jr_task_events TO jrq_admin;
        GRANT INSERT (task_id, actor, action, from_status, to_status, worker, attempt,
                      details)
            ON public.jr_task_events TO jrq_admin;
        GRANT INSERT (name, auto_complete) ON public.jr_runs TO jrq_admin;
        GRANT UPDATE (status, updated_at, finished_at) ON public.jr_runs TO jrq_admin;
    END IF;
    RETURN done;
END;
$$;

REVOKE EXECUTE ON FUNCTION jrq_grant_groups() FROM PUBLIC;

SELECT * FROM jrq_create_groups();
SELECT jrq_grant_groups();
