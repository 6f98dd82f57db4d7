"""Lua scripts of the Redis limit stores. Each call is one script on one Redis Cluster slot
(every key carries the partition as its hash tag), atomic, on Redis server time (`TIME`), so
replicas with skewed clocks agree. Numbers handed back to Redis go through `int()` below:
Redis would format a large Lua number as "1.7e+15", which INCRBY and SET refuse.

Rates (`RATE_CHECK`): one integer per bucket, its TAT in microseconds, expiring once the
bucket is full again; the arithmetic is `chatplane.limits.gcra`'s, step for step.

Slots: per rule a sorted set of lease ids scored by expiry (ms), and per lease a set of the
slot keys it holds (the lease record), both expiring with the lease.

Budgets: per budget key `B`: `B:spent` (the settled spend; its existence means "seeded"),
`B:held` (a sorted set of reservation ids by expiry, ms) and `B:amounts` (a hash of
"r:<id>" -> amount plus "total", the sum of the live ones). Per reservation a record: the
budget keys it holds under (JSON) while it is live, then "settled" for a week.
`RELEASE_SLOTS` and `SETTLE` read the keys to touch from a record: undeclared keys, but in the
record's own slot."""

_COMMON = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(x) return string.format('%d', x) end
local function extend(key, ttl_ms)
  local left = redis.call('PTTL', key)
  if left ~= -2 and left < ttl_ms then redis.call('PEXPIRE', key, int(ttl_ms)) end
end
"""

# KEYS: one bucket per rule. ARGV: limit, period (us), cost per rule, in order.
# Returns {taken, then per rule: allowed, remaining, reset (us), retry after (us)}.
RATE_CHECK = (
    _COMMON
    + """
local now = now_us()
local levels, steps, taken = {}, {}, 1
for i, key in ipairs(KEYS) do
  local limit, period = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local level = levels[key]
  if level == nil then level = math.max(0, tonumber(redis.call('GET', key) or now) - now) end
  local after = level + cost * period / limit
  local allowed, retry = 1, 0
  if cost <= limit and after <= period + 1e-3 then
    levels[key] = after
  else
    allowed, taken = 0, 0
    if cost > limit then retry = period else retry = after - period end
  end
  steps[i] = {allowed, level, after, retry}
end
if taken == 1 then
  for key, level in pairs(levels) do
    local whole = math.floor(level)
    if whole > 0 then
      redis.call('SET', key, int(now + whole), 'PX', int(math.ceil(whole / 1000)))
    else
      redis.call('DEL', key)
    end
  end
end
local out = {taken}
for i, s in ipairs(steps) do
  local limit, period = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local level = s[2]
  if taken == 1 then level = s[3] end
  local units = math.floor((period - level) * limit / period + 1e-9)
  out[#out + 1] = s[1]
  out[#out + 1] = math.min(limit, math.max(0, units))
  out[#out + 1] = math.ceil(level)
  out[#out + 1] = math.ceil(s[4])
end
return out
"""
)

# KEYS[1]: the lease record; KEYS[2..]: one slot set per rule. ARGV: lease id, lease TTL
# (ms), then the rules' limits. Returns {0} when taken, or {refused rule (1-based), in use}.
ACQUIRE_SLOTS = (
    _COMMON
    + """
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local now = math.floor(now_us() / 1000)
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if not redis.call('ZSCORE', KEYS[i], lease) then
    local in_use = redis.call('ZCARD', KEYS[i])
    if in_use >= tonumber(ARGV[i + 1]) then return {i - 1, in_use} end
  end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], int(now + ttl), lease)
  extend(KEYS[i], ttl)
  redis.call('SADD', KEYS[1], KEYS[i])
end
if #KEYS > 1 then redis.call('PEXPIRE', KEYS[1], int(ttl)) end
return {0}
"""
)

# KEYS[1]: the lease record; KEYS[2..]: the slot sets this process knows the lease holds.
# ARGV[1]: the lease id. Frees its slots in every set the record or KEYS name.
RELEASE_SLOTS = """
for _, slots in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('ZREM', slots, ARGV[1])
end
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('DEL', KEYS[1])
return 0
"""

# KEYS[1]: the lease record; KEYS[2..]: the lease's slot sets. ARGV: lease id, lease TTL (ms).
# Extends the lease where it still holds a slot (never takes a slot back); returns how many.
RENEW_SLOTS = (
    _COMMON
    + """
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local now = math.floor(now_us() / 1000)
local held = 0
for i = 2, #KEYS do
  local expires = redis.call('ZSCORE', KEYS[i], lease)
  if expires and tonumber(expires) > now then
    redis.call('ZADD', KEYS[i], int(now + ttl), lease)
    extend(KEYS[i], ttl)
    held = held + 1
  end
end
if held > 0 then redis.call('PEXPIRE', KEYS[1], int(ttl)) else redis.call('DEL', KEYS[1]) end
return held
"""
)

_BUDGETS = """
-- Drop B's expired reservations from its total.
local function drop_expired(b, now)
  local held, amounts = b .. ':held', b .. ':amounts'
  local expired = redis.call('ZRANGEBYSCORE', held, '-inf', now)
  if #expired == 0 then return end
  local total = 0
  for _, id in ipairs(expired) do
    total = total + tonumber(redis.call('HGET', amounts, 'r:' .. id) or 0)
    redis.call('HDEL', amounts, 'r:' .. id)
  end
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  if redis.call('ZCARD', held) == 0 then
    redis.call('DEL', amounts)
  else
    redis.call('HINCRBY', amounts, 'total', int(-total))
  end
end
local function reserved(b)
  return tonumber(redis.call('HGET', b .. ':amounts', 'total') or 0)
end
"""

# KEYS[1]: the reservation record; then per rule: B:spent, B:held, B:amounts. ARGV: id,
# amount, TTL (ms), then the rules' limits.
# Returns {0} when held (or held or settled before), {-1, unseeded rules (1-based)...} or
# {refused rule (1-based), spent, reserved}.
RESERVE = (
    _COMMON
    + _BUDGETS
    + """
local id, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local now = math.floor(now_us() / 1000)
local n = (#KEYS - 1) / 3
local budgets, unseeded = {}, {-1}
for i = 1, n do
  local spent_key = KEYS[3 * i - 1]
  budgets[i] = string.sub(spent_key, 1, -7)  -- without ':spent'
  drop_expired(budgets[i], now)
  if redis.call('EXISTS', spent_key) == 0 then unseeded[#unseeded + 1] = i end
end
if #unseeded > 1 then return unseeded end
for i = 1, n do
  local spent = tonumber(redis.call('GET', KEYS[3 * i - 1]))
  local held = reserved(budgets[i])
  if spent + held + amount > tonumber(ARGV[3 + i]) then return {i, spent, held} end
end
local seen, keys = {}, {}
for i = 1, n do
  local b = budgets[i]
  if not seen[b] then
    seen[b] = true
    keys[#keys + 1] = b
    redis.call('ZADD', b .. ':held', int(now + ttl), id)
    redis.call('HSET', b .. ':amounts', 'r:' .. id, int(amount))
    redis.call('HINCRBY', b .. ':amounts', 'total', int(amount))
    extend(b .. ':held', ttl)
    extend(b .. ':amounts', ttl)
  end
end
redis.call('SET', KEYS[1], cjson.encode(keys), 'PX', int(ttl))
return {0}
"""
)

# KEYS[1]: the reservation record; KEYS[2..]: the B:spent counters to add to. ARGV: id,
# actual amount, how long to remember the settled id (ms).
# Returns 1 when a live reservation was released, 0 when none was, -1 when settled before.
SETTLE = (
    _COMMON
    + """
local id, actual = ARGV[1], ARGV[2]
local record = redis.call('GET', KEYS[1])
if record == 'settled' then return -1 end
local released = 0
if record then
  released = 1
  for _, b in ipairs(cjson.decode(record)) do
    local held, amounts = b .. ':held', b .. ':amounts'
    local amount = redis.call('HGET', amounts, 'r:' .. id)
    if amount then
      redis.call('HDEL', amounts, 'r:' .. id)
      redis.call('ZREM', held, id)
      if redis.call('ZCARD', held) == 0 then
        redis.call('DEL', amounts)
      else
        redis.call('HINCRBY', amounts, 'total', int(-tonumber(amount)))
      end
    end
  end
end
local seen = {}
for i = 2, #KEYS do
  if not seen[KEYS[i]] and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], actual)
  end
  seen[KEYS[i]] = true
end
redis.call('SET', KEYS[1], 'settled', 'PX', ARGV[3])
return released
"""
)

# KEYS: B:spent, B:held, B:amounts. Returns {spent, reserved}, or nil when unseeded.
BUDGET_STATE = (
    _COMMON
    + _BUDGETS
    + """
local b = string.sub(KEYS[1], 1, -7)
drop_expired(b, math.floor(now_us() / 1000))
local spent = redis.call('GET', KEYS[1])
if not spent then return nil end
return {tonumber(spent), reserved(b)}
"""
)
