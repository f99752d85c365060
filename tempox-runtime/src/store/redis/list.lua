-- Store::list in one bucket: up to limit records from each lexicographic
-- range of some indexes, optionally keeping only some statuses.
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
local out = {}
for k = 0, n - 1 do
  local strip, min, max = tonumber(ARGV[4 + 3 * k]), ARGV[5 + 3 * k], ARGV[6 + 3 * k]
  local found, offset = 0, 0
  while found < limit do
    local batch = redis.call('ZRANGEBYLEX', KEYS[k + 1], min, max, 'LIMIT', offset, limit)
    for _, member in ipairs(batch) do
      local id = string.sub(member, strip + 1)
      local key = prefix .. id
      if keep == nil or keep[redis.call('HGET', key, 'status')] then
        local r = load(key)
        if r ~= nil then
          out[#out + 1] = flat(id, r)
          found = found + 1
          if found >= limit then break end
        end
      end
    end
    if #batch < limit then break end
    offset = offset + #batch
  end
end
return out
