-- Store::renew: extends the lease of a record held in (status, token).
-- K: the record's key and its bucket's (see write); the arguments of the
-- request: id, status, token, lease_ms
-- Returns {'renewed', the new end of the lease} or {'fenced'}.
local function renew(K, id, status, token, lease)
  local held = redis.call('HMGET', K.rec, 'status', 'token')
  if held[1] ~= status or held[2] ~= token then return {'fenced'} end
  local lease_until = uadd(now, lease, U64_MAX)
  redis.call('HSET', K.rec, 'lease_until', lease_until, 'due_at', lease_until)
  redis.call('ZADD', K.due, lease_until, id)
  return {'renewed', lease_until}
end
