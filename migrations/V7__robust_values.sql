-- jrq schema, version 7: what V5 left a plain psql write able to break.
--
-- Found by adversarial testing: a timestamp in the year 294276 (finite, so V5 let it in)
-- overflowed the monitor's and the assigner's date arithmetic on every round; counters
-- at their type's maximum made every outcome write fail ("bigint out of range"), and an
-- assigned task at attempts = 2^31-1 made every claim of its worker fail; one NULL in a
-- worker's providers array stopped every assigner; a newline in a host name forged lines
-- in the monitor's report. Stored rows are brought into range first. (A task whose
-- attempts are used up when it is claimed fails at once: jrq_tasks_claim in V6.)

-- Timestamps from year 1 to 9999.
UPDATE jr_work_queue SET run_after = now() WHERE run_after >= '10000-01-01' OR run_after < '0001-01-01';
UPDATE jr_work_queue SET created_at = now() WHERE created_at >= '10000-01-01' OR created_at < '0001-01-01';
UPDATE jr_work_queue SET updated_at = now() WHERE updated_at >= '10000-01-01' OR updated_at < '0001-01-01';
UPDATE jr_work_queue SET assigned_at = now() WHERE assigned_at >= '10000-01-01' OR assigned_at < '0001-01-01';
UPDATE jr_work_queue SET started_at = now() WHERE started_at >= '10000-01-01' OR started_at < '0001-01-01';
UPDATE jr_work_queue SET completed_at = now() WHERE completed_at >= '10000-01-01' OR completed_at < '0001-01-01';
UPDATE jr_work_queue SET cancel_requested_at = now()
    WHERE cancel_requested_at >= '10000-01-01' OR cancel_requested_at < '0001-01-01';
ALTER TABLE jr_work_queue ADD CONSTRAINT jr_work_queue_times_range_check CHECK (
    created_at BETWEEN '0001-01-01' AND '9999-12-31'
    AND run_after BETWEEN '0001-01-01' AND '9999-12-31'
    AND updated_at BETWEEN '0001-01-01' AND '9999-12-31'
    AND (assigned_at IS NULL OR assigned_at BETWEEN '0001-01-01' AND '9999-12-31')
    AND (started_at IS NULL OR started_at BETWEEN '0001-01-01' AND '9999-12-31')
    AND (completed_at IS NULL OR completed_at BETWEEN '0001-01-01' AND '9999-12-31')
    AND (cancel_requested_at IS NULL
         OR cancel_requested_at BETWEEN '0001-01-01' AND '9999-12-31'));

UPDATE jr_runs SET created_at = now() WHERE created_at >= '10000-01-01' OR created_at < '0001-01-01';
UPDATE jr_runs SET updated_at = now() WHERE updated_at >= '10000-01-01' OR updated_at < '0001-01-01';
UPDATE jr_runs SET finished_at = now() WHERE finished_at >= '10000-01-01' OR finished_at < '0001-01-01';
ALTER TABLE jr_runs ADD CONSTRAINT jr_runs_times_range_check CHECK (
    created_at BETWEEN '0001-01-01' AND '9999-12-31'
    AND updated_at BETWEEN '0001-01-01' AND '9999-12-31'
    AND (finished_at IS NULL OR finished_at BETWEEN '0001-01-01' AND '9999-12-31'));

UPDATE jr_status SET started_at = now() WHERE started_at >= '10000-01-01' OR started_at < '0001-01-01';
UPDATE jr_status SET last_seen = now() WHERE last_seen >= '10000-01-01' OR last_seen < '0001-01-01';
UPDATE jr_status SET updated_at = now() WHERE updated_at >= '10000-01-01' OR updated_at < '0001-01-01';
UPDATE jr_status SET circuit_open_until = now()
    WHERE circuit_open_until >= '10000-01-01' OR circuit_open_until < '0001-01-01';
UPDATE jr_status SET last_failure_at = now()
    WHERE last_failure_at >= '10000-01-01' OR last_failure_at < '0001-01-01';
ALTER TABLE jr_status ADD CONSTRAINT jr_status_times_range_check CHECK (
    updated_at BETWEEN '0001-01-01' AND '9999-12-31'
    AND (started_at IS NULL OR started_at BETWEEN '0001-01-01' AND '9999-12-31')
    AND (last_seen IS NULL OR last_seen BETWEEN '0001-01-01' AND '9999-12-31')
    AND (circuit_open_until IS NULL OR circuit_open_until BETWEEN '0001-01-01' AND '9999-12-31')
    AND (last_failure_at IS NULL OR last_failure_at BETWEEN '0001-01-01' AND '9999-12-31'));

UPDATE jr_task_events SET at = now() WHERE at >= '10000-01-01' OR at < '0001-01-01';
ALTER TABLE jr_task_events ADD CONSTRAINT jr_task_events_at_range_check
    CHECK (at BETWEEN '0001-01-01' AND '9999-12-31');

-- Counters with room to count: no increment a worker makes in its lifetime reaches the
-- type's limit from anywhere inside these ranges.
UPDATE jr_status SET tasks_completed = 0 WHERE tasks_completed NOT BETWEEN 0 AND 4611686018427387903;
UPDATE jr_status SET tasks_failed = 0 WHERE tasks_failed NOT BETWEEN 0 AND 4611686018427387903;
UPDATE jr_status SET consecutive_failures = 0 WHERE consecutive_failures NOT BETWEEN 0 AND 1000000000;
UPDATE jr_status SET current_load = 0 WHERE current_load NOT BETWEEN 0 AND 1000000;
ALTER TABLE jr_status ADD CONSTRAINT jr_status_counters_check CHECK (
    tasks_completed BETWEEN 0 AND 4611686018427387903
    AND tasks_failed BETWEEN 0 AND 4611686018427387903
    AND consecutive_failures BETWEEN 0 AND 1000000000
    AND current_load BETWEEN 0 AND 1000000);

-- A task's attempts: at most 1000 (what `jrq enqueue` allows), never more than its budget.
UPDATE jr_work_queue SET max_attempts = 1000 WHERE max_attempts > 1000;
UPDATE jr_work_queue SET attempts = max_attempts WHERE attempts > max_attempts;
ALTER TABLE jr_work_queue DROP CONSTRAINT jr_work_queue_max_attempts_check;
ALTER TABLE jr_work_queue ADD CONSTRAINT jr_work_queue_max_attempts_check
    CHECK (max_attempts BETWEEN 1 AND 1000);
ALTER TABLE jr_work_queue DROP CONSTRAINT jr_work_queue_attempts_check;
ALTER TABLE jr_work_queue ADD CONSTRAINT jr_work_queue_attempts_check
    CHECK (attempts BETWEEN 0 AND max_attempts);

-- Providers are names: no NULL element.
UPDATE jr_status SET providers = array_remove(providers, NULL)
    WHERE array_position(providers, NULL) IS NOT NULL;
ALTER TABLE jr_status ADD CONSTRAINT jr_status_providers_check
    CHECK (array_position(providers, NULL) IS NULL);

-- A host name is printed in reports and logs: no control characters.
UPDATE jr_status SET host = regexp_replace(host, '[[:cntrl:]]', '?', 'g') WHERE host ~ '[[:cntrl:]]';
ALTER TABLE jr_status ADD CONSTRAINT jr_status_host_check CHECK (host !~ '[[:cntrl:]]');
