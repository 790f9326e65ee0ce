-- Cancel a job that has not started, or ask for a running job to be stopped. Claims run as
-- scripts too, so a job cancelled here can never be leased afterwards.
-- KEYS: jobs, high, normal, low, scheduled, cancelled, cancel requests
-- ARGV: job id, finished channel
-- Returns a pair: the outcome and the job's record ('' when missing). The outcome is
-- 'cancelled' (pending or scheduled job, now cancelled), 'requested' (running job, flag stored),
-- 'finished' (completed, dead or already cancelled: nothing changes) or 'missing'.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return { 'missing', '' }
end

local ok, job = pcall(cjson.decode, raw)
if not ok then
  return { 'missing', '' }
end

-- The time comes from the Redis server's clock, as in the scripts that lease and expire jobs.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
if job.status == 'pending' then
  local lists = { high = KEYS[2], normal = KEYS[3], low = KEYS[4] }
  redis.call('LREM', lists[job.priority] or KEYS[3], 0, ARGV[1])
elseif job.status == 'scheduled' then
  redis.call('ZREM', KEYS[5], ARGV[1])
elseif job.status == 'processing' then
  -- The first request's time is kept, so repeated requests do not move it.
  redis.call('HSETNX', KEYS[7], ARGV[1], now)
  return { 'requested', raw }
else
  return { 'finished', raw }
end

job.status = 'cancelled'
job.finished_at = now
job.run_at = nil
raw = cjson.encode(job)
redis.call('HSET', KEYS[1], ARGV[1], raw)
redis.call('ZADD', KEYS[6], now, ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return { 'cancelled', raw }
