-- Included before every map script, after clock.lua (see scripts.py and map.py).
-- One map channel's keys, all in one cluster slot (the channel is the hash tag):
-- KEYS: 1 meta hash {e epoch, s top offset, mx meta deadline ms, sx stream deadline ms,
--       m mode, z stream size, st stream ttl ms, mt meta ttl ms}, 2 state hash
--       key -> "<offset>,<entry JSON>", 3 key order zset (score 0, by lex), 4 key deadlines
--       zset, 5 stream (<offset>-0, field d = entry JSON), 6 versions hash key ->
--       "<version>,<version epoch>", 7 tags hash key -> tags JSON, 8 idempotency hash
--       idempotency key -> "<offset>,<epoch>", 9 idempotency deadlines zset,
--       10 the channel's pub/sub name.
-- ARGV: 1 now ms (0: the server's clock), 2 mode e|r|p ('' : as the meta says),
--       3 key ttl ms, 4 stream size, 5 stream ttl ms, 6 meta ttl ms (0: never),
--       7 epoch for a new generation, 8 PUBLISH or SPUBLISH; the script's own from 9.
-- Deadlines are kept as data and compared with "now", so every TTL rule holds whatever
-- clock the caller passes; Redis key expiry only collects what a forgotten channel left
-- behind (each key lives META_TTL + GC_MARGIN after the last access).
local K_META, K_STATE, K_KEYS, K_EXP = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_STREAM, K_VERS, K_TAGS, K_IDEM, K_IDEMX, K_PUB =
  KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local DATA_KEYS = {K_STATE, K_KEYS, K_EXP, K_VERS, K_TAGS, K_IDEM, K_IDEMX}
local GC_MARGIN = 60000
local now = tonumber(ARGV[1])
if now == 0 then now = server_time_ms() end
local MODE, KEY_TTL, STREAM_SIZE, STREAM_TTL, META_TTL =
  ARGV[2], tonumber(ARGV[3]) or 0, ARGV[4], tonumber(ARGV[5]) or 0, tonumber(ARGV[6]) or 0
local NEW_EPOCH, PUBLISH = ARGV[7], ARGV[8]
local epoch, top = false, 0

local function int(n) return string.format('%d', n) end

local function has_stream() return MODE ~= 'e' end

local function wipe()
  redis.call('DEL', K_STATE, K_KEYS, K_EXP, K_STREAM, K_VERS, K_TAGS, K_IDEM, K_IDEMX)
end

local function new_generation()
  wipe()
  redis.call('DEL', K_META)
  epoch, top = NEW_EPOCH, 0
  redis.call('HSET', K_META, 'e', epoch, 's', 0)
end

-- Reads epoch and top; false when the channel has no meta (never written, flushed,
-- collected). Without a mode in ARGV (the cleanup's call) the retention is the meta's.
local function load_meta()
  local meta = redis.call('HMGET', K_META, 'e', 's', 'sx', 'm', 'z', 'st', 'mt')
  if not meta[1] then return false end
  epoch, top = meta[1], tonumber(meta[2]) or 0
  if MODE == '' then
    MODE, STREAM_SIZE = meta[4] or 'p', meta[5] or '100'
    STREAM_TTL, META_TTL = tonumber(meta[6]) or 0, tonumber(meta[7]) or 0
  end
  local sx = tonumber(meta[3])
  if sx and sx <= now then
    redis.call('DEL', K_STREAM)
    redis.call('HDEL', K_META, 'sx')
  end
  return true
end

local function forgettable()
  local mx = tonumber(redis.call('HGET', K_META, 'mx'))
  return mx ~= nil and mx <= now and redis.call('HLEN', K_STATE) == 0
end

local function removal_json(key, tags)
  local body = '{"key":' .. cjson.encode(key) .. ',"removed":true'
  if tags then body = body .. ',"tags":' .. tags end
  return body .. ',"time":' .. int(now) .. '}'
end

local function forget_key(key)
  redis.call('HDEL', K_STATE, key)
  redis.call('ZREM', K_KEYS, key)
  redis.call('ZREM', K_EXP, key)
  redis.call('HDEL', K_VERS, key)
  redis.call('HDEL', K_TAGS, key)
end

-- A change in stream modes takes the next offset and goes into the stream.
local function append(entry)
  if not has_stream() then return 0 end
  top = redis.call('HINCRBY', K_META, 's', 1)
  redis.call('XADD', K_STREAM, 'MAXLEN', STREAM_SIZE, int(top) .. '-0', 'd', entry)
  redis.call('HSET', K_META, 'sx', int(now + STREAM_TTL))
  return top
end

local function announce(kind, offset, body)
  redis.call(PUBLISH, K_PUB, kind .. int(offset) .. ',' .. epoch .. ',' .. body)
end

-- Remove a key with a removal in the stream and to every node; nil tags: the entry's.
local function remove_key(key, tags)
  if tags == nil then tags = redis.call('HGET', K_TAGS, key) end
  forget_key(key)
  local removal = removal_json(key, tags)
  local offset = append(removal)
  announce('c', offset, removal)
  return offset
end

-- Keys whose deadline passed, as removals; at most `limit` per call.
local function expire_due(limit)
  local due = redis.call('ZRANGEBYSCORE', K_EXP, '-inf', now, 'LIMIT', 0, limit)
  for _, key in ipairs(due) do remove_key(key, nil) end
  return #due
end

-- Every access: a channel without meta, or one idle past its meta ttl with no keys left,
-- starts a new generation; due keys go first.
local function access(limit)
  if load_meta() then
    expire_due(limit)
    if forgettable() then new_generation() end
  else
    new_generation()
  end
end

-- Extend the channel's life after an access, and note its retention for the cleanup.
local function touch()
  redis.call('HSET', K_META, 'm', MODE, 'z', STREAM_SIZE, 'st', int(STREAM_TTL),
    'mt', int(META_TTL))
  if META_TTL > 0 then
    redis.call('HSET', K_META, 'mx', int(now + META_TTL))
    redis.call('PEXPIRE', K_META, int(META_TTL + GC_MARGIN))
    for _, key in ipairs(DATA_KEYS) do
      redis.call('PEXPIRE', key, int(META_TTL + GC_MARGIN))
    end
  else
    redis.call('HDEL', K_META, 'mx')
    if redis.call('PTTL', K_META) >= 0 then
      redis.call('PERSIST', K_META)
      for _, key in ipairs(DATA_KEYS) do redis.call('PERSIST', key) end
    end
  end
  if STREAM_TTL > 0 then redis.call('PEXPIRE', K_STREAM, int(STREAM_TTL + GC_MARGIN)) end
end

-- Idempotency results: "<offset>,<epoch>" of the first call, until their deadline.
local function remembered(idempotency_key)
  if idempotency_key == '' then return nil end
  local gone = redis.call('ZRANGEBYSCORE', K_IDEMX, '-inf', now)
  for i = 1, #gone, 1000 do
    redis.call('HDEL', K_IDEM, unpack(gone, i, math.min(i + 999, #gone)))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', K_IDEMX, '-inf', now) end
  local seen = redis.call('HGET', K_IDEM, idempotency_key)
  if not seen then return nil end
  local sep = string.find(seen, ',', 1, true)
  return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 'idempotency'}
end

local function remember(idempotency_key, window_ms)
  if idempotency_key == '' then return end
  redis.call('HSET', K_IDEM, idempotency_key, int(top) .. ',' .. epoch)
  redis.call('ZADD', K_IDEMX, int(now + window_ms), idempotency_key)
end
