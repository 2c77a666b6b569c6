-- jrq schema, version 5: values every program can work with.
--
-- A plain psql INSERT is a supported way to add work, so the table itself refuses the
-- values that would break a daemon: a timeout of a million years overflowed the health
-- monitor's "started_at + timeout" on every round; an 'infinity' timestamp could not be
-- read back by `jrq tasks`; a capacity near 2^31 overflowed the assigner's arithmetic.
-- Rows already stored are brought into range first, so the constraints hold for all.

-- Task timeouts: from 1 ms to 365 days (the same range `jrq enqueue --timeout` accepts).
UPDATE jr_work_queue SET timeout = interval '365 days' WHERE timeout > interval '365 days';
UPDATE jr_work_queue SET timeout = interval '1 millisecond' WHERE timeout < interval '1 millisecond';
ALTER TABLE jr_work_queue DROP CONSTRAINT jr_work_queue_timeout_check;
ALTER TABLE jr_work_queue ADD CONSTRAINT jr_work_queue_timeout_check
    CHECK (timeout BETWEEN interval '1 millisecond' AND interval '365 days');

-- Timestamps are real moments: no 'infinity' or '-infinity'.
UPDATE jr_work_queue SET run_after = now() WHERE NOT isfinite(run_after);
UPDATE jr_work_queue SET created_at = now() WHERE NOT isfinite(created_at);
UPDATE jr_work_queue SET updated_at = now() WHERE NOT isfinite(updated_at);
UPDATE jr_work_queue SET assigned_at = now() WHERE NOT isfinite(assigned_at);
UPDATE jr_work_queue SET started_at = now() WHERE NOT isfinite(started_at);
UPDATE jr_work_queue SET completed_at = now() WHERE NOT isfinite(completed_at);
UPDATE jr_work_queue SET cancel_requested_at = now() WHERE NOT isfinite(cancel_requested_at);
ALTER TABLE jr_work_queue ADD CONSTRAINT jr_work_queue_times_check CHECK (
    isfinite(created_at) AND isfinite(run_after) AND isfinite(updated_at)
    AND (assigned_at IS NULL OR isfinite(assigned_at))
    AND (started_at IS NULL OR isfinite(started_at))
    AND (completed_at IS NULL OR isfinite(completed_at))
    AND (cancel_requested_at IS NULL OR isfinite(cancel_requested_at)));

UPDATE jr_runs SET created_at = now() WHERE NOT isfinite(created_at);
UPDATE jr_runs SET updated_at = now() WHERE NOT isfinite(updated_at);
UPDATE jr_runs SET finished_at = now() WHERE NOT isfinite(finished_at);
ALTER TABLE jr_runs ADD CONSTRAINT jr_runs_times_check CHECK (
    isfinite(created_at) AND isfinite(updated_at)
    AND (finished_at IS NULL OR isfinite(finished_at)));

UPDATE jr_status SET started_at = now() WHERE NOT isfinite(started_at);
UPDATE jr_status SET last_seen = now() WHERE NOT isfinite(last_seen);
UPDATE jr_status SET updated_at = now() WHERE NOT isfinite(updated_at);
UPDATE jr_status SET circuit_open_until = now() WHERE NOT isfinite(circuit_open_until);
UPDATE jr_status SET last_failure_at = now() WHERE NOT isfinite(last_failure_at);
ALTER TABLE jr_status ADD CONSTRAINT jr_status_times_check CHECK (
    isfinite(updated_at)
    AND (started_at IS NULL OR isfinite(started_at))
    AND (last_seen IS NULL OR isfinite(last_seen))
    AND (circuit_open_until IS NULL OR isfinite(circuit_open_until))
    AND (last_failure_at IS NULL OR isfinite(last_failure_at)));

UPDATE jr_task_events SET at = now() WHERE NOT isfinite(at);
ALTER TABLE jr_task_events ADD CONSTRAINT jr_task_events_at_check CHECK (isfinite(at));

-- A worker's capacity and prefetch: at most 10 000 each (the worker's own limits).
UPDATE jr_status SET capacity = 10000 WHERE capacity > 10000;
UPDATE jr_status SET prefetch = 10000 WHERE prefetch > 10000;
ALTER TABLE jr_status DROP CONSTRAINT jr_status_capacity_check;
ALTER TABLE jr_status ADD CONSTRAINT jr_status_capacity_check CHECK (capacity BETWEEN 1 AND 10000);
ALTER TABLE jr_status DROP CONSTRAINT jr_status_prefetch_check;
ALTER TABLE jr_status ADD CONSTRAINT jr_status_prefetch_check CHECK (prefetch BETWEEN 0 AND 10000);
