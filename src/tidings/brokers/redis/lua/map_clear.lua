-- Forget the channel: state, stream, position, idempotency results (after map_common.lua).
-- Every interested node hears 'x'. Returns 1 if there was something to forget.
local existed = redis.call('EXISTS', K_META)
wipe()
redis.call('DEL', K_META)
if existed == 1 then redis.call(PUBLISH, K_PUB, 'x') end
return existed
