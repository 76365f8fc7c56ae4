-- Included before the scripts that read the time (see scripts.py).
-- Milliseconds on the Redis server's clock, so nodes need not agree on time.
local function server_time_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
