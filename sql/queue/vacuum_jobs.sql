-- vacuum_jobs: removes the dead row versions of the live jobs table (and
-- their claim-index entries, which every claim would otherwise walk past).
-- A plain VACUUM: it takes no lock that blocks enqueues, claims or finishes.
VACUUM (ANALYZE) jobs
