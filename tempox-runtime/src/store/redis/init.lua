-- Opening a store: records (or checks) the layout a bucket was written with.
-- KEYS: meta of one bucket
-- ARGV: number of buckets, layout version
-- Returns {'ok'}, {'created'}, {'buckets', theirs} or {'version', theirs}.
local buckets = redis.call('HGET', KEYS[1], 'buckets')
if buckets == false then
  redis.call('HSET', KEYS[1], 'buckets', ARGV[1], 'version', ARGV[2])
  return {'created'}
end
if buckets ~= ARGV[1] then return {'buckets', buckets} end
local version = redis.call('HGET', KEYS[1], 'version')
if version ~= ARGV[2] then return {'version', version or ''} end
return {'ok'}
