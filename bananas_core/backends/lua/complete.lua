-- Record a successful run, if the caller still holds the job's lease.
-- KEYS: processing, leases, jobs, completed, cancel requests
-- ARGV: job id, delivery token, result JSON ('' for none), finished channel
-- Returns 1 when recorded, 0 when the token is stale (another delivery owns the job).
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])

local job = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
job.status = 'completed'
job.finished_at = now
job.worker = nil
if ARGV[3] ~= '' then
  job.result = ARGV[3]
end
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
-- Waiters on the job's result wake at once. A channel is not a key, so it is not in KEYS.
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
