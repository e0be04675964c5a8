"""The Lua scripts of the Redis admission backend: one round trip to admit, one to release.

Per tenant (hash-tagged so a cluster keeps them on one slot):
  {t}:leases  ZSET lease id -> lease expiry (ms)      concurrency; expired leases are dropped
  {t}:tok     ZSET entry id -> admission time (ms)    the tokens-per-minute sliding window
  {t}:amt     HASH entry id -> tokens                 each entry's reservation, then real count
  {t}:sum     STRING                                  the sum of the window's entries
  {t}:req     ZSET entry id -> admission time (ms)    requests-per-minute sliding window
  {t}:spend:M STRING                                  the month's spend in millionths, kept by
                                                      billing (read here: the budget check)
Times come from Redis's clock, so gateways with skewed clocks agree.
"""

_PRELUDE = """
local leases, tok, amt, sum, req = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local window = 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire_window()
  local old = redis.call('ZRANGEBYSCORE', tok, '-inf', now - window)
  for _, id in ipairs(old) do
    local n = tonumber(redis.call('HGET', amt, id) or '0')
    redis.call('DECRBY', sum, n)
    redis.call('HDEL', amt, id)
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', tok, '-inf', now - window) end
  redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
end
local function touch_keys(ttl)
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

# ARGV: lease id, lease ms, max concurrent, tokens per minute, requests per minute (0: none),
# tokens to reserve, monthly budget in millionths (-1: none).
# Returns {code, in_flight, tokens_used, requests_used, retry_after_ms, reset_tokens_ms}; code 1
# admitted, -1 concurrency, -2 requests per minute, -3 can never fit, -4 tokens per minute,
# -5 the monthly budget is spent.
ADMIT = (
    _PRELUDE
    + """
local lease_id, lease_ms = ARGV[1], tonumber(ARGV[2])
local max_conc, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local rpm, tokens, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
expire_window()
local in_flight = redis.call('ZCARD', leases)
local used = tonumber(redis.call('GET', sum) or '0')
local requests = redis.call('ZCARD', req)
local function reset_ms()
  local newest = redis.call('ZRANGE', tok, -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return tonumber(newest[2]) + window - now
end
if budget >= 0 and tonumber(redis.call('GET', KEYS[6]) or '0') >= budget then
  return {-5, in_flight, used, requests, 0, reset_ms()}
end
if tokens > tpm then
  return {-3, in_flight, used, requests, window, reset_ms()}
end
if in_flight >= max_conc then
  return {-1, in_flight, used, requests, 1000, reset_ms()}
end
if rpm > 0 and requests >= rpm then
  local oldest = redis.call('ZRANGE', req, 0, 0, 'WITHSCORES')
  return {-2, in_flight, used, requests, tonumber(oldest[2]) + window - now, reset_ms()}
end
if used + tokens > tpm then
  local freed, wait = 0, window
  local entries = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    freed = freed + tonumber(redis.call('HGET', amt, entries[i]) or '0')
    if used - freed + tokens <= tpm then
      wait = tonumber(entries[i + 1]) + window - now
      break
    end
  end
  return {-4, in_flight, used, requests, wait, reset_ms()}
end
redis.call('ZADD', leases, now + lease_ms, lease_id)
redis.call('ZADD', tok, now, lease_id)
redis.call('HSET', amt, lease_id, tokens)
redis.call('INCRBY', sum, tokens)
if rpm > 0 then redis.call('ZADD', req, now, lease_id) end
touch_keys(window + lease_ms)
return {1, in_flight + 1, used + tokens, requests + 1, 0, window}
"""
)

# ARGV: lease id, reserved tokens, actual tokens. Ends the lease and reconciles the window
# entry to the real count (a refund or a charge). An entry that already left the window is
# charged the excess, if any, as a new entry now: tokens are never forgotten.
RELEASE = (
    _PRELUDE
    + """
local lease_id, reserved, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREM', leases, lease_id)
if redis.call('HEXISTS', amt, lease_id) == 1 then
  local booked = tonumber(redis.call('HGET', amt, lease_id))
  redis.call('HSET', amt, lease_id, actual)
  redis.call('INCRBY', sum, actual - booked)
elseif actual > reserved then
  local late = lease_id .. ':late'
  redis.call('ZADD', tok, now, late)
  redis.call('HSET', amt, late, actual - reserved)
  redis.call('INCRBY', sum, actual - reserved)
  touch_keys(window)
end
return 1
"""
)

# ARGV: lease id, lease ms. Extends a live lease; returns 0 if it had already expired.
RENEW = (
    _PRELUDE.split("local function expire_window")[0]
    + """
local lease_ms = tonumber(ARGV[2])
local renewed = redis.call('ZADD', leases, 'XX', 'CH', now + lease_ms, ARGV[1])
if redis.call('PTTL', leases) < lease_ms then redis.call('PEXPIRE', leases, 2 * lease_ms) end
return renewed
"""
)
