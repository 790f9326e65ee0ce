-- Return running jobs whose lease ran out (their worker died) to the head of their priority list.
-- KEYS: processing, leases, high, normal, low, jobs, wakeup
-- ARGV: now ms, max jobs, wakeup token limit
-- Returns the ids returned.
local lists = { high = KEYS[3], normal = KEYS[4], low = KEYS[5] }
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))

for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  local raw = redis.call('HGET', KEYS[6], id)
  if raw then
    local job = cjson.decode(raw)
    job.status = 'pending'
    job.worker = nil
    redis.call('HSET', KEYS[6], id, cjson.encode(job))
    redis.call('LPUSH', lists[job.priority] or KEYS[4], id)
  end
end

if #ids > 0 then
  redis.call('RPUSH', KEYS[7], '1')
  redis.call('LTRIM', KEYS[7], -tonumber(ARGV[3]), -1)
end
return ids
