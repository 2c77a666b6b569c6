-- jrq schema, version 4: 'lost' workers.
-- A worker (or assigner) that went offline without meaning to — its process is gone
-- (found by jr-stale-cleanup) or it went silent (found by a health monitor, on any host) —
-- is 'lost' rather than 'offline'. The health monitor of *its* host takes lost rows over:
-- it restarts the unit of each one that ran under systemd and marks it 'offline'. So a
-- death noticed by the cleanup, or by a monitor elsewhere, still ends in a restart.
ALTER TABLE jr_status DROP CONSTRAINT jr_status_status_check;
ALTER TABLE jr_status ADD CONSTRAINT jr_status_status_check
    CHECK (status IN ('starting', 'idle', 'busy', 'draining', 'offline', 'lost'));
