-- Requeue or delete a window of the dead letter queue, oldest first, optionally only the jobs
-- of one handler name. Callers repeat it, moving the offset past the jobs it skipped, until a
-- call reads fewer ids than the limit.
-- KEYS: jobs, dead, high, normal, low, wakeup
-- ARGV: 'requeue' or 'delete', handler name ('' for every job), offset, max ids, wakeup token limit
-- Returns {changed, skipped, read}: jobs requeued or deleted, jobs kept because their name
-- differs, and ids read.
local action = ARGV[1]
local name = ARGV[2]
local offset = tonumber(ARGV[3])
local ids = redis.call('ZRANGE', KEYS[2], offset, offset + tonumber(ARGV[4]) - 1)
local lists = { high = KEYS[3], normal = KEYS[4], low = KEYS[5] }
local changed, skipped = 0, 0

for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[1], id)
  local ok, job = pcall(cjson.decode, raw or '')
  if name ~= '' and (not ok or job.name ~= name) then
    skipped = skipped + 1
  elseif action == 'delete' or not ok then
    -- A dead entry without a readable record cannot run again, so requeue deletes it too.
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[1], id)
    changed = changed + 1
  else
    redis.call('ZREM', KEYS[2], id)
    job.status = 'pending'
    job.retries = 0
    job.crashes = nil
    job.finished_at = nil
    job.run_at = nil
    redis.call('HSET', KEYS[1], id, cjson.encode(job))
    redis.call('RPUSH', lists[job.priority] or KEYS[4], id)
    changed = changed + 1
  end
end

if action == 'requeue' and changed > 0 then
  if redis.call('RPUSH', KEYS[6], '1') > tonumber(ARGV[5]) then
    redis.call('LTRIM', KEYS[6], -tonumber(ARGV[5]), -1)
  end
end
return { changed, skipped, #ids }
