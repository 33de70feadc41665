-- get_many: the jobs $1 (uuid[]), live or finished, by id, each as get.sql
-- reads it (the same partitions opened for each: see there). An API
-- process runs it once for all the jobs one wake-up names, instead of one
-- get.sql per waiting long-poll; the caller keeps each job from any tenant
-- but its own.
-- Each id is probed by a LATERAL subquery with a LIMIT, so no plan can turn
-- it into a scan of the history (see sql/chat/histories.sql).
SELECT j.*
FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u (id)) AS i
CROSS JOIN LATERAL (
    SELECT a.id, a.tenant_id, a.conversation_id, a.kind, a.priority, a.state, a.payload,
           a.attempts, a.max_attempts, a.result, a.error, a.worker, a.input_tokens,
           a.output_tokens, a.created_at, a.started_at, a.finished_at, a.run_at
    FROM all_jobs a
    WHERE a.id = i.id
      AND (a.finished_at IS NULL
           OR (a.finished_at >= CASE WHEN get_byte(uuid_send(i.id), 6) >> 4 = 7
                                     THEN to_timestamp(('x' || encode(substring(uuid_send(i.id) FROM 1 FOR 6), 'hex'))
                                                           ::bit(48)::bigint / 1000.0)
                                          - interval '2 days'
                                     ELSE '-infinity' END
               AND a.finished_at < now() + interval '1 day'))
    LIMIT 1) AS j
