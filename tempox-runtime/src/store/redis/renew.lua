-- Store::renew: extends the lease of a record held in (status, token).
-- KEYS: record, due
-- ARGV: id, status, token, lease_ms
-- Returns the new end of the lease, or false when fenced.
local held = redis.call('HMGET', KEYS[1], 'status', 'token')
if held[1] ~= ARGV[2] or held[2] ~= ARGV[3] then return false end
local lease_until = uadd(now_ms(), ARGV[4], U64_MAX)
redis.call('HSET', KEYS[1], 'lease_until', lease_until, 'due_at', lease_until)
redis.call('ZADD', KEYS[2], lease_until, ARGV[1])
return lease_until
