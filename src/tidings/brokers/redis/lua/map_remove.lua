-- Remove one key as one atomic step (after clock.lua and map_common.lua).
-- ARGV from 9: 9 key, 10 idempotency key ('' none), 11 idempotency window ms,
--   12 '1': use 13 as the removal's tags JSON ('' none) instead of the entry's,
--   14 most expired keys removed on the way.
-- Returns {top offset, epoch, suppress reason ('' removed)}.
local key, idempotency_key, window = ARGV[9], ARGV[10], tonumber(ARGV[11])
access(tonumber(ARGV[14]))
local seen = remembered(idempotency_key)
if seen then
  touch()
  return seen
end
if key == '' or redis.call('HEXISTS', K_STATE, key) == 0 then
  touch()
  return {top, epoch, 'key_not_found'}
end
local tags = nil
if ARGV[12] == '1' then
  tags = false
  if ARGV[13] ~= '' then tags = ARGV[13] end
end
remove_key(key, tags)
remember(idempotency_key, window)
touch()
return {top, epoch, ''}
