"""The Lua scripts of the Redis fair queue: one round trip for each decision (enter, poll,
leave, release, renew).

Per model, hash-tagged with the model id as the live state's routing table is (one slot on a
cluster, so a script reads the model's ready replicas):
  live:{m}:route  HASH node -> endpoint           the ready replicas (models_mgmt.live; read)
  fq:{m}:slots    ZSET holder id -> expiry (ms)   requests holding an engine slot
  fq:{m}:wait     ZSET, all scores 0, members     the waiting requests, read by lexical range:
                  "tenant|priority|seq|since|id"  one tenant's in priority, then arrival order
  fq:{m}:who      HASH waiter id -> its member    to find a waiter's entry by id
  fq:{m}:wexp     ZSET waiter id -> expiry (ms)   waiters' leases: a dead gateway's expire
  fq:{m}:tags     ZSET tenant -> start tag        tenants with waiters, in fair order
  fq:{m}:fin      HASH tenant -> finish tag       the tag of the tenant's last request served
  fq:{m}:wt       HASH tenant -> weight
  fq:{m}:meta     HASH v (virtual time), seq; served, wait_ms (requests that went through
                  the queue and their total wait, for the admin)

Start-time fair queuing over tenants (Goyal et al., 1996): a tenant that starts waiting gets the
start tag max(v, its last finish tag); the tenant with the smallest start tag is served next,
v becomes that tag, and its next request's tag is one 1/weight later. Tags are fixed when a
tenant starts waiting, so a waiting set is one sorted set and each decision is O(log n); a
tenant that was idle starts at v, right behind what is being served, however long another
tenant's backlog is.
Times come from Redis's clock, so gateways with skewed clocks agree.
"""

_PRELUDE = """
local route, slots, wait, who, wexp = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tags, fin, wt, meta = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function tenant_range(tenant)
  return '[' .. tenant .. '|', '(' .. tenant .. '}'
end
local function tenant_waiting(tenant)
  local lo, hi = tenant_range(tenant)
  return redis.call('ZLEXCOUNT', wait, lo, hi)
end
local function remove_waiter(id)
  local member = redis.call('HGET', who, id)
  if not member then return false end
  redis.call('ZREM', wait, member)
  redis.call('HDEL', who, id)
  redis.call('ZREM', wexp, id)
  local tenant = string.sub(member, 1, string.find(member, '|', 1, true) - 1)
  if tenant_waiting(tenant) == 0 then redis.call('ZREM', tags, tenant) end
  return true
end
local function expire()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', wexp, '-inf', now)) do remove_waiter(id) end
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
end
-- Grants free slots to waiters in fair order; returns the ids granted.
local function dispatch(per_replica, replicated, slot_ms)
  local replicas = 1
  if replicated == 1 then replicas = math.max(1, redis.call('HLEN', route)) end
  local free = per_replica * replicas - redis.call('ZCARD', slots)
  local granted = {}
  while free > 0 do
    local top = redis.call('ZRANGE', tags, 0, 0, 'WITHSCORES')
    if #top == 0 then break end
    local tenant, start = top[1], tonumber(top[2])
    local lo, hi = tenant_range(tenant)
    local head = redis.call('ZRANGEBYLEX', wait, lo, hi, 'LIMIT', 0, 1)
    if #head == 0 then
      redis.call('ZREM', tags, tenant)
    else
      local member = head[1]
      local id = string.match(member, '[^|]+$')
      redis.call('ZREM', wait, member)
      redis.call('HDEL', who, id)
      redis.call('ZREM', wexp, id)
      redis.call('ZADD', slots, now + slot_ms, id)
      local since = tonumber(string.match(member, '|(%d+)|[^|]+$'))
      redis.call('HINCRBY', meta, 'served', 1)
      redis.call('HINCRBY', meta, 'wait_ms', now - since)
      local finish = start + 1 / tonumber(redis.call('HGET', wt, tenant) or '1')
      redis.call('HSET', meta, 'v', tostring(start))
      redis.call('HSET', fin, tenant, tostring(finish))
      if tenant_waiting(tenant) > 0 then
        redis.call('ZADD', tags, finish, tenant)
      else
        redis.call('ZREM', tags, tenant)
      end
      granted[#granted + 1] = id
      free = free - 1
    end
  end
  return granted
end
local function touch(ms)
  for i = 2, 9 do redis.call('PEXPIRE', KEYS[i], ms) end
end
"""

# ARGV: id, tenant, weight, priority (0 high, 1 normal, 2 low), max queued for the tenant,
# slots per replica, replicated (1: count the ready replicas, 0: one endpoint), lease ms.
# Returns {code, tenant's waiters ahead, granted ids...}: code 1 granted at once, 0 waiting,
# -1 the tenant already has `max queued` requests waiting.
ENTER = (
    _PRELUDE
    + """
local id, tenant, weight, priority = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local max_queued, per_replica = tonumber(ARGV[5]), tonumber(ARGV[6])
local replicated, lease_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
expire()
local ahead = tenant_waiting(tenant)
if ahead >= max_queued then
  -- Full, unless a slot is free for it now: the bound is on waiting, not on being served.
  local granted = dispatch(per_replica, replicated, lease_ms)
  local replicas = 1
  if replicated == 1 then replicas = math.max(1, redis.call('HLEN', route)) end
  if redis.call('ZCARD', wait) > 0 or redis.call('ZCARD', slots) >= per_replica * replicas then
    return {-1, ahead, unpack(granted)}
  end
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local member = tenant .. '|' .. priority .. '|' .. string.format('%015d', seq) .. '|' .. now
  .. '|' .. id
redis.call('ZADD', wait, 0, member)
redis.call('HSET', who, id, member)
redis.call('ZADD', wexp, now + lease_ms, id)
redis.call('HSET', wt, tenant, weight)
if not redis.call('ZSCORE', tags, tenant) then
  local v = tonumber(redis.call('HGET', meta, 'v') or '0')
  local last = tonumber(redis.call('HGET', fin, tenant) or '0')
  redis.call('ZADD', tags, math.max(v, last), tenant)
end
local granted = dispatch(per_replica, replicated, lease_ms)
touch(math.max(60000, 4 * lease_ms))
local code = 0
if redis.call('ZSCORE', slots, id) then code = 1 end
return {code, ahead, unpack(granted)}
"""
)

# ARGV: id, slots per replica, replicated, lease ms. Serves what fits, then says where the
# waiter stands and renews its entry. Returns {code, tenant's waiters ahead, granted ids...}:
# code 1 granted, 0 still waiting, -2 its entry is gone (it expired).
POLL = (
    _PRELUDE
    + """
local id, per_replica = ARGV[1], tonumber(ARGV[2])
local replicated, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
expire()
local granted = dispatch(per_replica, replicated, lease_ms)
if redis.call('ZSCORE', slots, id) then return {1, 0, unpack(granted)} end
local member = redis.call('HGET', who, id)
if not member then return {-2, 0, unpack(granted)} end
redis.call('ZADD', wexp, now + lease_ms, id)
local tenant = string.sub(member, 1, string.find(member, '|', 1, true) - 1)
local lo = tenant_range(tenant)
local ahead = redis.call('ZLEXCOUNT', wait, lo, '(' .. member)
touch(math.max(60000, 4 * lease_ms))
return {0, ahead, unpack(granted)}
"""
)

# ARGV: id, slots per replica, replicated, lease ms. Leaves the queue, or gives back the slot
# (granted, or held), and serves the next waiters. Returns {was it holding a slot, granted...}.
RELEASE = (
    _PRELUDE
    + """
local id, per_replica = ARGV[1], tonumber(ARGV[2])
local replicated, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
remove_waiter(id)
local held = redis.call('ZREM', slots, id)
expire()
return {held, unpack(dispatch(per_replica, replicated, lease_ms))}
"""
)

# ARGV: id, lease ms. Extends a held slot; returns 0 if it had already expired.
RENEW = (
    _PRELUDE
    + """
local lease_ms = tonumber(ARGV[2])
local renewed = redis.call('ZADD', slots, 'XX', 'CH', now + lease_ms, ARGV[1])
touch(math.max(60000, 4 * lease_ms))
return renewed
"""
)

# No ARGV. Returns {served, wait_ms, tenant, waiting, tenant, waiting, ...} after dropping
# expired entries.
DEPTH = (
    _PRELUDE
    + """
expire()
local counts, order = {}, {}
for _, member in ipairs(redis.call('ZRANGE', wait, 0, -1)) do
  local tenant = string.sub(member, 1, string.find(member, '|', 1, true) - 1)
  if not counts[tenant] then counts[tenant] = 0; order[#order + 1] = tenant end
  counts[tenant] = counts[tenant] + 1
end
local flat = {tonumber(redis.call('HGET', meta, 'served') or '0'),
              tonumber(redis.call('HGET', meta, 'wait_ms') or '0')}
for _, tenant in ipairs(order) do flat[#flat + 1] = tenant; flat[#flat + 1] = counts[tenant] end
return flat
"""
)
