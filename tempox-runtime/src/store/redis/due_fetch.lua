-- Store::due, second step: the records among ids that are still due.
-- KEYS: due (names the bucket)
-- ARGV: record key prefix, id...
-- Returns a list of records.
local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local r = load(ARGV[1] .. id)
  if r ~= nil and r.due_at ~= nil and ucmp(r.due_at, now) <= 0 then
    out[#out + 1] = flat(id, r)
  end
end
return out
