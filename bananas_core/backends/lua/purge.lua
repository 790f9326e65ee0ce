-- Delete completed and dead jobs older than their retention period.
-- KEYS: completed, dead, jobs
-- ARGV: completed before ms, dead before ms, max jobs per set
-- Returns the number of jobs deleted.
local deleted = 0
for i = 1, 2 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[i], 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[i], id)
    redis.call('HDEL', KEYS[3], id)
    deleted = deleted + 1
  end
end
return deleted
