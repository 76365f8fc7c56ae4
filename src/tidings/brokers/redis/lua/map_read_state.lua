-- A page of state, or one key, with the top (after clock.lua and map_common.lua).
-- ARGV from 9: 9 'top' | 'key' | 'page', 10 the key, or the cursor (the last key of the
--   previous page; '' from the start), 11 page size (-1: all), 12 most expired keys
--   removed on the way.
-- Returns {top offset, epoch, {key, "<offset>,<entry JSON>", ...}, 1 if more pages}.
access(tonumber(ARGV[12]))
touch()
local what, from, limit = ARGV[9], ARGV[10], tonumber(ARGV[11])
if what == 'top' then return {top, epoch, {}, 0} end
if what == 'key' then
  local value = redis.call('HGET', K_STATE, from)
  if not value then return {top, epoch, {}, 0} end
  return {top, epoch, {from, value}, 0}
end
local start = '-'
if from ~= '' then start = '(' .. from end
local keys
if limit < 0 then
  keys = redis.call('ZRANGEBYLEX', K_KEYS, start, '+')
else
  keys = redis.call('ZRANGEBYLEX', K_KEYS, start, '+', 'LIMIT', 0, limit + 1)
end
local more = 0
if limit >= 0 and #keys > limit then
  more = 1
  keys[#keys] = nil
end
local flat = {}
if #keys > 0 then
  local values = redis.call('HMGET', K_STATE, unpack(keys))
  for i, key in ipairs(keys) do
    flat[#flat + 1] = key
    flat[#flat + 1] = values[i]
  end
end
return {top, epoch, flat, more}
