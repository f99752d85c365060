-- Opening a store: records (or checks) the layout a bucket was written with.
-- KEYS: meta of one bucket
-- ARGV: number of buckets, layout version, '1' to record the layout where
-- none is (else '0': nothing is written)
-- Returns {'ok'}, {'created'}, {'missing'}, {'buckets', theirs} or
-- {'version', theirs}.
local buckets = redis.call('HGET', KEYS[1], 'buckets')
if buckets == false then
  if ARGV[3] ~= '1' then return {'missing'} end
  redis.call('HSET', KEYS[1], 'buckets', ARGV[1], 'version', ARGV[2])
  return {'created'}
end
if buckets ~= ARGV[1] then return {'buckets', buckets} end
local version = redis.call('HGET', KEYS[1], 'version')
if version ~= ARGV[2] then return {'version', version or ''} end
return {'ok'}
