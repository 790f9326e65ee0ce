-- Store a new job and put it in its priority list, or in the scheduled set if it has a run time.
-- KEYS: jobs, target priority list, scheduled, wakeup
-- ARGV: job id, record JSON, run_at ms (0: run now), wakeup token limit
-- Returns nil when stored, or the existing record when the id is taken (nothing changes).
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  return existing
end

redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])

local run_at = tonumber(ARGV[3])
if run_at > 0 then
  redis.call('ZADD', KEYS[3], run_at, ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('RPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
end
return false
