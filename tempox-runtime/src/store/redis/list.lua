-- Store::list in one bucket: the first limit records, in id order, of the
-- lexicographic ranges of some indexes, optionally keeping only some statuses.
-- KEYS: n indexes of one bucket (status sets or wf), one range each
-- ARGV: record key prefix, limit, n, then n times (prefix length, min, max),
--       then the statuses to keep (none: keep all)
-- Returns a list of records.
local prefix, limit, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local keep = nil
if #ARGV > 3 + 3 * n then
  keep = {}
  for i = 4 + 3 * n, #ARGV do keep[ARGV[i]] = true end
end

-- Up to limit ids of range k (0-based), in the index's order.
local function ids_of(k)
  local strip, min, max = tonumber(ARGV[4 + 3 * k]), ARGV[5 + 3 * k], ARGV[6 + 3 * k]
  local ids, offset = {}, 0
  while #ids < limit do
    local batch = redis.call('ZRANGEBYLEX', KEYS[k + 1], min, max, 'LIMIT', offset, limit)
    for _, member in ipairs(batch) do
      local id = string.sub(member, strip + 1)
      if keep == nil or keep[redis.call('HGET', prefix .. id, 'status')] then
        ids[#ids + 1] = id
        if #ids >= limit then break end
      end
    end
    if #batch < limit then break end
    offset = offset + #batch
  end
  return ids
end

-- a before b in ZRANGEBYLEX's order (bytes, shorter first), without the
-- server's locale.
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Each range is in order: merge them, reading only the records returned.
local lists, next_of = {}, {}
for k = 1, n do
  lists[k] = ids_of(k - 1)
  next_of[k] = 1
end
local out = {}
while #out < limit do
  local best, best_id = nil, nil
  for k = 1, n do
    local id = lists[k][next_of[k]]
    if id ~= nil and (best_id == nil or before(id, best_id)) then best, best_id = k, id end
  end
  if best == nil then break end
  next_of[best] = next_of[best] + 1
  local r = load(prefix .. best_id)
  if r ~= nil then out[#out + 1] = flat(best_id, r) end
end
return out
