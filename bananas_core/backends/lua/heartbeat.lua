-- Extend the leases of running jobs whose delivery token still matches.
-- KEYS: processing, leases
-- ARGV: lease ms, then pairs of job id and delivery token
-- Returns the ids whose lease was lost (expired and handed on, or finished elsewhere).
-- Times come from the Redis server's clock, so the clocks of workers and schedulers need not agree.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
