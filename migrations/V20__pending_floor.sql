-- jrq schema, version 20: the assigner's pending scan starts from a floor (issue 19).
--
-- A task leaves jr_work_queue_pending_idx when it is assigned, but while something holds
-- back the vacuum horizon its entry stays, and every round's scan "pending in the order of
-- service" walked all of them from the start of the index: 3 700 blocks a round after two
-- minutes of a hold, longer every second (docs/benchmarks-notes.md, issue 19). The
-- assigner now keeps where the first pending task is — a floor — and its scan starts
-- there, with the key as the index condition.
--
-- That needs an index whose columns all run the same way (a row comparison is an index
-- condition only then): the order of service is the same, urgent first written as
-- NOT sacred_fire_priority ascending.
--
-- A task that becomes pending below the floor tells the assigners its place: an insert
-- statement sends the first of its pending rows, an update that makes a row pending (a
-- retry, a rescue, an unassign, a dependency ended, an operator's UPDATE) or moves a
-- pending row in the order sends the row's. The payload is
-- "<insert|pending> <not urgent 0/1> <priority> <created_at, µs since 1970> <id>", on
-- jrq_pending as before; an insert without a pending row (blocked, or written assigned)
-- sends "insert" alone. Assigners also walk from the start every 5 s, and after a
-- reconnect (what was sent meanwhile is lost).

CREATE INDEX jr_work_queue_pending_key_idx ON jr_work_queue
    ((NOT sacred_fire_priority), priority, created_at, id)
    WHERE status = 'pending';

DROP INDEX jr_work_queue_pending_idx;

-- The place of a row in the order of service, as the payload carries it (created_at is
-- finite: V5).
CREATE FUNCTION jrq_pending_key_text(p_word text, p_urgent boolean, p_priority integer,
                                     p_created_at timestamptz, p_id bigint)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT concat_ws(' ', p_word, (NOT p_urgent)::int, p_priority,
                     (extract(epoch FROM p_created_at) * 1000000)::bigint, p_id)
$$;

-- Once per INSERT statement, as since V1, now with the first pending row's place.
CREATE OR REPLACE FUNCTION jr_work_queue_notify_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('jrq_pending', coalesce(
        (SELECT public.jrq_pending_key_text('insert', n.sacred_fire_priority, n.priority,
                                            n.created_at, n.id)
         FROM new_rows n WHERE n.status = 'pending'
         ORDER BY (NOT n.sacred_fire_priority), n.priority, n.created_at, n.id
         LIMIT 1),
        'insert'));
    RETURN NULL;
END;
$$;

DROP TRIGGER jr_work_queue_notify_insert ON jr_work_queue;
CREATE TRIGGER jr_work_queue_notify_insert
    AFTER INSERT ON jr_work_queue
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jr_work_queue_notify_insert();

-- A row that becomes pending, or moves in the order while pending. The WHEN keeps the hot
-- path (assign, claim, finish: rows leaving pending) free of any call.
CREATE FUNCTION jr_work_queue_notify_pending() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('jrq_pending', public.jrq_pending_key_text('pending',
        NEW.sacred_fire_priority, NEW.priority, NEW.created_at, NEW.id));
    RETURN NULL;
END;
$$;

CREATE TRIGGER jr_work_queue_notify_pending
    AFTER UPDATE ON jr_work_queue
    FOR EACH ROW
    WHEN (NEW.status = 'pending'
          AND (OLD.status, OLD.sacred_fire_priority, OLD.priority, OLD.created_at, OLD.id)
              IS DISTINCT FROM
              (NEW.status, NEW.sacred_fire_priority, NEW.priority, NEW.created_at, NEW.id))
    EXECUTE FUNCTION jr_work_queue_notify_pending();
