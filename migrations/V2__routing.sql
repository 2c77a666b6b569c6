-- jrq schema, version 2: what the assigner needs.

-- When the worker last failed an attempt. With consecutive_failures it gives the circuit
-- breaker's state without more bookkeeping: the circuit is open while
-- consecutive_failures >= K and last_failure_at + cooldown * 2^(consecutive_failures - K)
-- is in the future.
ALTER TABLE jr_status ADD COLUMN last_failure_at timestamptz;

-- Pinned pending tasks, for failing those whose target stays offline.
CREATE INDEX jr_work_queue_pinned_idx ON jr_work_queue (target_jr)
    WHERE status = 'pending' AND target_jr IS NOT NULL;
