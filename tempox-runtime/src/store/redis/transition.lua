-- Store::transition, mirroring tempox::record::plan_transition: a
-- compare-and-set on (status, token).
-- K: the record's key and its bucket's (see write); ARGV[a + 1 ..]: the
-- arguments of the transition: id, from, token, to, has_output, output,
-- has_error, error, lease (keep | clear | acquire), lease_ms,
-- attempts (keep | increment | set), attempts_n, has_note, note,
-- retry_after_ms, has_retention, retention_ms,
-- quiet ('1': the caller does not need the record written),
-- if_lease_expired ('1': only while the lease has run out at now)
-- Returns {'illegal'}, {'conflict'} (no record, or quiet), {'conflict',
-- record} or {'applied', record} ({'applied'} when quiet).

-- The fields a quiet transition reads: the pair it compares, and those it
-- computes from or keeps indexes of.
local SMALL = {'status', 'token', 'lease_until', 'attempts', 'due_at', 'expires_at', 'note'}

-- tempox::record::schedule's due time of a record going from>to whose lease
-- afterwards ends at lease_until (nil: none), with retry_after in ms ('0':
-- none): again after retry_after, else at the end of the lease (active);
-- at once (entering a dead letter); else only after retry_after.
local function due_after(from, to, retry_after, lease_until)
  local again = nil
  if retry_after ~= '0' then again = uadd(now, retry_after, U64_MAX) end
  if ACTIVE[to] then return again or lease_until or now end
  if DEAD_LETTER[to] and from ~= to then return now end
  return again
end

-- A field of apply()'s record going from before to after: written into set,
-- or named in del when it goes away.
local function change(set, del, field, before, after)
  if after == before then return end
  if after ~= nil then
    set[#set + 1] = field; set[#set + 1] = after
  else
    del[#del + 1] = field
  end
end

-- The same transition as below for a caller that wants no record back: only
-- the fields a transition reads are loaded, and only what changes is written.
-- It repeats the full path's rules instead of sharing them through write():
-- on the hot path (every call records its outcome here) sharing cost about
-- 3 us of server time per call (load bench, scripts' share); the store
-- conformance check `apply` holds both paths to the same records.
local function apply(K, a, id, from, token, to)
  local h = redis.call('HMGET', K.rec, unpack(SMALL))
  -- HMGET answers false for a missing field (and every field of no record).
  if h[1] ~= from or h[2] ~= token then return {'conflict'} end
  -- Invariant 12: a takeover only while the lease has run out, at this
  -- server's clock, now.
  if ARGV[a + 19] == '1' and h[3] and ucmp(h[3], now) > 0 then return {'conflict'} end
  local old = {}
  for i = 3, #SMALL do
    if h[i] then old[SMALL[i]] = h[i] end
  end
  check_numbers(id, old)
  local set = {'status', to, 'updated_at', now}
  local del = {}
  if ARGV[a + 5] == '1' then set[#set + 1] = 'output'; set[#set + 1] = ARGV[a + 6] end
  if ARGV[a + 7] == '1' then set[#set + 1] = 'error'; set[#set + 1] = ARGV[a + 8] end
  local lease_until = old.lease_until
  local lease = ARGV[a + 9]
  if lease == 'clear' then
    lease_until = nil
  elseif lease == 'acquire' then
    set[#set + 1] = 'token'; set[#set + 1] = next_token(token, now)
    lease_until = uadd(now, ARGV[a + 10], U64_MAX)
  end
  local attempts = ARGV[a + 11]
  if attempts == 'increment' then
    set[#set + 1] = 'attempts'; set[#set + 1] = uadd(old.attempts, '1', U32_MAX)
  elseif attempts == 'set' then
    set[#set + 1] = 'attempts'; set[#set + 1] = ARGV[a + 12]
  end
  if ARGV[a + 13] == '1' then
    local note = ARGV[a + 14]
    if old.note ~= nil then note = old.note .. '\n' .. note end
    set[#set + 1] = 'note'; set[#set + 1] = note
  end
  if not ACTIVE[to] then lease_until = nil end
  local due_at = due_after(from, to, ARGV[a + 15], lease_until)
  local expires_at = nil
  if FINAL[to] and ARGV[a + 16] == '1' then expires_at = uadd(now, ARGV[a + 17], U64_MAX) end
  change(set, del, 'lease_until', old.lease_until, lease_until)
  change(set, del, 'due_at', old.due_at, due_at)
  change(set, del, 'expires_at', old.expires_at, expires_at)
  reindex(K.due, id, old.due_at, due_at)
  reindex(K.exp, id, old.expires_at, expires_at)
  redis.call('HSET', K.rec, unpack(set))
  if #del > 0 then redis.call('HDEL', K.rec, unpack(del)) end
  if to ~= from then
    redis.call('ZREM', K.st .. from, id)
    redis.call('ZADD', K.st .. to, '0', id)
  end
  return {'applied'}
end

-- legal(), asked once per pair in a script call.
local checked = {}

local function transition(K, a)
  local id, from, token, to = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local pair = from .. '>' .. to
  local ok = checked[pair]
  if ok == nil then
    ok = legal(from, to)
    checked[pair] = ok
  end
  if not ok then return {'illegal'} end
  if ARGV[a + 18] == '1' then return apply(K, a, id, from, token, to) end

  local old = load_checked(K.rec, id)
  if old == nil then return {'conflict'} end
  -- Invariant 3 (fencing): only the holder of the current token in the
  -- expected status may write.
  if old.status ~= from or old.token ~= token then return {'conflict', flat(id, old)} end
  if ARGV[a + 19] == '1' and old.lease_until ~= nil and ucmp(old.lease_until, now) > 0 then
    return {'conflict', flat(id, old)}
  end

  local r = copy(old)
  r.status = to
  r.updated_at = now
  if ARGV[a + 5] == '1' then r.output = ARGV[a + 6] end
  if ARGV[a + 7] == '1' then r.error = ARGV[a + 8] end
  local lease = ARGV[a + 9]
  if lease == 'clear' then
    r.lease_until = nil
  elseif lease == 'acquire' then
    r.token = next_token(r.token, now)
    r.lease_until = uadd(now, ARGV[a + 10], U64_MAX)
  end
  local attempts = ARGV[a + 11]
  if attempts == 'increment' then
    r.attempts = uadd(r.attempts, '1', U32_MAX)
  elseif attempts == 'set' then
    r.attempts = ARGV[a + 12]
  end
  if ARGV[a + 13] == '1' then
    if r.note ~= nil then r.note = r.note .. '\n' .. ARGV[a + 14] else r.note = ARGV[a + 14] end
  end
  if not ACTIVE[to] then r.lease_until = nil end
  r.due_at = due_after(from, to, ARGV[a + 15], r.lease_until)
  if FINAL[to] and ARGV[a + 16] == '1' then
    r.expires_at = uadd(now, ARGV[a + 17], U64_MAX)
  else
    r.expires_at = nil
  end
  write(K, id, old, r)
  if ARGV[a + 18] == '1' then return {'applied'} end
  return {'applied', flat(id, r)}
end
