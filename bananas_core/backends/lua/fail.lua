-- Record a failed run, if the caller still holds the job's lease: schedule a retry or move the
-- job to the dead letter queue.
-- KEYS: processing, leases, jobs, scheduled, dead, the job's priority list, wakeup, cancel requests
-- ARGV: job id, delivery token, error JSON, retry delay ms (-1: dead), wakeup token limit,
--       finished channel
-- Returns 1 when recorded, 0 when the token is stale.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])

-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local delay = tonumber(ARGV[4])
local job = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
job.error = ARGV[3]
job.finished_at = now
job.worker = nil

if delay < 0 then
  job.status = 'dead'
  redis.call('ZADD', KEYS[5], now, ARGV[1])
  redis.call('HDEL', KEYS[8], ARGV[1])
  redis.call('PUBLISH', ARGV[6], ARGV[1])
elseif delay == 0 then
  -- Due already: straight back to the queue instead of waiting for a scheduler tick.
  job.status = 'pending'
  job.retries = (job.retries or 0) + 1
  redis.call('RPUSH', KEYS[6], ARGV[1])
  redis.call('RPUSH', KEYS[7], '1')
  redis.call('LTRIM', KEYS[7], -tonumber(ARGV[5]), -1)
else
  job.status = 'scheduled'
  job.retries = (job.retries or 0) + 1
  job.run_at = now + delay
  redis.call('ZADD', KEYS[4], job.run_at, ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))
return 1
