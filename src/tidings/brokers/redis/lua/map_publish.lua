-- Write one key as one atomic step: state, stream, TTL and the change to every node
-- (after clock.lua and map_common.lua).
-- ARGV from 9: 9 key, 10 entry JSON (no offset), 11 tags JSON ('' none),
--   12 idempotency key ('' none), 13 idempotency window ms, 14 key mode '' | if_new |
--   if_exists, 15 version (0 none), 16 version epoch, 17 '1': refresh the TTL of a
--   suppressed if_new, 18 '1': send the previous entry with the change (delta),
--   19 most expired keys removed on the way.
-- Returns {top offset, epoch, suppress reason ('' written)}.
local key, entry, tags = ARGV[9], ARGV[10], ARGV[11]
local idempotency_key, window = ARGV[12], tonumber(ARGV[13])
local key_mode, version, version_epoch = ARGV[14], tonumber(ARGV[15]), ARGV[16]
access(tonumber(ARGV[19]))
local seen = remembered(idempotency_key)
if seen then
  touch()
  return seen
end
local current = redis.call('HGET', K_STATE, key)
if version > 0 and current then
  local stored = redis.call('HGET', K_VERS, key)
  local stored_version, stored_epoch = 0, ''
  if stored then
    local sep = string.find(stored, ',', 1, true)
    stored_version, stored_epoch = tonumber(string.sub(stored, 1, sep - 1)), string.sub(stored, sep + 1)
  end
  if (version_epoch == '' or version_epoch == stored_epoch) and version <= stored_version then
    touch()
    return {top, epoch, 'version'}
  end
end
if key_mode == 'if_new' and current then
  if ARGV[17] == '1' and KEY_TTL > 0 then
    redis.call('ZADD', K_EXP, int(now + KEY_TTL), key)
  end
  touch()
  return {top, epoch, 'key_exists'}
end
if key_mode == 'if_exists' and not current then
  touch()
  return {top, epoch, 'key_not_found'}
end
local offset = append(entry)
redis.call('HSET', K_STATE, key, int(offset) .. ',' .. entry)
if not current then redis.call('ZADD', K_KEYS, 0, key) end
if KEY_TTL > 0 then
  redis.call('ZADD', K_EXP, int(now + KEY_TTL), key)
else
  redis.call('ZREM', K_EXP, key)
end
if tags ~= '' then redis.call('HSET', K_TAGS, key, tags) else redis.call('HDEL', K_TAGS, key) end
if version > 0 then redis.call('HSET', K_VERS, key, int(version) .. ',' .. version_epoch) end
remember(idempotency_key, window)
if ARGV[18] == '1' and current then
  local previous = string.sub(current, string.find(current, ',', 1, true) + 1)
  announce('p', offset, int(#previous) .. ',' .. previous .. entry)
else
  announce('c', offset, entry)
end
touch()
return {top, epoch, ''}
