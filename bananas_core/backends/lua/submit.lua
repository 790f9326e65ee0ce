-- Store a batch of new jobs in one atomic step, honouring idempotency keys: all of the batch is
-- stored or, when the script cannot run, none of it.
-- NOTE: Redis keeps the writes made before a runtime error, so a queue key of the wrong type
-- (set by hand) fails the call after the jobs before it were stored.
-- KEYS: jobs, high, normal, low, scheduled, wakeup, then one idempotency key per job that has one
-- ARGV: idempotency window ms, wakeup token limit, placements, then 2 values per job: id and
--       record JSON. The placements are one JSON array with one [run_at ms (0: run now), index
--       in KEYS of its priority list, index in KEYS of its idempotency key (0: none)] per job.
--       They travel as one argument, because each argument costs the client more to send than
--       decoding them costs Redis.
-- Returns one entry per job, in order: 1 when it was stored (the caller has its record), or the
-- record of the job that already has this idempotency key (or id).
local window = tonumber(ARGV[1])
local results = {}
local queued = false

for i, placement in ipairs(cjson.decode(ARGV[3])) do
  local id = ARGV[2 + i * 2]
  local record = ARGV[3 + i * 2]
  local run_at = placement[1]
  local list = KEYS[placement[2]]
  local unique = placement[3]

  local existing = nil
  if unique > 0 then
    local first_id = redis.call('GET', KEYS[unique])
    -- The first job may have been purged while its key lived on: then this one is new.
    if first_id then
      existing = redis.call('HGET', KEYS[1], first_id)
    end
  end
  -- HSETNX stores the record unless a job with this id exists, in one command.
  if not existing and redis.call('HSETNX', KEYS[1], id, record) == 0 then
    existing = redis.call('HGET', KEYS[1], id)
  end

  if existing then
    results[#results + 1] = existing
  else
    if run_at > 0 then
      redis.call('ZADD', KEYS[5], run_at, id)
    else
      redis.call('RPUSH', list, id)
      queued = true
    end
    if unique > 0 then
      redis.call('SET', KEYS[unique], id, 'PX', window)
    end
    results[#results + 1] = 1
  end
end

if queued then
  if redis.call('RPUSH', KEYS[6], '1') > tonumber(ARGV[2]) then
    redis.call('LTRIM', KEYS[6], -tonumber(ARGV[2]), -1)
  end
end
return results
