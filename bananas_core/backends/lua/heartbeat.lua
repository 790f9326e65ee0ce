-- Extend the leases of running jobs whose delivery token still matches.
-- KEYS: processing, leases
-- ARGV: new deadline ms, then pairs of job id and delivery token
-- Returns the ids whose lease was lost (expired and handed on, or finished elsewhere).
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], id)
  else
    lost[#lost + 1] = id
  end
end
return lost
