-- V11: counters that only go up, and the monitor's standing between rounds.
--
-- Counters that only go up. jr-web's /metrics (and the monitor's text file) derive
-- their counters from the task rows in a final state: a completed row never changes, so a
-- count of them only grows — until `jrq prune` deletes rows, or `jrq retry` turns a failed
-- or cancelled row back into a pending one. Both carry what they take away into
-- jr_metric_totals, in the same statement, with the same aggregation (src/metrics.rs):
-- the counters are the rows' aggregate plus the totals, and never go down.

CREATE TABLE jr_metric_totals (
    -- What is counted: 'completed', 'failed', 'cancelled' (tasks by final state),
    -- 'attempts', 'retries', or a histogram: 'dispatch_seconds', 'run_seconds'.
    metric   text NOT NULL,
    provider text NOT NULL DEFAULT '',
    worker   text NOT NULL DEFAULT '',
    -- A histogram's bucket by its upper bound (the observations at or below it and above
    -- the bound before it, as Prometheus' le); 'Infinity' for the last bucket and for a
    -- plain counter.
    le       float8 NOT NULL DEFAULT 'Infinity',
    count    bigint NOT NULL DEFAULT 0,
    -- A histogram's sum of the observations in the bucket, in whole microseconds (integers
    -- add up the same in any order: a sum never shrinks by a rounding).
    sum_us   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (metric, provider, worker, le)
);

-- The health monitors' standing between rounds, one row per host: the alerts of its last
-- round and since when it has seen the queue unhealthy, so that `--alert-on-change` fails
-- its unit (and OnFailure= alerts) on the change into unhealthy and once on recovery, not
-- every round. Per host: some alerts are the host's own (load, memory, thresholds set in
-- its environment), and one shared row would flap between hosts that see different ones.
CREATE TABLE jr_monitor_state (
    host      text PRIMARY KEY,
    alerts    text[] NOT NULL DEFAULT '{}',
    -- When the alerts began (NULL while healthy).
    since     timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

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
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_monitor') THEN
        GRANT SELECT, INSERT, UPDATE ON public.jr_monitor_state TO jrq_monitor;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_reader') THEN
        GRANT SELECT ON public.jr_providers, public.jr_pauses TO jrq_reader;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_reader;
        GRANT SELECT ON public.jr_metric_totals, public.jr_monitor_state TO jrq_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jrq_admin') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.jr_providers, public.jr_pauses
            TO jrq_admin;
        GRANT SELECT (fallback_ok, routed_provider) ON public.jr_work_queue TO jrq_admin;
        GRANT INSERT (fallback_ok) ON public.jr_work_queue TO jrq_admin;
        -- `jrq prune` and `jrq retry` carry what they remove into the totals.
        GRANT SELECT, INSERT, UPDATE ON public.jr_metric_totals TO jrq_admin;
    END IF;
END;
$$;

SELECT jrq_grant_governor();
