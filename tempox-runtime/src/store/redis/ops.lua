-- The state changes sent together (see lane.rs): claims, transitions and
-- lease renewals of any number of records, run in order, each exactly as if
-- it had been sent alone (a later one sees what an earlier one wrote).
-- KEYS: 4 per operation: its record, then due, exp and wf of its bucket
-- ARGV: per operation: 'claim', 'transition', 'renew' or 'claimed_by', the
--       prefix of its bucket's status sets, then its 9 (claim), 19
--       (transition), 4 (renew) or 2 (claimed_by: id, nonce) arguments
-- Returns one reply per operation, as claim(), transition(), renew() or
-- claimed_by() answers, or
-- {'error', message} for one whose record or arguments a command refused
-- (e.g. a damaged record): the others are not held back by it. An error of
-- the server's state fails the whole call.
-- Errors of redis.call that are about the record or the arguments (a key of
-- another type, a damaged number): they fail their operation alone.
local RECORD_ERRORS = {WRONGTYPE = true, ERR = true}

local out = {}
local a = 0
for i = 1, #KEYS / 4 do
  local k = (i - 1) * 4
  local K = {rec = KEYS[k + 1], due = KEYS[k + 2], exp = KEYS[k + 3], wf = KEYS[k + 4], st = ARGV[a + 2]}
  local ok, reply
  if ARGV[a + 1] == 'claim' then
    ok, reply = pcall(claim, K, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6],
      ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11])
    a = a + 11
  elseif ARGV[a + 1] == 'claimed_by' then
    -- ARGV[a + 3] is the record's id, as for every operation.
    ok, reply = pcall(claimed_by, K, ARGV[a + 4])
    a = a + 4
  elseif ARGV[a + 1] == 'transition' then
    ok, reply = pcall(transition, K, a + 2)
    a = a + 21
  elseif ARGV[a + 1] == 'renew' then
    ok, reply = pcall(renew, K, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
    a = a + 6
  else
    return redis.error_reply('tempox: unknown operation ' .. tostring(ARGV[a + 1]))
  end
  if ok then
    out[i] = reply
  else
    -- redis.call raises a table with the server's error in err, or the
    -- server's message itself; Lua raises 'user_script:<line>: ...'.
    local message = reply
    if type(reply) == 'table' then message = reply.err end
    message = tostring(message)
    local code = string.match(message, '^%u+')
    if code ~= nil and not RECORD_ERRORS[code] then
      -- The server's state, not this record, refused (READONLY after a
      -- failover, OOM, ...): the whole call fails with it, as any call would.
      -- The server refuses so before a call's first write, never after one,
      -- so no earlier operation of this call wrote; the client still says
      -- every write of the call may or may not have been applied.
      return redis.error_reply(message)
    end
    out[i] = {'error', message}
  end
end
return out
