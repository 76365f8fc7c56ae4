-- {clients, distinct users} of the live entries (after prune_presence.lua and clock.lua).
prune(server_time_ms())
local users, distinct = {}, 0
for _, user in ipairs(redis.call('HVALS', KEYS[2])) do
  if not users[user] then
    users[user] = true
    distinct = distinct + 1
  end
end
return {redis.call('HLEN', KEYS[1]), distinct}
