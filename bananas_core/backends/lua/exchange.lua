-- Record the outcomes of finished runs, then lease the next jobs: one round trip per batch, so
-- a busy worker acknowledges and fetches together.
-- KEYS: high, normal, low, processing, leases, jobs, wakeup, completed, scheduled, dead,
--       cancel requests, cancelled
-- ARGV: lease ms, worker id, wakeup token limit, finished channel, jobs requested, outcomes.
--       The outcomes are one JSON array of [job id, delivery token, kind, value, retry delay ms,
--       retries when leased] arrays. One argument costs the worker less to send than six per
--       outcome, and decoding it costs Redis little. kind 'completed' stores value as the
--       result ('' for none). 'retry' and 'dead' store it as the error, and 'retry' runs the
--       job again after the delay.
-- Returns {one flag per outcome: 1 recorded (now or by an earlier call with the same outcome),
--          0 stale token (another delivery owns the job), 2 a failed run whose retry gave way
--          to a cancel request, so the job is cancelled; the leased records}.
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local priority_list = {high = KEYS[1], normal = KEYS[2], low = KEYS[3]}
local channel = ARGV[4]
local recorded = {}

local function wake_one_worker()
  if redis.call('RPUSH', KEYS[7], '1') > tonumber(ARGV[3]) then
    redis.call('LTRIM', KEYS[7], -tonumber(ARGV[3]), -1)
  end
end

-- A worker sends its outcomes again when the reply to a call was lost. So an outcome whose
-- lease is gone may be one this script recorded already. The record then carries this
-- delivery's token and exactly this result or error.
local function recorded_before(id, token, kind, value, retries)
  local ok, job = pcall(cjson.decode, redis.call('HGET', KEYS[6], id) or '')
  if not ok or tostring(job.token) ~= tostring(token) then
    return 0
  end
  if kind == 'completed' then
    return (job.status == 'completed' and (job.result or '') == value) and 1 or 0
  end
  if kind == 'dead' then
    return (job.status == 'dead' and job.error == value) and 1 or 0
  end
  if job.error ~= value then
    return 0
  end
  if job.status == 'cancelled' then
    -- Cancelled by this script, which leaves retries as they were; or retried by it, then
    -- cancelled by a caller while it waited.
    return (job.retries or 0) == retries and 2 or 1
  end
  return (job.status == 'scheduled' or job.status == 'pending') and 1 or 0
end

for _, outcome in ipairs(cjson.decode(ARGV[6])) do
  local id, token, kind, value, delay = outcome[1], outcome[2], outcome[3], outcome[4], outcome[5]

  if redis.call('HGET', KEYS[5], id) ~= tostring(token) then
    recorded[#recorded + 1] = recorded_before(id, token, kind, value, outcome[6])
  else
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    local job = cjson.decode(redis.call('HGET', KEYS[6], id))
    local flag = 1
    job.finished_at = now
    job.worker = nil

    if kind == 'completed' then
      job.status = 'completed'
      if value ~= '' then
        job.result = value
      end
      redis.call('ZADD', KEYS[8], now, id)
      redis.call('HDEL', KEYS[11], id)
      -- Waiters on the job's result wake at once. A channel is not a key, so it is not in KEYS.
      redis.call('PUBLISH', channel, id)
    elseif kind == 'dead' then
      job.status = 'dead'
      job.error = value
      redis.call('ZADD', KEYS[10], now, id)
      redis.call('HDEL', KEYS[11], id)
      redis.call('PUBLISH', channel, id)
    elseif redis.call('HDEL', KEYS[11], id) == 1 then
      -- Cancellation was requested while the run failed: the job is not run again.
      job.status = 'cancelled'
      job.error = value
      redis.call('ZADD', KEYS[12], now, id)
      redis.call('PUBLISH', channel, id)
      flag = 2
    else
      job.error = value
      job.retries = (job.retries or 0) + 1
      if delay == 0 then
        -- Due already: straight back to its queue instead of waiting for a scheduler tick.
        job.status = 'pending'
        redis.call('RPUSH', priority_list[job.priority] or KEYS[2], id)
        wake_one_worker()
      else
        job.status = 'scheduled'
        job.run_at = now + delay
        redis.call('ZADD', KEYS[9], job.run_at, id)
      end
    end
    redis.call('HSET', KEYS[6], id, cjson.encode(job))
    recorded[#recorded + 1] = flag
  end
end

-- Lease strictly by priority (every high job before any normal one), FIFO within a priority.
local requested = tonumber(ARGV[5])
local deadline = now + tonumber(ARGV[1])
local leased = {}
-- Lists that returned fewer ids than were asked for are empty now.
local emptied = 0
for i = 1, 3 do
  local left = requested - #leased
  if left <= 0 then
    break
  end

  local ids = redis.call('LPOP', KEYS[i], left)
  if not ids or #ids < left then
    emptied = emptied + 1
  end
  if ids then
    for _, id in ipairs(ids) do
      local raw = redis.call('HGET', KEYS[6], id)
      -- A list entry without a record was purged or cancelled, and a corrupt record cannot run:
      -- skip both rather than fail every lease.
      local ok, job = pcall(cjson.decode, raw or '')
      if ok then
        job.status = 'processing'
        job.attempts = (job.attempts or 0) + 1
        job.token = (job.token or 0) + 1
        job.started_at = now
        job.worker = ARGV[2]
        job.run_at = nil
        raw = cjson.encode(job)
        redis.call('HSET', KEYS[6], id, raw)
        redis.call('HSET', KEYS[5], id, job.token)
        -- A thousandth of a millisecond more per job keeps the lease's order in the set, for
        -- a worker that looks up the jobs of a lost reply (leased_to).
        redis.call('ZADD', KEYS[4], deadline + #leased * 0.001, id)
        leased[#leased + 1] = raw
      end
    end
  end
end

if requested > 0 then
  -- When all three lists came back short, the queue is empty without asking their lengths:
  -- on an idle worker's lease, each command a script calls costs more than the command itself.
  local left = 0
  if emptied < 3 then
    left = redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
  end
  if left > 0 and #leased >= requested then
    -- This worker is full but work is left: wake another idle worker.
    wake_one_worker()
  elseif left == 0 then
    -- Every token left stood for a job that is leased now; an idle worker that popped one
    -- would only find the queue empty. The next enqueue pushes a fresh token.
    redis.call('DEL', KEYS[7])
  end
end
return {recorded, leased}
