-- Store::due, first step: the ids due now in one bucket, earliest first.
-- KEYS: due
-- ARGV: limit
-- Returns {id, score, id, score, ...}.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
