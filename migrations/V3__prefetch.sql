-- jrq schema, version 3: a worker's prefetch.
-- The assigner keeps up to capacity + prefetch tasks assigned to a worker (running ones
-- included), so that short tasks do not wait for an assigner round between them. The
-- worker still runs at most `capacity` at once. 0 (the default) suits long agent tasks,
-- where hoarding work at one worker is wrong.
ALTER TABLE jr_status ADD COLUMN prefetch integer NOT NULL DEFAULT 0
    CONSTRAINT jr_status_prefetch_check CHECK (prefetch >= 0);
