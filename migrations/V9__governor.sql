-- The provider governor: fleet-wide limits per provider, and pauses.
--
-- jr_providers: a provider with no row has no limits. max_running bounds the provider's
-- tasks assigned + in progress across the fleet; max_starts_per_minute bounds how many
-- the assigners hand out per minute — a token bucket kept here (tokens, tokens_at), so it
-- holds across assigners and restarts. An assigner's round locks the rows of the limited
-- providers it routes (FOR UPDATE, in name order) before it counts, so several assigners
-- never exceed a limit together.
CREATE TABLE jr_providers (
    name                  text PRIMARY KEY
                          CONSTRAINT jr_providers_name_check
                          CHECK (name <> '' AND name !~ '[[:cntrl:],]' AND length(name) <= 200),
    max_running           integer CONSTRAINT jr_providers_max_running_check
                          CHECK (max_running BETWEEN 0 AND 1000000),
    max_starts_per_minute integer CONSTRAINT jr_providers_max_starts_check
                          CHECK (max_starts_per_minute BETWEEN 1 AND 1000000),
    -- Providers whose workers may take this provider's tasks while it is paused (only
    -- tasks that allow it: payload "fallback": true).
    fallback              text[] NOT NULL DEFAULT '{}'
                          CONSTRAINT jr_providers_fallback_check
                          CHECK (array_position(fallback, NULL) IS NULL),
    tokens                float8 NOT NULL DEFAULT 0,
    tokens_at             timestamptz NOT NULL DEFAULT now(),
    updated_by            text NOT NULL DEFAULT '',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- A provider's tasks assigned + in progress now. VOLATILE, so that its count takes a
-- snapshot of its own: the routing round calls it right after it locked the provider's
-- row, and must see what the assigner that held the lock before it committed.
CREATE FUNCTION jrq_provider_active(p_provider text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT count(*) FROM public.jr_work_queue q
            WHERE q.status = 'assigned' AND q.provider = p_provider)
         + (SELECT count(*) FROM public.jr_work_queue q
            WHERE q.status = 'in_progress' AND q.provider = p_provider);
END;
$$;

-- jr_pauses: a paused scope gets no new assignments; running tasks finish. scope 'all'
-- (target ''), 'provider', 'run' (target: the run id) or 'worker'. until NULL: until
-- `jrq resume`; otherwise until then (a provider that refused for lack of quota).
CREATE TABLE jr_pauses (
    scope      text NOT NULL CONSTRAINT jr_pauses_scope_check
               CHECK (scope IN ('all', 'provider', 'run', 'worker')),
    target     text NOT NULL DEFAULT ''
               CONSTRAINT jr_pauses_target_check
               CHECK ((scope = 'all') = (target = '') AND target !~ '[[:cntrl:]]'
                      AND length(target) <= 200),
    until      timestamptz,
    reason     text NOT NULL DEFAULT ''
               CONSTRAINT jr_pauses_reason_check CHECK (length(reason) <= 1000),
    set_by     text NOT NULL DEFAULT '',
    set_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, target)
);

-- A worker whose executor said the provider refused (exit 76) pauses the provider of
-- each such task it holds, fenced like its outcomes, until the time given: fleet-wide,
-- before the task goes back to pending (so no other worker burns an attempt on it), for
-- the time the executor gave — between 5 s and 24 h, whatever a worker login passes. A
-- pause set by hand (no end) is left as it is; a timed one is only ever extended.
CREATE FUNCTION jrq_providers_refused(p_worker text, p_instance uuid, p_ids bigint[],
    p_attempts integer[], p_pause_ms bigint[], p_whys text[])
RETURNS TABLE (provider text, until timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    WITH f AS (
        SELECT id, attempt, why,
            now() + least(greatest(coalesce(ms, 0), 5000), 86400000)
                * interval '1 millisecond' AS until
        FROM unnest(p_ids, p_attempts, p_pause_ms, p_whys) AS f(id, attempt, ms, why)),
    t AS (
        SELECT q.provider, max(f.until) AS until,
            (array_agg('rate-limited by worker ' || p_worker || ', task ' || q.id || ': '
                || left(f.why, 300) ORDER BY f.until DESC))[1] AS reason
        FROM public.jr_work_queue q JOIN f ON f.id = q.id
        WHERE q.assigned_jr = p_worker AND q.lease_instance = p_instance
          AND q.attempts = f.attempt AND q.status = 'in_progress'
          AND q.provider <> '' AND length(q.provider) <= 200
          AND q.provider !~ '[[:cntrl:]]'
        GROUP BY q.provider)
    INSERT INTO public.jr_pauses AS p (scope, target, until, reason, set_by)
    SELECT 'provider', t.provider, t.until, t.reason, left(p_worker, 200) FROM t
    ON CONFLICT (scope, target) DO UPDATE SET until = EXCLUDED.until,
        reason = EXCLUDED.reason, set_by = EXCLUDED.set_by, set_at = now()
        WHERE p.until IS NOT NULL AND p.until < EXCLUDED.until
    RETURNING p.target, p.until
$$;

REVOKE EXECUTE ON FUNCTION jrq_providers_refused(text, uuid, bigint[], integer[],
    bigint[], text[]) FROM PUBLIC;

-- The rights of the groups on these tables (the groups of V6). Call it after every
-- jrq_grant_groups() — which revokes what it does not grant, also the column grant on
-- jr_task_events below — as `jrq roles setup` does, and as any later migration that
-- calls jrq_grant_groups() must.
CREATE FUNCTION jrq_grant_governor() RETURNS void
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
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_reader') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_admin') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.jr_providers, public.jr_pauses
            TO jrq_admin;
    END IF;
END;
$$;

REVOKE EXECUTE ON FUNCTION jrq_grant_governor() FROM PUBLIC;

SELECT jrq_grant_governor();
