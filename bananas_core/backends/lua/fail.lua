-- Record a failed run, if the caller still holds the job's lease: schedule a retry or move the
-- job to the dead letter queue.
-- KEYS: processing, leases, jobs, scheduled, dead, the job's priority list, wakeup
-- ARGV: job id, delivery token, now ms, error JSON, retry at ms (-1: dead), wakeup token limit
-- Returns 1 when recorded, 0 when the token is stale.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])

local now = tonumber(ARGV[3])
local retry_at = tonumber(ARGV[5])
local job = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
job.error = ARGV[4]
job.finished_at = now
job.worker = nil

if retry_at < 0 then
  job.status = 'dead'
  redis.call('ZADD', KEYS[5], now, ARGV[1])
elseif retry_at <= now then
  -- Due already: straight back to the queue instead of waiting for a scheduler tick.
  job.status = 'pending'
  job.retries = (job.retries or 0) + 1
  redis.call('RPUSH', KEYS[6], ARGV[1])
  redis.call('RPUSH', KEYS[7], '1')
  redis.call('LTRIM', KEYS[7], -tonumber(ARGV[6]), -1)
else
  job.status = 'scheduled'
  job.retries = (job.retries or 0) + 1
  job.run_at = retry_at
  redis.call('ZADD', KEYS[4], retry_at, ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))
return 1
