-- Drop a channel from the expiry index, unless a writer touched its entry since the
-- cleanup leased it. KEYS: 1 the index zset. ARGV: 1 channel, 2 the lease score.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
