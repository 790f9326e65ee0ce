-- Store a running job's progress report, if the caller still holds the job's lease.
-- KEYS: leases, jobs
-- ARGV: job id, delivery token, fraction from 0 to 1, message ('' for none)
-- Returns 1 when stored, 0 when the token is stale.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end

local job = cjson.decode(redis.call('HGET', KEYS[2], ARGV[1]))
job.progress = tonumber(ARGV[3])
if ARGV[4] ~= '' then
  job.progress_message = ARGV[4]
else
  job.progress_message = nil
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(job))
return 1
