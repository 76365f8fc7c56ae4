-- Included before the scripts that touch a history stream (see scripts.py).
-- Stream entries are <offset>-0 with fields d (publication) and x (expiry, ms).
-- Drop the expired head: entries are appended in expiry order.
local function trim_expired(stream, now_ms)
  local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  local expired = false
  while batch[1] do
    local entry = batch[1]
    if tonumber(entry[2][4]) > now_ms then
      if expired then redis.call('XTRIM', stream, 'MINID', entry[1]) end
      return
    end
    expired = true
    batch = redis.call('XRANGE', stream, '(' .. entry[1], '+', 'COUNT', 1)
  end
  if expired then redis.call('DEL', stream) end
end
