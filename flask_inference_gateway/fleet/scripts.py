"""The Lua scripts that keep admission's slots and fair queue in Redis, atomically.

Keys, under the prefix P (``gw:adm:``):

    P lease:<backend>   zset  lease id -> expiry (ms, Redis clock): slots taken
    P wait:<backend>    zset  ticket id -> tag: requests waiting for that backend
    P alive             zset  ticket id -> expiry: a waiter renews it each poll
    P t:<ticket>        hash  backends (newline-separated), owner (its wake channel), tag
    P grant:<ticket>    str   the backend a released slot was handed to
    P vtime             str   the virtual time: the tag last served
    P last:<caller>     str   the caller's last tag (forgotten after 10 minutes)

A slot is freed by its holder (``release``), or by its lease expiring
(the holder died); either way ``handoff`` gives it to the waiting request
with the lowest tag, and publishes the ticket on its owner's channel.
"""

from __future__ import annotations

COMMON = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop_ticket(id)
  local backends = redis.call('HGET', P .. 't:' .. id, 'backends')
  if backends then
    for b in string.gmatch(backends, '[^\\n]+') do redis.call('ZREM', P .. 'wait:' .. b, id) end
  end
  redis.call('DEL', P .. 't:' .. id)
  redis.call('ZREM', P .. 'alive', id)
end
local function handoff(b, cap, now, ttl)
  local lease = P .. 'lease:' .. b
  local wait = P .. 'wait:' .. b
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  while redis.call('ZCARD', lease) < cap do
    local first = redis.call('ZRANGE', wait, 0, 0, 'WITHSCORES')
    if #first == 0 then return end
    local id, tag = first[1], tonumber(first[2])
    local alive = tonumber(redis.call('ZSCORE', P .. 'alive', id) or '0')
    local owner = redis.call('HGET', P .. 't:' .. id, 'owner')
    redis.call('ZREM', wait, id)
    drop_ticket(id)
    if alive > now and owner then
      redis.call('ZADD', lease, now + ttl, id)
      redis.call('SET', P .. 'grant:' .. id, b, 'PX', ttl)
      if tag > 0 and tag > tonumber(redis.call('GET', P .. 'vtime') or '0') then
        redis.call('SET', P .. 'vtime', tostring(tag))
      end
      redis.call('PUBLISH', owner, id)
    end
  end
end
"""

# ARGV: P, id, caller, weight, priority, cap, ttl, may_queue, owner, backend...
ADMIT = COMMON + """
local id, caller, weight = ARGV[2], ARGV[3], tonumber(ARGV[4])
local priority, cap, ttl = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
for i = 10, #ARGV do
  local b = ARGV[i]
  handoff(b, cap, now, ttl)
  if redis.call('ZCARD', P .. 'lease:' .. b) < cap then
    redis.call('ZADD', P .. 'lease:' .. b, now + ttl, id)
    return {'granted', b}
  end
end
if ARGV[8] ~= '1' then return {'full', ''} end
local last_key = P .. 'last:' .. caller
local vtime = tonumber(redis.call('GET', P .. 'vtime') or '0')
local tag = math.max(vtime, tonumber(redis.call('GET', last_key) or '0')) + 1 / weight
redis.call('SET', last_key, tostring(tag), 'PX', 600000)
if priority then tag = tag - 1e15 end
local list = {}
for i = 10, #ARGV do
  redis.call('ZADD', P .. 'wait:' .. ARGV[i], tag, id)
  list[#list + 1] = ARGV[i]
end
redis.call('HSET', P .. 't:' .. id, 'backends', table.concat(list, '\\n'), 'owner', ARGV[9],
           'tag', tostring(tag))
redis.call('ZADD', P .. 'alive', now + ttl, id)
return {'queued', tostring(tag)}
"""

# ARGV: P, id, cap, ttl, backend... (the request's candidates now)
POLL = COMMON + """
local id, cap, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local grant_key = P .. 'grant:' .. id
local function claimed()
  local granted = redis.call('GET', grant_key)
  if granted then redis.call('DEL', grant_key) end
  return granted
end
local granted = claimed()
if granted then return {'granted', granted} end
local ticket = P .. 't:' .. id
if redis.call('EXISTS', ticket) == 0 then return {'lost', ''} end
local now = now_ms()
redis.call('ZADD', P .. 'alive', 'XX', now + ttl, id)
local tag = redis.call('HGET', ticket, 'tag')
local known = redis.call('HGET', ticket, 'backends')
for i = 5, #ARGV do
  local b = ARGV[i]
  if redis.call('ZADD', P .. 'wait:' .. b, 'NX', tag, id) == 1 then
    known = known .. '\\n' .. b
  end
end
redis.call('HSET', ticket, 'backends', known)
for i = 5, #ARGV do handoff(ARGV[i], cap, now, ttl) end
granted = claimed()
if granted then return {'granted', granted} end
return {'waiting', ''}
"""

# ARGV: P, id
LEAVE = COMMON + """
local grant_key = P .. 'grant:' .. ARGV[2]
local granted = redis.call('GET', grant_key)
redis.call('DEL', grant_key)
drop_ticket(ARGV[2])
return granted
"""

# ARGV: P, id, backend, cap, ttl, reusable
RELEASE = COMMON + """
local removed = redis.call('ZREM', P .. 'lease:' .. ARGV[3], ARGV[2])
if ARGV[6] == '1' then handoff(ARGV[3], tonumber(ARGV[4]), now_ms(), tonumber(ARGV[5])) end
return removed
"""

# ARGV: P, ttl, then backend, id pairs
RENEW = COMMON + """
local expiry = now_ms() + tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV, 2 do
  renewed = renewed + redis.call('ZADD', P .. 'lease:' .. ARGV[i], 'XX', 'CH', expiry, ARGV[i + 1])
end
return renewed
"""
