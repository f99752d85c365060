-- Store::transition, mirroring tempox::record::plan_transition: a
-- compare-and-set on (status, token).
-- KEYS: record, due, exp, wf (one bucket)
-- ARGV: id, from, token, to,
--       has_output, output, has_error, error,
--       lease (keep | clear | acquire), lease_ms,
--       attempts (keep | increment | set), attempts_n,
--       has_note, note, retry_after_ms, has_retention, retention_ms,
--       the prefix of the bucket's status sets, quiet ('1': the caller does
--       not need the record written)
-- Returns {'illegal'}, {'conflict'} (no record), {'conflict', record} or
-- {'applied', record} ({'applied'} when quiet).
local K = {rec = KEYS[1], due = KEYS[2], exp = KEYS[3], wf = KEYS[4], st = ARGV[18]}
local id, from, token, to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if not legal(from, to) then return {'illegal'} end

local now = now_ms()
local old = load(K.rec)
if old == nil then return {'conflict'} end
-- Invariant 3 (fencing): only the holder of the current token in the expected
-- status may write.
if old.status ~= from or old.token ~= token then return {'conflict', flat(id, old)} end

local r = copy(old)
r.status = to
r.updated_at = now
if ARGV[5] == '1' then r.output = ARGV[6] end
if ARGV[7] == '1' then r.error = ARGV[8] end
local lease = ARGV[9]
if lease == 'clear' then
  r.lease_until = nil
elseif lease == 'acquire' then
  r.token = next_token(r.token, now)
  r.lease_until = uadd(now, ARGV[10], U64_MAX)
end
local attempts = ARGV[11]
if attempts == 'increment' then
  r.attempts = uadd(r.attempts, '1', U32_MAX)
elseif attempts == 'set' then
  r.attempts = ARGV[12]
end
if ARGV[13] == '1' then
  if r.note ~= nil then r.note = r.note .. '\n' .. ARGV[14] else r.note = ARGV[14] end
end
if not ACTIVE[to] then r.lease_until = nil end
if ACTIVE[to] then
  r.due_at = r.lease_until or uadd(now, ARGV[15], U64_MAX)
elseif DEAD_LETTER[to] and from ~= to then
  -- Entering a dead letter: due at once, so a reconciler raises its alert.
  r.due_at = now
elseif DEAD_LETTER[to] and ARGV[15] ~= '0' then
  -- Its alert claimed: due again after retry_after unless acknowledged.
  r.due_at = uadd(now, ARGV[15], U64_MAX)
else
  r.due_at = nil
end
if FINAL[to] and ARGV[16] == '1' then
  r.expires_at = uadd(now, ARGV[17], U64_MAX)
else
  r.expires_at = nil
end
write(K, id, old, r)
if ARGV[19] == '1' then return {'applied'} end
return {'applied', flat(id, r)}
