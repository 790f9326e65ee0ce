-- Record that a worker stopped a running job because cancellation was requested, if the caller
-- still holds the job's lease.
-- KEYS: processing, leases, jobs, cancelled, cancel requests
-- ARGV: job id, delivery token, finished channel
-- Returns 1 when recorded, 0 when the token is stale.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])

local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local job = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
job.status = 'cancelled'
job.finished_at = now
job.worker = nil
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
