-- Shared head of every tempox script. The tables marked "generated" are
-- written from tempox's record module when the scripts are built, so the
-- state machine lives in one place (tempox::record::TRANSITIONS).
--
-- Numbers that must be exact (tokens, timestamps, attempts) are kept as
-- decimal strings and computed with ucmp/uadd: Lua's numbers are doubles,
-- exact only below 2^53, so the digits are worked on one by one when a value
-- could be larger (today's tokens and timestamps are not, which is the fast
-- path). Strings are never compared with < (it follows the server's locale).

if redis.replicate_commands then pcall(redis.replicate_commands) end

-- generated: legal transitions as "|from>to|...|" (searched, not built into a
-- table on every call), final and active statuses, status names
local LEGAL = --[[LEGAL]]
local FINAL = {--[[FINAL]]}
local ACTIVE = {--[[ACTIVE]]}
local DEAD_LETTER = {--[[DEAD_LETTER]]}
local STATUS = {--[[STATUS]]}
local LEASE_EXPIRED_ERROR = --[[LEASE_EXPIRED_ERROR]]

local FIELDS = {
  'id', 'kind', 'fingerprint', 'input', 'output', 'error', 'status', 'token',
  'lease_until', 'attempts', 'workflow', 'step', 'created_at', 'updated_at',
  'due_at', 'expires_at', 'note',
}
local U64_MAX = '18446744073709551615'
local U32_MAX = '4294967295'

-- Below 8 * 10^15, so a sum with a value of at most 14 digits stays below
-- 2^53 and a double holds it exactly.
local function exact(a)
  return #a < 16 or (#a == 16 and string.byte(a, 1) < 56)
end

-- Compares two decimal strings without leading zeros: -1, 0 or 1.
local function ucmp(a, b)
  if #a ~= #b then
    if #a < #b then return -1 end
    return 1
  end
  if exact(a) and exact(b) then
    local x, y = tonumber(a), tonumber(b)
    -- Not numbers (a damaged record): compared byte by byte below.
    if x ~= nil and y ~= nil then
      if x < y then return -1 elseif x > y then return 1 end
      return 0
    end
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  return 0
end

-- a + b on decimal strings, saturating at max.
local function uadd(a, b, max)
  if exact(a) and #b < 15 then
    local sum = string.format('%.0f', tonumber(a) + tonumber(b))
    if ucmp(sum, max) > 0 then return max end
    return sum
  end
  local digits, carry = {}, 0
  local i, j = #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    digits[#digits + 1] = string.char(48 + d % 10)
    carry = math.floor(d / 10)
  end
  local sum = string.reverse(table.concat(digits))
  if ucmp(sum, max) > 0 then return max end
  return sum
end

-- The server's clock in milliseconds since the epoch (tempox::Timestamp).
local function now_ms()
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end

-- tempox::record::next_token: max(previous + 1, now_ms * 1000).
local function next_token(previous, now)
  local floor = now .. '000'
  if now == '0' then floor = '0' end
  if previous == nil then return floor end
  local bumped = uadd(previous, '1', U64_MAX)
  if ucmp(bumped, floor) >= 0 then return bumped end
  return floor
end

-- Record::lease_expired
local function lease_expired(r, now)
  return ACTIVE[r.status] == true and (r.lease_until == nil or ucmp(r.lease_until, now) <= 0)
end

-- Record::retention_passed
local function retention_passed(r, now)
  return FINAL[r.status] == true and r.expires_at ~= nil and ucmp(r.expires_at, now) <= 0
end

-- Refuses record id, whose field holds value: the operation fails with a
-- message naming both (the client reports it as a corrupt record).
local function corrupt(id, field, value)
  error({err = 'ERR tempox corrupt record `' .. tostring(id) .. '`: field `' .. field
    .. '` holds `' .. tostring(value) .. '`, not a number'})
end

-- The fields the scripts compare or compute with: a damaged one must never
-- count as a lease run out or a retention passed (a key freed, a body run
-- twice), so it stops the operation instead.
local NUMBERS = {'token', 'lease_until', 'attempts', 'due_at', 'expires_at'}

-- Whether v is a decimal number as the scripts write them.
local function digits(v)
  return type(v) == 'string' and #v > 0 and #v <= 20 and string.find(v, '^%d+$') ~= nil
end

-- Checks the number fields of record r (of id) that are present.
local function check_numbers(id, r)
  for _, f in ipairs(NUMBERS) do
    local v = r[f]
    if v ~= nil and not digits(v) then corrupt(id, f, v) end
  end
end

-- The record hash at key as a table, or nil when there is none. Reads
-- return it as it is (the client names what is damaged when it decodes it);
-- claims and transitions load it with load_checked.
local function load(key)
  local raw = redis.call('HGETALL', key)
  if #raw == 0 then return nil end
  local r = {}
  for i = 1, #raw, 2 do r[raw[i]] = raw[i + 1] end
  return r
end

-- load, for an operation that decides from the record: a damaged number
-- stops it (see NUMBERS).
local function load_checked(key, id)
  local r = load(key)
  if r ~= nil then check_numbers(id, r) end
  return r
end

local function copy(r)
  local c = {}
  for k, v in pairs(r) do c[k] = v end
  return c
end

-- A record as returned to the client: its id (from the key), then field, value.
local function flat(id, r)
  local out = {id}
  for _, f in ipairs(FIELDS) do
    if r[f] ~= nil then
      out[#out + 1] = f
      out[#out + 1] = r[f]
    end
  end
  return out
end

-- Whether the transition from>to is in tempox::record::TRANSITIONS.
local function legal(from, to)
  -- Status names are [a-z_]: nothing else may splice two pairs together.
  if string.find(from .. to, '[^a-z_]') then return false end
  return string.find(LEGAL, '|' .. from .. '>' .. to .. '|', 1, true) ~= nil
end

-- Keeps id's entry in a time index (due, exp) in step with a change of its
-- time from before to after (nil: not in the index).
local function reindex(index, id, before, after)
  if after == before then return end
  if after ~= nil then
    redis.call('ZADD', index, after, id)
  else
    redis.call('ZREM', index, id)
  end
end

-- Writes new over old (nil: no record) and keeps the bucket's indexes in step,
-- touching only the indexes whose entry changes.
-- K: rec (the hash), due, exp (score = time), st (prefix of the per-status
-- sets of ids, lexicographic), wf (lexicographic).
local function write(K, id, old, new)
  local set, del = {}, {}
  for _, f in ipairs(FIELDS) do
    local v = new[f]
    if v == nil then
      if old ~= nil and old[f] ~= nil then del[#del + 1] = f end
    elseif old == nil or old[f] ~= v then
      set[#set + 1] = f
      set[#set + 1] = v
    end
  end
  if #set > 0 then redis.call('HSET', K.rec, unpack(set)) end
  if #del > 0 then redis.call('HDEL', K.rec, unpack(del)) end
  local before = old or {}
  reindex(K.due, id, before.due_at, new.due_at)
  reindex(K.exp, id, before.expires_at, new.expires_at)
  if new.status ~= before.status then
    if before.status ~= nil then redis.call('ZREM', K.st .. before.status, id) end
    redis.call('ZADD', K.st .. new.status, '0', id)
  end
  if new.workflow ~= before.workflow then
    if before.workflow ~= nil then
      redis.call('ZREM', K.wf, before.workflow .. '\0' .. id)
    end
    if new.workflow ~= nil then
      redis.call('ZADD', K.wf, '0', new.workflow .. '\0' .. id)
    end
  end
end

-- Removes a record and every index entry of it.
local function remove(K, id, status, workflow)
  redis.call('DEL', K.rec)
  redis.call('ZREM', K.due, id)
  redis.call('ZREM', K.exp, id)
  if status then redis.call('ZREM', K.st .. status, id) end
  if workflow then redis.call('ZREM', K.wf, workflow .. '\0' .. id) end
end

-- ---------------------------------------------------------------------------
