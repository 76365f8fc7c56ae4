-- Add or refresh one entry (after prune_presence.lua and clock.lua).
-- KEYS: as prune_presence.lua. ARGV: 1 client id, 2 ClientInfo JSON, 3 user, 4 ttl ms
local now_ms = server_time_ms()
local ttl = tonumber(ARGV[4])
prune(now_ms)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 1
