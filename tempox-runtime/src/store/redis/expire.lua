-- Store::expire, second step: removes up to limit records of one bucket that
-- are final and past their retention. Never an active record or a dead letter.
-- KEYS: due, exp, wf (one bucket)
-- ARGV: record key prefix, limit, the prefix of the bucket's status sets
-- Returns how many records were removed.
local now = now_ms()
local removed = 0
local candidates = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(candidates) do
  local K = {rec = ARGV[1] .. id, due = KEYS[1], exp = KEYS[2], wf = KEYS[3], st = ARGV[3]}
  local f = redis.call('HMGET', K.rec, 'status', 'expires_at', 'workflow')
  local r = {status = f[1] or nil, expires_at = f[2] or nil, workflow = f[3] or nil}
  if r.status == nil then
    -- No record behind the index entry.
    remove(K, id, nil, nil)
  elseif r.expires_at ~= nil and not digits(r.expires_at) then
    -- A damaged end of retention never frees a key: the record stays (its
    -- reads name the damage) and leaves the index, not to be met again.
    redis.call('ZREM', K.exp, id)
  elseif retention_passed(r, now) then
    remove(K, id, r.status, r.workflow)
    removed = removed + 1
  else
    -- The index disagreed with the record: put the record's own time back.
    redis.call('ZREM', K.exp, id)
    if FINAL[r.status] and r.expires_at ~= nil then
      redis.call('ZADD', K.exp, r.expires_at, id)
    end
  end
end
return removed
