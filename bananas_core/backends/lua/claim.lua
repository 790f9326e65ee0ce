-- Lease up to ARGV[1] jobs, strictly by priority (every high job before any normal one) and FIFO
-- within a priority.
-- KEYS: high, normal, low, processing, leases, jobs, wakeup
-- ARGV: max jobs, lease ms, worker id, wakeup token limit
-- Returns the leased records, each with status processing, a new delivery token and one more attempt.
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local wanted = tonumber(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local claimed = {}

for i = 1, 3 do
  local left = wanted - #claimed
  if left <= 0 then
    break
  end

  local ids = redis.call('LPOP', KEYS[i], left)
  if ids then
    for _, id in ipairs(ids) do
      local raw = redis.call('HGET', KEYS[6], id)
      -- A list entry without a record was purged or cancelled, and a corrupt record cannot run:
      -- skip both rather than fail every claim.
      local ok, job = pcall(cjson.decode, raw or '')
      if ok then
        job.status = 'processing'
        job.attempts = (job.attempts or 0) + 1
        job.token = (job.token or 0) + 1
        job.started_at = now
        job.worker = ARGV[3]
        job.run_at = nil
        raw = cjson.encode(job)
        redis.call('HSET', KEYS[6], id, raw)
        redis.call('HSET', KEYS[5], id, job.token)
        redis.call('ZADD', KEYS[4], deadline, id)
        claimed[#claimed + 1] = raw
      end
    end
  end
end

-- This worker is full but work is left: wake another idle worker.
if #claimed >= wanted then
  local left = redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
  if left > 0 then
    redis.call('RPUSH', KEYS[7], '1')
    redis.call('LTRIM', KEYS[7], -tonumber(ARGV[4]), -1)
  end
end
return claimed
