-- Included before the presence scripts that read entries (see scripts.py).
-- KEYS: 1 client -> ClientInfo JSON, 2 client -> user, 3 zset client -> expiry ms
local function prune(now_ms)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  for i = 1, #gone, 1000 do
    local last = math.min(i + 999, #gone)
    redis.call('HDEL', KEYS[1], unpack(gone, i, last))
    redis.call('HDEL', KEYS[2], unpack(gone, i, last))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms) end
end
