-- Return running jobs whose lease ran out (their worker died) to the head of their priority list.
-- A job whose worker died while running it POISON_THRESHOLD times goes to the dead letter queue
-- instead, so that a job that kills its worker cannot kill workers forever.
-- A job whose cancellation was requested is cancelled instead of run again.
-- KEYS: processing, leases, high, normal, low, jobs, wakeup, dead, cancel requests, cancelled
-- ARGV: max jobs, wakeup token limit, poison threshold, finished channel
-- Returns the ids handled as a flat list of pairs: id, 'requeued', 'dead' or 'cancelled'.
local lists = { high = KEYS[3], normal = KEYS[4], low = KEYS[5] }
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local threshold = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local handled = {}
local requeued = 0

-- The ids come oldest lease first, and in lease order within one lease (exchange.lua's scores).
-- Each goes back to the head of its list, so the last goes first, and the list keeps that order.
for i = #ids, 1, -1 do
  local id = ids[i]
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  local raw = redis.call('HGET', KEYS[6], id)
  local ok, job = pcall(cjson.decode, raw or '')
  if not ok then
    -- A missing or corrupt record cannot run: keep the id in the dead letter queue for inspection.
    redis.call('ZADD', KEYS[8], now, id)
    handled[#handled + 1] = id
    handled[#handled + 1] = 'dead'
  else
    job.crashes = (job.crashes or 0) + 1
    job.worker = nil
    if redis.call('HDEL', KEYS[9], id) == 1 then
      job.status = 'cancelled'
      job.finished_at = now
      redis.call('ZADD', KEYS[10], now, id)
      redis.call('PUBLISH', ARGV[4], id)
      handled[#handled + 1] = id
      handled[#handled + 1] = 'cancelled'
    elseif job.crashes >= threshold then
      job.status = 'dead'
      job.finished_at = now
      job.error = cjson.encode({
        type = 'PoisonJob',
        message = 'the worker running this job died or lost its lease ' .. job.crashes ..
          ' times; it was moved to the dead letter queue so it cannot stop more workers',
        traceback = '',
      })
      redis.call('ZADD', KEYS[8], now, id)
      redis.call('PUBLISH', ARGV[4], id)
      handled[#handled + 1] = id
      handled[#handled + 1] = 'dead'
    else
      job.status = 'pending'
      redis.call('LPUSH', lists[job.priority] or KEYS[4], id)
      requeued = requeued + 1
      handled[#handled + 1] = id
      handled[#handled + 1] = 'requeued'
    end
    redis.call('HSET', KEYS[6], id, cjson.encode(job))
  end
end

if requeued > 0 then
  if redis.call('RPUSH', KEYS[7], '1') > tonumber(ARGV[2]) then
    redis.call('LTRIM', KEYS[7], -tonumber(ARGV[2]), -1)
  end
end
return handled
