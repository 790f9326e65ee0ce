-- Admit or reject one request with the generic cell rate algorithm (GCRA): the key holds the
-- theoretical arrival time (TAT) of the next request, and a request is admitted when it comes
-- no earlier than TAT minus the burst allowance.
-- KEYS: the client's rate limit key
-- ARGV: emission interval ms (1000 / rate), burst
-- Returns {1, 0} when admitted, or {0, ms until a request would be admitted}.
-- The Redis server's clock, so that API processes whose clocks differ share one budget.
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + tonumber(server_time[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local allow_at = tat + interval - burst * interval
if now < allow_at then
  return { 0, math.ceil(allow_at - now) }
end

local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format("%.3f", new_tat), 'PX', math.max(math.ceil(new_tat - now), 1))
return { 1, 0 }
