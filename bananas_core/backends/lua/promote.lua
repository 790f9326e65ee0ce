-- Move scheduled jobs that are due to the tail of their priority lists.
-- KEYS: scheduled, high, normal, low, jobs, wakeup
-- ARGV: max jobs, wakeup token limit
-- Returns the number of jobs moved.
local lists = { high = KEYS[2], normal = KEYS[3], low = KEYS[4] }
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))

for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local raw = redis.call('HGET', KEYS[5], id)
  -- A missing or corrupt record is dropped from the set, so it cannot stall every tick.
  local ok, job = pcall(cjson.decode, raw or '')
  if ok then
    job.status = 'pending'
    job.run_at = nil
    redis.call('HSET', KEYS[5], id, cjson.encode(job))
    redis.call('RPUSH', lists[job.priority] or KEYS[3], id)
  end
end

if #ids > 0 then
  if redis.call('RPUSH', KEYS[6], '1') > tonumber(ARGV[2]) then
    redis.call('LTRIM', KEYS[6], -tonumber(ARGV[2]), -1)
  end
end
return #ids
