"""Lua scripts of the Redis limit stores. Each call is one script on one Redis Cluster slot
(every key carries the partition as its hash tag), atomic, on Redis server time (`TIME`), so
replicas with skewed clocks agree. Numbers handed back to Redis go through `int()` below:
Redis would format a large Lua number as "1.7e+15", which INCRBY and SET refuse.

The logic of each kind exists once, as Lua functions in `_LIBRARY`: a check phase that only
reads (`rates_check`, `slots_check`, `budgets_check`) and a commit phase that writes
(`rates_commit`, `slots_commit`, `budgets_commit`), plus `slots_release` and `settle`. The
single-kind scripts (`RATE_CHECK`, `ACQUIRE_SLOTS`, `RESERVE`, `RELEASE_SLOTS`, `SETTLE`) and
the combined ones (`ADMIT`: every check, then every commit, or nothing; `FINISH`: release
and settle) are thin mains over them. Redis caches a script by its SHA, so the shared
library costs one parse per script, once.

Rates: one integer per bucket, its TAT in microseconds, expiring once the bucket is full
again; the arithmetic is `chatplane.limits.gcra`'s, step for step.

Slots: per rule a sorted set of lease ids scored by expiry (ms), and per lease a set of the
slot keys it holds (the lease record), both expiring with the lease.

Budgets: per budget key `B`: `B:spent` (the settled spend; its existence means "seeded"),
`B:held` (a sorted set of reservation ids by expiry, ms) and `B:amounts` (a hash of
"r:<id>" -> amount plus "total", the sum of the live ones). Per reservation a record: the
budget keys it holds under (JSON) while it is live, then "settled" for a week.
Releasing and settling read the keys to touch from a record: undeclared keys, but in the
record's own slot."""

_LIBRARY = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(x) return string.format('%d', x) end
local function extend(key, ttl_ms)
  local left = redis.call('PTTL', key)
  if left ~= -2 and left < ttl_ms then redis.call('PEXPIRE', key, int(ttl_ms)) end
end
local function slice(list, first, count)
  local out = {}
  for i = 1, count do out[i] = list[first + i - 1] end
  return out
end
local function numbers(list, first, count)
  local out = {}
  for i = 1, count do out[i] = tonumber(list[first + i - 1]) end
  return out
end

-- Rates ----------------------------------------------------------------------------------
-- keys: one bucket per rule; args: limit, period (us), cost per rule (numbers).
-- Every rule's GCRA step, without writes. A key named twice sees its first use.
local function rates_check(keys, args, now)
  local r = {keys = keys, args = args, now = now, levels = {}, steps = {}, taken = true}
  local stored = {}
  if #keys > 0 then stored = redis.call('MGET', unpack(keys)) end
  for i, key in ipairs(keys) do
    local limit, period, cost = args[3 * i - 2], args[3 * i - 1], args[3 * i]
    local level = r.levels[key]
    if level == nil then level = math.max(0, tonumber(stored[i] or now) - now) end
    local after = level + cost * period / limit
    local allowed, retry = 1, 0
    if cost <= limit and after <= period + 1e-3 then
      r.levels[key] = after
    else
      allowed, r.taken = 0, false
      if cost > limit then retry = period else retry = after - period end
    end
    r.steps[i] = {allowed, level, after, retry}
  end
  return r
end
local function rates_commit(r)
  for key, level in pairs(r.levels) do
    local whole = math.floor(level)
    if whole > 0 then
      redis.call('SET', key, int(r.now + whole), 'PX', int(math.ceil(whole / 1000)))
    else
      redis.call('DEL', key)
    end
  end
end
-- Per rule: allowed, remaining, reset (us), retry after (us); the levels after the request
-- when it was committed, else as they are.
local function rates_reply(r, committed, out)
  for i, s in ipairs(r.steps) do
    local limit, period = r.args[3 * i - 2], r.args[3 * i - 1]
    local level = s[2]
    if committed then level = s[3] end
    local units = math.floor((period - level) * limit / period + 1e-9)
    out[#out + 1] = s[1]
    out[#out + 1] = math.min(limit, math.max(0, units))
    out[#out + 1] = math.ceil(level)
    out[#out + 1] = math.ceil(s[4])
  end
  return out
end

-- Slots ----------------------------------------------------------------------------------
-- The first full rule as {rule (1-based), in use}, or nil; without writes (an expired lease
-- is not counted). A lease holding a slot already does not need another.
local function slots_check(lease, keys, limits, now_ms)
  local live = '(' .. int(now_ms)
  for i, key in ipairs(keys) do
    local expires = redis.call('ZSCORE', key, lease)
    if not (expires and tonumber(expires) > now_ms) then
      local in_use = redis.call('ZCOUNT', key, live, '+inf')
      if in_use >= limits[i] then return {i, in_use} end
    end
  end
  return nil
end
local function slots_commit(record, lease, keys, ttl, now_ms)
  for _, key in ipairs(keys) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    redis.call('ZADD', key, int(now_ms + ttl), lease)
    extend(key, ttl)
  end
  if #keys > 0 then
    redis.call('SADD', record, unpack(keys))
    redis.call('PEXPIRE', record, int(ttl))
  end
end
-- Frees the lease's slots in every set its record or `known` names (each set once).
local function slots_release(record, lease, known)
  local freed = {}
  for _, slots in ipairs(redis.call('SMEMBERS', record)) do
    redis.call('ZREM', slots, lease)
    freed[slots] = true
  end
  for _, slots in ipairs(known) do
    if not freed[slots] then redis.call('ZREM', slots, lease) end
  end
  redis.call('DEL', record)
end

-- Budgets --------------------------------------------------------------------------------
-- What B's live reservations hold (the expired ones left out), and the ids of the expired
-- ones, without writes.
local function budget_reserved(b, now_ms)
  local amounts = b .. ':amounts'
  local total = tonumber(redis.call('HGET', amounts, 'total') or 0)
  local expired = redis.call('ZRANGEBYSCORE', b .. ':held', '-inf', now_ms)
  for _, id in ipairs(expired) do
    total = total - tonumber(redis.call('HGET', amounts, 'r:' .. id) or 0)
  end
  return total, expired
end
-- Drop B's expired reservations (`expired`, when the caller looked them up in this call
-- already) from its total.
local function drop_expired(b, now_ms, expired)
  local held, amounts = b .. ':held', b .. ':amounts'
  expired = expired or redis.call('ZRANGEBYSCORE', held, '-inf', now_ms)
  if #expired == 0 then return end
  local total = 0
  for _, id in ipairs(expired) do
    total = total + tonumber(redis.call('HGET', amounts, 'r:' .. id) or 0)
    redis.call('HDEL', amounts, 'r:' .. id)
  end
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now_ms)
  if redis.call('ZCARD', held) == 0 then
    redis.call('DEL', amounts)
  else
    redis.call('HINCRBY', amounts, 'total', int(-total))
  end
end
-- spent_keys: B:spent per rule. Without writes, one of: {held = true} (the record exists:
-- held or settled before, nothing more to hold), {unseeded = {rules (1-based)...}},
-- {refused = {rule (1-based), spent, reserved}}, or {budgets = {B per rule}, expired =
-- {B's expired reservation ids per rule}} (it fits).
local function budgets_check(record, spent_keys, limits, amount, now_ms)
  if redis.call('EXISTS', record) == 1 then return {held = true} end
  local budgets, spent, unseeded, expired = {}, {}, {}, {}
  for i, spent_key in ipairs(spent_keys) do
    budgets[i] = string.sub(spent_key, 1, -7)  -- without ':spent'
    local value = redis.call('GET', spent_key)
    if value then spent[i] = tonumber(value) else unseeded[#unseeded + 1] = i end
  end
  if #unseeded > 0 then return {unseeded = unseeded} end
  for i = 1, #spent_keys do
    local held
    held, expired[i] = budget_reserved(budgets[i], now_ms)
    if spent[i] + held + amount > limits[i] then return {refused = {i, spent[i], held}} end
  end
  return {budgets = budgets, expired = expired}
end
local function budgets_commit(check, record, id, amount, ttl, now_ms)
  if check.held then return end
  local seen, keys = {}, {}
  for i, b in ipairs(check.budgets) do
    if not seen[b] then
      seen[b] = true
      keys[#keys + 1] = b
      drop_expired(b, now_ms, check.expired[i])
      redis.call('ZADD', b .. ':held', int(now_ms + ttl), id)
      redis.call('HSET', b .. ':amounts', 'r:' .. id, int(amount))
      redis.call('HINCRBY', b .. ':amounts', 'total', int(amount))
      extend(b .. ':held', ttl)
      extend(b .. ':amounts', ttl)
    end
  end
  redis.call('SET', record, cjson.encode(keys), 'PX', int(ttl))
end
-- Release the reservation and add `actual` to each existing counter of spent_keys, once.
-- 1 when a live reservation was released, 0 when none was, -1 when settled before. Live
-- means still held in a budget: the record's own TTL can outlast the hold by a
-- millisecond (Redis expires a key after its time, `drop_expired` at it), and a hold
-- already dropped as expired counts as expired.
local function settle(record, id, actual, spent_keys, remember_ms)
  local state = redis.call('GET', record)
  if state == 'settled' then return -1 end
  local released = 0
  if state then
    for _, b in ipairs(cjson.decode(state)) do
      local held, amounts = b .. ':held', b .. ':amounts'
      local amount = redis.call('HGET', amounts, 'r:' .. id)
      if amount then
        released = 1
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
  for _, spent in ipairs(spent_keys) do
    if not seen[spent] and redis.call('EXISTS', spent) == 1 then
      redis.call('INCRBY', spent, actual)
    end
    seen[spent] = true
  end
  redis.call('SET', record, 'settled', 'PX', remember_ms)
  return released
end
local function budget_reply(check)
  if check.unseeded then return {-1, unpack(check.unseeded)} end
  if check.refused then return check.refused end
  return {0}
end
"""

# KEYS: one bucket per rule. ARGV: limit, period (us), cost per rule, in order.
# Returns {taken, then per rule: allowed, remaining, reset (us), retry after (us)}.
RATE_CHECK = (
    _LIBRARY
    + """
local r = rates_check(KEYS, numbers(ARGV, 1, #ARGV), now_us())
if r.taken then rates_commit(r) end
return rates_reply(r, r.taken, {r.taken and 1 or 0})
"""
)

# KEYS[1]: the lease record; KEYS[2..]: one slot set per rule. ARGV: lease id, lease TTL
# (ms), then the rules' limits. Returns {0} when taken, or {refused rule (1-based), in use}.
ACQUIRE_SLOTS = (
    _LIBRARY
    + """
local lease, ttl, n = ARGV[1], tonumber(ARGV[2]), #KEYS - 1
local now = math.floor(now_us() / 1000)
local keys = slice(KEYS, 2, n)
local refused = slots_check(lease, keys, numbers(ARGV, 3, n), now)
if refused then return refused end
slots_commit(KEYS[1], lease, keys, ttl, now)
return {0}
"""
)

# KEYS[1]: the lease record; KEYS[2..]: the slot sets this process knows the lease holds.
# ARGV[1]: the lease id. Frees its slots in every set the record or KEYS name.
RELEASE_SLOTS = (
    _LIBRARY
    + """
slots_release(KEYS[1], ARGV[1], slice(KEYS, 2, #KEYS - 1))
return 0
"""
)

# KEYS[1]: the lease record; KEYS[2..]: the lease's slot sets. ARGV: lease id, lease TTL (ms).
# Extends the lease where it still holds a slot (never takes a slot back); returns how many.
RENEW_SLOTS = (
    _LIBRARY
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

# KEYS[1]: the reservation record; then per rule: B:spent, B:held, B:amounts. ARGV: id,
# amount, TTL (ms), then the rules' limits.
# Returns {0} when held (or held or settled before), {-1, unseeded rules (1-based)...} or
# {refused rule (1-based), spent, reserved}.
RESERVE = (
    _LIBRARY
    + """
local id, amount, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), (#KEYS - 1) / 3
local now = math.floor(now_us() / 1000)
local spent_keys = {}
for i = 1, n do spent_keys[i] = KEYS[3 * i - 1] end
local check = budgets_check(KEYS[1], spent_keys, numbers(ARGV, 4, n), amount, now)
if check.unseeded or check.refused then return budget_reply(check) end
budgets_commit(check, KEYS[1], id, amount, ttl, now)
return {0}
"""
)

# KEYS[1]: the reservation record; KEYS[2..]: the B:spent counters to add to. ARGV: id,
# actual amount, how long to remember the settled id (ms).
# Returns 1 when a live reservation was released, 0 when none was, -1 when settled before.
SETTLE = (
    _LIBRARY
    + """
return settle(KEYS[1], ARGV[1], ARGV[2], slice(KEYS, 2, #KEYS - 1), ARGV[3])
"""
)

# KEYS: B:spent, B:held, B:amounts. Returns {spent, reserved}, or nil when unseeded.
BUDGET_STATE = (
    _LIBRARY
    + """
local b = string.sub(KEYS[1], 1, -7)
drop_expired(b, math.floor(now_us() / 1000))
local spent = redis.call('GET', KEYS[1])
if not spent then return nil end
return {tonumber(spent), tonumber(redis.call('HGET', b .. ':amounts', 'total') or 0)}
"""
)

# Rates, slots and a budget reservation for one request: every check, then every commit,
# or nothing at all (a refused request takes no rate unit, no slot, no reservation).
# KEYS: nr rate buckets; the lease record; ns slot sets; the reservation record; nb times
# B:spent, B:held, B:amounts. ARGV: nr, ns, nb, lease id (also the reservation id), lease
# TTL (ms), reservation TTL (ms), amount; then limit, period (us), cost per rate rule; the
# slot limits; the budget limits.
# Returns {status, rate decisions (4 per rule, as RATE_CHECK's), detail}: status 0
# admitted, 1 a rate refused, 2 a slot rule was full (detail: rule, in use), 3 the budget
# refused or is unseeded (detail: RESERVE's reply).
ADMIT = (
    _LIBRARY
    + """
local nr, ns, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, lease_ttl = ARGV[4], tonumber(ARGV[5])
local budget_ttl, amount = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_us()
local now_ms = math.floor(now / 1000)
local lease_record, reservation = KEYS[nr + 1], KEYS[nr + ns + 2]
local slot_keys = slice(KEYS, nr + 2, ns)
local spent_keys = {}
for i = 1, nb do spent_keys[i] = KEYS[nr + ns + 3 * i] end
local rate_args = numbers(ARGV, 8, 3 * nr)
local slot_limits = numbers(ARGV, 8 + 3 * nr, ns)
local budget_limits = numbers(ARGV, 8 + 3 * nr + ns, nb)

local r = rates_check(slice(KEYS, 1, nr), rate_args, now)
if not r.taken then return {1, rates_reply(r, false, {}), {}} end
local full = slots_check(lease, slot_keys, slot_limits, now_ms)
if full then return {2, rates_reply(r, false, {}), full} end
local check = {held = true}
if nb > 0 then
  check = budgets_check(reservation, spent_keys, budget_limits, amount, now_ms)
  if check.unseeded or check.refused then
    return {3, rates_reply(r, false, {}), budget_reply(check)}
  end
end
rates_commit(r)
slots_commit(lease_record, lease, slot_keys, lease_ttl, now_ms)
budgets_commit(check, reservation, lease, amount, budget_ttl, now_ms)
return {0, rates_reply(r, true, {}), {}}
"""
)

# The end of a request: its lease's slots freed and its reservation settled, in one step.
# KEYS: the lease record; ns slot sets this process knows the lease holds; then, when
# settling, the reservation record and the B:spent counters. ARGV: ns, release (1/0),
# settle (1/0), lease id, reservation id, actual amount, how long to remember a settled id
# (ms). Returns SETTLE's answer, or 0 when there was nothing to settle.
FINISH = (
    _LIBRARY
    + """
local ns, release, settling = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3] == '1'
if release then slots_release(KEYS[1], ARGV[4], slice(KEYS, 2, ns)) end
if not settling then return 0 end
local spent_keys = slice(KEYS, ns + 3, #KEYS - ns - 2)
return settle(KEYS[ns + 2], ARGV[5], ARGV[6], spent_keys, ARGV[7])
"""
)
