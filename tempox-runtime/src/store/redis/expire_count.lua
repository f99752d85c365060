-- Store::expire, first step: how many records of one bucket are past retention.
-- KEYS: exp
return redis.call('ZCOUNT', KEYS[1], '-inf', now_ms())
