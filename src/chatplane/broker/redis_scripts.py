"""Lua scripts of the Redis job queue; each runs atomically on the `{jobs}` slot.

`CLAIM` (KEYS: queue stream, dead-letter list; ARGV: group, consumer, visibility timeout ms,
max attempts, dead-letter cap, how many stale entries to look at) returns
`{entry id, flat fields, attempt}` or nil. It first walks entries idle for the visibility
timeout (`XPENDING IDLE`): one past the attempt limit moves to the dead-letter list (JSON,
newest first) and leaves the stream; the first other one is `XCLAIM`ed, which counts one more
delivery. With none, it takes a new entry (`XREADGROUP >`, attempt 1).
"""

CLAIM = """
local stream, dead = KEYS[1], KEYS[2]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local max_attempts, dead_cap = tonumber(ARGV[4]), tonumber(ARGV[5])
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', ARGV[6])) do
  local id, owner, deliveries = p[1], p[2], p[4]
  if deliveries >= max_attempts then
    local entry = redis.call('XRANGE', stream, id, id)[1]
    if entry then
      local fields = {}
      for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
      redis.call('LPUSH', dead, cjson.encode({id = id, kind = fields.kind,
        payload = fields.payload, attempt = deliveries,
        reason = 'no ack after ' .. deliveries .. ' attempts (last consumer ' .. owner .. ')'}))
      redis.call('LTRIM', dead, 0, dead_cap - 1)
    end
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  else
    local claimed = redis.call('XCLAIM', stream, group, consumer, min_idle, id)[1]
    if claimed then return {id, claimed[2], deliveries + 1} end
    redis.call('XACK', stream, group, id)
  end
end
local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
if fresh then
  local entry = fresh[1][2][1]
  return {entry[1], entry[2], 1}
end
return false
"""

# Hands a still-held claim to `new_owner` with `idle` ms of idle time (heartbeat: the same
# owner, 0; release: the placeholder, a huge idle time). Returns 0 when the claim is gone.
RENEW = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if p == nil or p[2] ~= ARGV[2] or p[4] ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], 0, ARGV[3], 'IDLE', ARGV[6], 'JUSTID')
return 1
"""

# The queue at a glance in one round trip (KEYS: queue stream; ARGV: group). Returns
# `{depth, age_ms}`: the stream's length (jobs waiting or claimed) and the age, by the Redis
# clock, of the oldest entry the group has not delivered yet (0 when none waits).
STATS = """
local depth = redis.call('XLEN', KEYS[1])
if depth == 0 then return {0, 0} end
local last = '0-0'
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, delivered
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
    end
    if name == ARGV[1] and delivered then last = delivered end
  end
end
local oldest = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
if not oldest then return {depth, 0} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local age = now_ms - tonumber(string.match(oldest[1], '^(%d+)'))
if age < 0 then age = 0 end
return {depth, age}
"""
