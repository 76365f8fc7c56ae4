-- One publication, as one atomic step (after clock.lua and trim_expired.lua).
-- KEYS: 1 meta hash {e = epoch, s = top offset}, 2 history stream,
--       3 pub/sub channel, 4 idempotency key (optional)
-- ARGV: 1 publication JSON (offset left out), 2 '1' to keep history,
--       3 size, 4 ttl ms, 5 meta ttl ms, 6 epoch to use if the meta is gone,
--       7 idempotency window s, 8 PUBLISH or SPUBLISH,
--       9 message kind: 'p', or 'd' when the publisher asked for delta encoding
-- Returns {offset, epoch, 1 if a repeat of an idempotency key else 0};
-- epoch '' means no history (offset 0).
local idempotency_key = KEYS[4]
if idempotency_key then
  local seen = redis.call('GET', idempotency_key)
  if seen then
    local sep = string.find(seen, ',', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local offset, epoch = 0, ''
if ARGV[2] == '1' then
  local now_ms = server_time_ms()
  epoch = redis.call('HGET', KEYS[1], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch)
  end
  offset = redis.call('HINCRBY', KEYS[1], 's', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  local ttl = tonumber(ARGV[4])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[1], 'x', now_ms + ttl)
  trim_expired(KEYS[2], now_ms)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call(ARGV[8], KEYS[3], ARGV[9] .. offset .. ',' .. epoch .. ',' .. ARGV[1])
if idempotency_key then
  redis.call('SET', idempotency_key, offset .. ',' .. epoch, 'EX', ARGV[7])
end
return {offset, epoch, 0}
