-- Return an unfinished job to the head of its priority list (graceful shutdown), if the caller
-- still holds its lease. The interrupted run does not count as an attempt.
-- KEYS: processing, leases, jobs, the job's priority list, wakeup
-- ARGV: job id, delivery token, wakeup token limit
-- Returns 1 when returned, 0 when the token is stale.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])

local job = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
job.status = 'pending'
job.attempts = math.max((job.attempts or 1) - 1, 0)
job.started_at = nil
job.worker = nil
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))

redis.call('LPUSH', KEYS[4], ARGV[1])
if redis.call('RPUSH', KEYS[5], '1') > tonumber(ARGV[3]) then
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[3]), -1)
end
return 1
