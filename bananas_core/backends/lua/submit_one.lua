-- Store one new job, as submit.lua does for a batch, with fewer keys and arguments: a single
-- submission costs the client and Redis about as much for each argument as for the work.
-- KEYS: jobs, the job's priority list (or scheduled, when it runs later), wakeup, then its
--       idempotency key if it has one
-- ARGV: id, record JSON, run_at ms (0: run now), wakeup token limit, then the idempotency
--       window ms if it has a key
-- Returns 1 when it was stored (the caller has its record), or the record of the job that
-- already has this idempotency key (or id).
-- NOTE: Redis keeps the writes made before a runtime error, so a list or wakeup key of the
-- wrong type (set by hand) fails the call after the record was stored.
local id = ARGV[1]
local unique = KEYS[4]

local existing = nil
if unique then
  local first_id = redis.call('GET', unique)
  -- The first job may have been purged while its key lived on: then this one is new.
  if first_id then
    existing = redis.call('HGET', KEYS[1], first_id)
  end
end
-- HSETNX stores the record unless a job with this id exists, in one command.
if not existing and redis.call('HSETNX', KEYS[1], id, ARGV[2]) == 0 then
  existing = redis.call('HGET', KEYS[1], id)
end
if existing then
  return existing
end

local run_at = tonumber(ARGV[3])
if run_at > 0 then
  redis.call('ZADD', KEYS[2], run_at, id)
else
  redis.call('RPUSH', KEYS[2], id)
  if redis.call('RPUSH', KEYS[3], '1') > tonumber(ARGV[4]) then
    redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
  end
end
if unique then
  redis.call('SET', unique, id, 'PX', ARGV[5])
end
return 1
