-- skipjack schema, version 3: job_history partition maintenance one
-- partition per transaction, so that it can give up on a partition whose
-- locks it cannot get quickly instead of stalling the queue.
--
-- Creating or dropping a partition takes locks that conflict with readers of
-- job_history: attaching one takes ACCESS EXCLUSIVE on the default partition
-- (which every unpruned read of job_history holds ACCESS SHARE on), dropping
-- one takes ACCESS EXCLUSIVE on job_history itself. A lock request waits
-- behind a long reader (a pg_dump, a month-wide audit query) and every later
-- request queues behind it: completions, the API's reads. The maintenance
-- loop therefore calls the functions below one partition per transaction
-- under a short lock_timeout, and leaves what timed out to its next pass
-- (see docs/runbook.md, "Partition maintenance").
--
-- DETACH PARTITION ... CONCURRENTLY is not an option: Postgres refuses it
-- while the table has a default partition, and job_history keeps one so that
-- a late maintenance run never makes a completion fail.

-- Defining functions takes no table lock; the timeouts only bound the
-- unexpected (a session holding one of the replaced functions' catalog rows).
SET lock_timeout = '2s';
SET statement_timeout = '10s';

-- Creates job_history's partition for `day` (UTC) unless it exists; returns
-- whether it created it. The partition is created as a table of its own and
-- attached, which locks job_history only in SHARE UPDATE EXCLUSIVE mode (no
-- conflict with reads or writes); CREATE TABLE ... PARTITION OF would take
-- ACCESS EXCLUSIVE on job_history. The default partition is locked first,
-- so that no row for `day` can land in it between moving its rows for `day`
-- into the new table and the attach (which would then fail).
CREATE FUNCTION skipjack_create_history_partition(day date)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    part text := format('job_history_p%s', to_char(day, 'YYYYMMDD'));
    lo   timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi   timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('skipjack.job_history.partitions'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE job_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    LOCK TABLE job_history_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format(
        'WITH moved AS (DELETE FROM job_history_default WHERE finished_at >= %L AND finished_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE job_history ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN true;
END
$$;

-- Drops job_history's partition for `day` (UTC) if it exists; returns
-- whether it dropped it. Takes ACCESS EXCLUSIVE on job_history for the
-- moment of the drop.
CREATE FUNCTION skipjack_drop_history_partition(day date)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    part text := format('job_history_p%s', to_char(day, 'YYYYMMDD'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('skipjack.job_history.partitions'));
    IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = 'job_history'::regclass AND c.relname = part) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE %I', part);
    RETURN true;
END
$$;

-- The whole-range functions of version 1, kept for operators, now built on
-- the per-partition ones (all in the caller's one transaction, without a
-- lock timeout: the maintenance loop does not use them).
CREATE OR REPLACE FUNCTION skipjack_ensure_history_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d       date := first_day;
    created integer := 0;
BEGIN
    WHILE d <= last_day LOOP
        IF skipjack_create_history_partition(d) THEN
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;

CREATE OR REPLACE FUNCTION skipjack_drop_history_partitions(cutoff timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT to_date(substr(c.relname, 14), 'YYYYMMDD') AS day
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'job_history'::regclass AND c.relname ~ '^job_history_p[0-9]{8}$'
    LOOP
        IF (part.day + 1)::timestamp AT TIME ZONE 'UTC' <= cutoff
           AND skipjack_drop_history_partition(part.day) THEN
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM job_history_default WHERE finished_at < cutoff;
    RETURN dropped;
END
$$;

-- The session goes back to the server's defaults.
SET lock_timeout = 0;
SET statement_timeout = 0;
