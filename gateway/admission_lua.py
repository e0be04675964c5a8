"""The Lua scripts of the Redis admission backend: one round trip to admit, one to settle.

A request is admitted against one or two scopes, its tenant's and, when the key has limits of
its own, its key's; every key is hash-tagged with the tenant, so a cluster keeps them on one
slot. Each scope has eight keys (for the tenant `adm:{t}:NAME`, for a key `adm:{t}:k<id>:NAME`):
  leases  ZSET lease id -> lease expiry (ms)      concurrency; expired leases are dropped
  tok     ZSET entry id -> admission time (ms)    the tokens-per-minute sliding window
  amt     HASH entry id -> tokens                 each entry's reservation, then real count
  sum     STRING                                  the sum of the window's entries
  req     ZSET entry id -> admission time (ms)    requests-per-minute sliding window
  holds   HASH lease id -> picos                  the cost each running request holds
  held    STRING                                  the sum of the holds
  spend   STRING (adm:{t}:spend:M)                the month's settled spend (billing/spend.py)
then the tenant's two credit counters (granted, used: billing/spend.py). KEYS: the tenant's
eight, the two credit keys, the key's eight if it has limits.

Money is whole picos (10^-12), in strings: Lua's numbers are doubles, exact only to 2^53
(9,007 units of the currency in picos), so sums are compared as pairs of (units, picos) and
changed only with INCRBY/DECRBY, which Redis does in 64-bit integers.
Times come from Redis's clock, so gateways with skewed clocks agree.
"""

_PRELUDE = """
local window = 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nscopes = (#KEYS == 18) and 2 or 1
local function scope(i)
  local b = (i == 1) and 0 or 10
  return {leases = KEYS[b + 1], tok = KEYS[b + 2], amt = KEYS[b + 3], sum = KEYS[b + 4],
          req = KEYS[b + 5], holds = KEYS[b + 6], held = KEYS[b + 7], spend = KEYS[b + 8]}
end
local BASE = 1000000000000
local function money(s)
  s = s or '0'
  if string.sub(s, 1, 1) == '-' then return {0, 0} end
  local n = #s
  if n <= 12 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, n - 12)), tonumber(string.sub(s, n - 11))}
end
local function plus(a, b)
  local lo = a[2] + b[2]
  if lo >= BASE then return {a[1] + b[1] + 1, lo - BASE} end
  return {a[1] + b[1], lo}
end
local function at_most(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] <= b[2]) end
local function expire(s)
  local old = redis.call('ZRANGEBYSCORE', s.tok, '-inf', now - window)
  for _, id in ipairs(old) do
    local n = tonumber(redis.call('HGET', s.amt, id) or '0')
    redis.call('DECRBY', s.sum, n)
    redis.call('HDEL', s.amt, id)
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', s.tok, '-inf', now - window) end
  redis.call('ZREMRANGEBYSCORE', s.req, '-inf', now - window)
  -- A lease that expired belongs to a request whose gateway died: its hold goes with it.
  local dead = redis.call('ZRANGEBYSCORE', s.leases, '-inf', now)
  for _, id in ipairs(dead) do
    local hold = redis.call('HGET', s.holds, id)
    if hold then
      redis.call('DECRBY', s.held, hold)
      redis.call('HDEL', s.holds, id)
    end
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', s.leases, '-inf', now) end
end
local function touch(s, ttl)
  for _, key in ipairs({s.leases, s.tok, s.amt, s.sum, s.req, s.holds, s.held}) do
    redis.call('PEXPIRE', key, ttl)
  end
end
"""

# ARGV: lease id, lease ms, tokens to reserve, cost to hold (picos), prepaid (1/0), then for
# each scope: max concurrent, tokens per minute (0: no limit), requests per minute (0: none),
# monthly budget in picos (-1: none).
# Returns {code, scope, then per scope: in_flight, tokens_used, requests_used, reset_tokens_ms,
# then retry_after_ms}; code 1 admitted, -1 concurrency, -2 requests per minute, -3 can never
# fit, -4 tokens per minute, -5 the budget cannot cover the hold, -6 nor can the credits; scope
# 1 is the tenant's, 2 the key's.
ADMIT = (
    _PRELUDE
    + """
local lease_id, lease_ms, tokens = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local hold, prepaid = money(ARGV[4]), ARGV[5] == '1'
local scopes, counts = {}, {}
for i = 1, nscopes do
  local s = scope(i)
  local a = 5 + (i - 1) * 4
  s.max_conc, s.tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  s.rpm, s.budget = tonumber(ARGV[a + 3]), ARGV[a + 4]
  expire(s)
  s.in_flight = redis.call('ZCARD', s.leases)
  s.used = tonumber(redis.call('GET', s.sum) or '0')
  s.requests = redis.call('ZCARD', s.req)
  local newest = redis.call('ZRANGE', s.tok, -1, -1, 'WITHSCORES')
  s.reset = (#newest == 0) and 0 or (tonumber(newest[2]) + window - now)
  scopes[i] = s
  for _, v in ipairs({s.in_flight, s.used, s.requests, s.reset}) do table.insert(counts, v) end
end
local function refuse(code, i, retry_ms)
  local out = {code, i}
  for _, v in ipairs(counts) do table.insert(out, v) end
  table.insert(out, retry_ms)
  return out
end
for i, s in ipairs(scopes) do
  if s.budget ~= '-1' then
    local committed = plus(money(redis.call('GET', s.spend)), money(redis.call('GET', s.held)))
    if not at_most(plus(committed, hold), money(s.budget)) then return refuse(-5, i, 0) end
  end
end
if prepaid then
  local t = scopes[1]
  local committed = plus(money(redis.call('GET', KEYS[10])), money(redis.call('GET', t.held)))
  if not at_most(plus(committed, hold), money(redis.call('GET', KEYS[9]))) then
    return refuse(-6, 1, 0)
  end
end
for i, s in ipairs(scopes) do
  if s.tpm > 0 and tokens > s.tpm then return refuse(-3, i, window) end
end
for i, s in ipairs(scopes) do
  if s.max_conc > 0 and s.in_flight >= s.max_conc then return refuse(-1, i, 1000) end
end
for i, s in ipairs(scopes) do
  if s.rpm > 0 and s.requests >= s.rpm then
    local oldest = redis.call('ZRANGE', s.req, 0, 0, 'WITHSCORES')
    return refuse(-2, i, tonumber(oldest[2]) + window - now)
  end
end
for i, s in ipairs(scopes) do
  if s.tpm > 0 and s.used + tokens > s.tpm then
    local freed, wait = 0, window
    local entries = redis.call('ZRANGE', s.tok, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', s.amt, entries[j]) or '0')
      if s.used - freed + tokens <= s.tpm then
        wait = tonumber(entries[j + 1]) + window - now
        break
      end
    end
    return refuse(-4, i, wait)
  end
end
counts = {}
for _, s in ipairs(scopes) do
  redis.call('ZADD', s.leases, now + lease_ms, lease_id)
  redis.call('ZADD', s.tok, now, lease_id)
  redis.call('HSET', s.amt, lease_id, tokens)
  redis.call('INCRBY', s.sum, tokens)
  if s.rpm > 0 then redis.call('ZADD', s.req, now, lease_id) end
  -- Every request has a hold entry, 0 when nothing limits its cost: settling removes it, and
  -- only the settlement that removes it adds the cost, so a retried settlement cannot count
  -- twice.
  redis.call('HSET', s.holds, lease_id, ARGV[4])
  redis.call('INCRBY', s.held, ARGV[4])
  touch(s, window + lease_ms)
  for _, v in ipairs({s.in_flight + 1, s.used + tokens, s.requests + 1, window}) do
    table.insert(counts, v)
  end
end
return refuse(1, 0, 0)
"""
)

# ARGV: lease id, reserved tokens, actual tokens, actual cost (picos), prepaid (1/0), the spend
# counters' TTL (s). Ends the
# lease, reconciles the window entry to the real count (an entry that already left the window
# is charged the excess, if any, as a new entry now: tokens are never forgotten), releases the
# hold and adds the real cost to the month's spend (and the credits used, when prepaid).
SETTLE = (
    _PRELUDE
    + """
local lease_id, reserved, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, prepaid = ARGV[4], ARGV[5] == '1'
for i = 1, nscopes do
  local s = scope(i)
  redis.call('ZREM', s.leases, lease_id)
  if redis.call('HEXISTS', s.amt, lease_id) == 1 then
    local booked = tonumber(redis.call('HGET', s.amt, lease_id))
    redis.call('HSET', s.amt, lease_id, actual)
    redis.call('INCRBY', s.sum, actual - booked)
  elseif actual > reserved then
    local late = lease_id .. ':late'
    redis.call('ZADD', s.tok, now, late)
    redis.call('HSET', s.amt, late, actual - reserved)
    redis.call('INCRBY', s.sum, actual - reserved)
    touch(s, window)
  end
  local hold = redis.call('HGET', s.holds, lease_id)
  if hold then
    redis.call('DECRBY', s.held, hold)
    redis.call('HDEL', s.holds, lease_id)
    if cost ~= '0' then
      redis.call('INCRBY', s.spend, cost)
      redis.call('EXPIRE', s.spend, ARGV[6])
      if prepaid and i == 1 then redis.call('INCRBY', KEYS[10], cost) end
    end
  end
end
return 1
"""
)

# ARGV: lease id, lease ms. Extends a live lease (and keeps its hold); returns 0 if it had
# already expired.
RENEW = (
    _PRELUDE
    + """
local lease_ms = tonumber(ARGV[2])
local renewed = 0
for i = 1, nscopes do
  local s = scope(i)
  renewed = redis.call('ZADD', s.leases, 'XX', 'CH', now + lease_ms, ARGV[1])
  for _, key in ipairs({s.leases, s.holds, s.held}) do
    if redis.call('PTTL', key) < lease_ms then redis.call('PEXPIRE', key, 2 * lease_ms) end
  end
end
return renewed
"""
)
