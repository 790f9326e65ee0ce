-- Move one job from the dead letter queue to the tail of its priority list, with a fresh set
-- of retries.
-- KEYS: jobs, dead, high, normal, low, wakeup
-- ARGV: job id, wakeup token limit
-- Returns the new record, or false when the job is not in the dead letter queue.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw or redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then
  return false
end
local ok, job = pcall(cjson.decode, raw)
if not ok then
  return false
end

redis.call('ZREM', KEYS[2], ARGV[1])
local lists = { high = KEYS[3], normal = KEYS[4], low = KEYS[5] }
job.status = 'pending'
job.retries = 0
job.crashes = nil
job.finished_at = nil
job.run_at = nil
raw = cjson.encode(job)
redis.call('HSET', KEYS[1], ARGV[1], raw)
redis.call('RPUSH', lists[job.priority] or KEYS[4], ARGV[1])
if redis.call('RPUSH', KEYS[6], '1') > tonumber(ARGV[2]) then
  redis.call('LTRIM', KEYS[6], -tonumber(ARGV[2]), -1)
end
return raw
