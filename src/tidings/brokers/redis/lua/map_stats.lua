-- The number of keys, after removing those whose TTL passed (after map_common.lua).
-- ARGV from 9: 9 most expired keys removed on the way.
if not load_meta() then return 0 end
expire_due(tonumber(ARGV[9]))
return redis.call('HLEN', K_STATE)
