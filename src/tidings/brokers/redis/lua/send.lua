-- KEYS: 1 pub/sub channel. ARGV: 1 message, 2 PUBLISH or SPUBLISH.
-- A script so that a cluster client routes the sharded publish by its key.
return redis.call(ARGV[2], KEYS[1], ARGV[1])
