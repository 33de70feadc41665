-- correct: settles a token reservation of endpoint $1 and model $2 with the
-- usage the provider reported. $3 the difference (reported minus reserved;
-- negative gives back), $4 seconds per token, $5 the budget's token counter
-- right after the reservation (reserve.sql's `reserved_after`).
--
-- A charge moves tat forward like a reservation, without a check (the
-- tokens are spent). A give-back moves tat back, but never below
-- now() + (tokens reserved since this reservation) * interval: the
-- reservations made after this one were granted against the budget as it
-- was, and each must stay covered from its own start, or a 60-second window
-- that begins after this reservation could see more than the limit
-- (docs/provider-limits.md). Nor does it move tat forward.
UPDATE provider_budgets b
SET tokens_tat = CASE
        WHEN $3::float8 >= 0
            THEN greatest(b.tokens_tat, now()) + make_interval(secs => $3::float8 * $4::float8)
        ELSE least(
            b.tokens_tat,
            greatest(
                b.tokens_tat + make_interval(secs => $3::float8 * $4::float8),
                now() + make_interval(secs => (b.tokens_reserved - $5::bigint)::float8 * $4::float8)
            )
        )
    END,
    tokens_reserved = b.tokens_reserved + greatest($3::float8, 0)::bigint,
    updated_at = now()
WHERE b.endpoint = $1 AND b.model = $2
