-- A stream's top position and a range of it (after clock.lua and trim_expired.lua).
-- KEYS: 1 meta hash, 2 history stream
-- ARGV: 1 epoch to use if the meta is gone, 2 meta ttl ms (0: leave as is),
--       3 '' (position only), XRANGE or XREVRANGE, 4 and 5 range bounds,
--       6 COUNT (0: all)
-- Returns {top offset, epoch, entries}.
local meta = redis.call('HMGET', KEYS[1], 'e', 's')
local epoch, top = meta[1], tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[1]
  top = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local meta_ttl = tonumber(ARGV[2])
if meta_ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], meta_ttl)
end
if ARGV[3] == '' then return {top, epoch, {}} end
local now_ms = server_time_ms()
trim_expired(KEYS[2], now_ms)
local entries
if ARGV[6] == '0' then
  entries = redis.call(ARGV[3], KEYS[2], ARGV[4], ARGV[5])
else
  entries = redis.call(ARGV[3], KEYS[2], ARGV[4], ARGV[5], 'COUNT', ARGV[6])
end
return {top, epoch, entries}
