-- Delete cancelled jobs older than their retention, and cancellation requests left behind by
-- jobs that finished without stopping.
-- KEYS: cancelled, jobs, cancel requests, processing
-- ARGV: retention ms, max jobs
-- Returns the number of jobs deleted.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end

-- The hash contains one entry per running job whose cancellation was requested, so it stays small.
local requests = redis.call('HKEYS', KEYS[3])
for _, id in ipairs(requests) do
  if redis.call('ZSCORE', KEYS[4], id) == false then
    redis.call('HDEL', KEYS[3], id)
  end
end
return #ids
