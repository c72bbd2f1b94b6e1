"""Fair queuing within a model: each tenant (API key) has its own streams, read by weighted deficit round robin,
and a request's ``priority`` orders the jobs inside a tenant (lower first, as in vLLM).

Requests without a key are the default tenant, whose priority-0 jobs stay on the model's one stream
(``{p}:jobs:{model}``): with no key and no priority in use, the read is exactly the single stream's. Every other
(tenant, priority) pair has a stream of its own (``{p}:fair:{model}:{tenant}:{priority}``) in the same consumer
group, listed in the model's registry (``{p}:fairstreams:{model}``) by the script that queues its first job, so the
takeover code (XPENDING, XCLAIM), dead letters and the queue depth work over them as over the model's stream.

The workers read with :data:`FAIR_READ_SCRIPT`, one call per model (all in one pipeline: one round trip): tenants
in a ring, sorted by name; the tenant whose turn it is may take up to its weight in jobs (its lowest priority
first), then the turn passes on, and a tenant with nothing waiting loses the rest of its turn (deficit round robin
with jobs of unit cost). A read that fills its count mid-turn leaves the turn, and what is left of it, in
``{p}:drr:{model}`` for the next read, so the order holds across workers and across reads of one job at a time.
The batch stream is read only when no tenant has an interactive job waiting, as before.
"""

from __future__ import annotations

from broker.decode import text

# vLLM takes any integer; each value a tenant uses is a stream, so the range is bounded.
MIN_PRIORITY = -100
MAX_PRIORITY = 100
MAX_WEIGHT = 100
# The default tenant: requests without a key (or with a key of --api-keys, which has no tenant). No key's name is
# empty (see broker.tenants.Tenant).
DEFAULT_TENANT = ""


def registry_entry(tenant: str, priority: int) -> str:
    """The registry's value for a tenant's stream of one priority (read back by the read script)."""
    return f"{tenant}\t{priority}"


def tenant_of_entry(entry: str | bytes) -> tuple[str, int]:
    """The (tenant, priority) a registry value stands for (the inverse of :func:`registry_entry`)."""
    tenant, _, priority = text(entry).rpartition("\t")
    return tenant, int(priority)


# KEYS[1] the job's stream, KEYS[2] the model's default stream, KEYS[3] the model's registry of tenant streams,
# KEYS[4] its round robin state, KEYS[5] the job's event log (optional).
# ARGV[1] max backlog, ARGV[2] stream maxlen, ARGV[3] the job, ARGV[4] its registry entry ('' for the default
# stream and the batch stream), ARGV[5] the tenant's weight field, ARGV[6] its weight, ARGV[7] the consumer group,
# ARGV[8] the log's meta, ARGV[9] the log's TTL ms.
# Checks the backlog and queues the job in one step, so concurrent requests cannot overfill a queue between the
# check and the XADD: an interactive job's backlog is the model's, every tenant's streams together. Returns the
# backlog it saw, negative (-backlog - 1) when the job was refused. The registry's streams are not in KEYS: they
# share the model's hash tag.
ADMIT_SCRIPT = """
local backlog = redis.call('XLEN', KEYS[1])
local interactive = KEYS[1] == KEYS[2] or ARGV[4] ~= ''
if interactive then
  backlog = redis.call('XLEN', KEYS[2])
  for _, stream in ipairs(redis.call('HKEYS', KEYS[3])) do backlog = backlog + redis.call('XLEN', stream) end
end
if backlog >= tonumber(ARGV[1]) then
  return -backlog - 1
end
if ARGV[4] ~= '' then
  if redis.call('HSET', KEYS[3], KEYS[1], ARGV[4]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then
    redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[7], '0', 'MKSTREAM')
  end
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'job', ARGV[3])
if KEYS[5] then  -- the job's event log, begun with what the front server records (broker/eventlog.py)
  redis.call('XADD', KEYS[5], '0-1', 'meta', ARGV[8])
  redis.call('PEXPIRE', KEYS[5], ARGV[9])
end
return backlog
"""

# KEYS[1] the model's default stream, KEYS[2] its registry of tenant streams, KEYS[3] its round robin state,
# KEYS[4] its batch stream (optional: read only when no interactive job is waiting).
# ARGV[1] group, ARGV[2] consumer, ARGV[3] count.
# Returns {an XREADGROUP reply (fields flat), the registry's streams}. XREADGROUP without BLOCK is allowed in scripts.
FAIR_READ_SCRIPT = """
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
local function read(stream, n)
  local reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', stream, '>')
  if type(reply) == 'table' and reply.err then
    -- Redis lost the stream's group (a restart without its data): make it again, the next read takes its jobs
    if string.find(reply.err, 'NOGROUP') then redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM') end
    return 0
  end
  if not reply then return 0 end
  local entries = reply[1][2]
  if #entries > 0 then out[#out + 1] = {stream, entries} end
  return #entries
end
local registry = redis.call('HGETALL', KEYS[2])
local streams = {}
local taken = 0
if #registry == 0 then
  taken = read(KEYS[1], count)  -- one tenant, one priority: the single stream, as it always was
else
  local tenants, ring = {['']={streams={{0, KEYS[1]}}}}, {''}
  for i = 1, #registry, 2 do
    streams[#streams + 1] = registry[i]
    local name, priority = string.match(registry[i + 1], '^([^\\t]*)\\t(-?%d+)$')
    if not name then name, priority = '', '1000' end  -- an entry it cannot read: still served, last of no key's
    if not tenants[name] then tenants[name] = {streams={}}; ring[#ring + 1] = name end
    local own = tenants[name].streams
    own[#own + 1] = {tonumber(priority), registry[i]}
  end
  table.sort(ring)
  for _, tenant in pairs(tenants) do table.sort(tenant.streams, function(a, b) return a[1] < b[1] end) end
  local state = {}
  local raw = redis.call('HGETALL', KEYS[3])
  for i = 1, #raw, 2 do state[raw[i]] = raw[i + 1] end
  local turn, left, pos = state['turn'] or '', tonumber(state['left'] or '0'), 1
  for i, name in ipairs(ring) do if name == turn then pos = i end end
  local dry = 0  -- tenants in a row that had nothing waiting: a whole ring of them ends the read
  while taken < count and dry < #ring do
    local name = ring[pos]
    if left <= 0 then left = math.max(tonumber(state['w:' .. name] or '1') or 1, 1) end
    local want, got = math.min(left, count - taken), 0
    for _, s in ipairs(tenants[name].streams) do  -- its lowest priority first
      if got >= want then break end
      got = got + read(s[2], want - got)
    end
    taken, left = taken + got, left - got
    if got == want and left > 0 then break end  -- the count is filled mid-turn: the next read goes on with it
    if got == 0 then dry = dry + 1 else dry = 0 end
    left, pos = 0, pos % #ring + 1  -- its turn is over (its quantum taken, or nothing more waiting)
  end
  redis.call('HSET', KEYS[3], 'turn', ring[pos], 'left', left)
end
if taken == 0 and KEYS[4] then read(KEYS[4], count) end
return {out, streams}
"""
