-- Delete completed and dead jobs older than their retention period.
-- KEYS: completed, dead, jobs
-- ARGV: completed retention ms, dead retention ms, max jobs per set
-- Returns the number of jobs deleted.
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local deleted = 0
for i = 1, 2 do
  local cutoff = now - tonumber(ARGV[i])
  local ids = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[i], id)
    redis.call('HDEL', KEYS[3], id)
    deleted = deleted + 1
  end
end
return deleted
