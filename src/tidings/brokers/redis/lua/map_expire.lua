-- The cleanup's visit of one channel (after clock.lua and map_common.lua, no retention in
-- ARGV: the meta's is used): remove keys whose TTL passed, forget an idle channel, and
-- return the next key deadline (0: none, the channel leaves the expiry index).
-- ARGV from 9: 9 most expired keys removed in this call.
if not load_meta() then
  wipe()
  return 0
end
local removed = expire_due(tonumber(ARGV[9]))
if forgettable() then
  wipe()
  redis.call('DEL', K_META)
  return 0
end
local next_due = redis.call('ZRANGE', K_EXP, 0, 0, 'WITHSCORES')
if next_due[2] then
  if removed == tonumber(ARGV[9]) then return int(now) end
  return next_due[2]
end
return 0
