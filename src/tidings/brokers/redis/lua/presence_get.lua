-- Every live entry, flat: client id, ClientInfo JSON, ... (after prune_presence.lua and clock.lua).
prune(server_time_ms())
return redis.call('HGETALL', KEYS[1])
