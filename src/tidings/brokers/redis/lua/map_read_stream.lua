-- A range of the stream with the top and the oldest offset still kept
-- (after clock.lua and map_common.lua).
-- ARGV from 9: 9 '' (no entries), XRANGE or XREVRANGE, 10 and 11 range bounds,
--   12 COUNT (0: all), 13 most expired keys removed on the way.
-- Returns {top offset, epoch, oldest kept offset (0: none), entries}.
access(tonumber(ARGV[13]))
touch()
local first = redis.call('XRANGE', K_STREAM, '-', '+', 'COUNT', 1)
local oldest = 0
if first[1] then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
if ARGV[9] == '' then return {top, epoch, oldest, {}} end
local entries
if ARGV[12] == '0' then
  entries = redis.call(ARGV[9], K_STREAM, ARGV[10], ARGV[11])
else
  entries = redis.call(ARGV[9], K_STREAM, ARGV[10], ARGV[11], 'COUNT', ARGV[12])
end
return {top, epoch, oldest, entries}
