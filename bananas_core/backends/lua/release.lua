-- Return an unfinished job to the head of its priority list (graceful shutdown), if the caller
-- still holds its lease. The interrupted run does not count as an attempt. A job whose
-- cancellation was requested while it was leased is cancelled instead: returned, it would run
-- again before any worker saw the request.
-- KEYS: processing, leases, jobs, the job's priority list, wakeup, cancel requests, cancelled
-- ARGV: job id, delivery token, wakeup token limit, finished channel
-- Returns 1 when returned, 2 when cancelled, 0 when the token is stale.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end

redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])

local job = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
job.worker = nil
job.attempts = math.max((job.attempts or 1) - 1, 0)
job.started_at = nil

if redis.call('HDEL', KEYS[6], ARGV[1]) == 1 then
  local server_time = redis.call('TIME')
  local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
  job.status = 'cancelled'
  job.finished_at = now
  redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))
  redis.call('ZADD', KEYS[7], now, ARGV[1])
  redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 2
end

job.status = 'pending'
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(job))

redis.call('LPUSH', KEYS[4], ARGV[1])
if redis.call('RPUSH', KEYS[5], '1') > tonumber(ARGV[3]) then
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[3]), -1)
end
return 1
