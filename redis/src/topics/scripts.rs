//! The Lua scripts of topics: one per operation, each touching only the
//! keys of one topic (one hash tag, so one Redis Cluster slot), and
//! announcing on the topic's channel from inside the script, so that
//! announcements leave in the order the changes were made.
//!
//! Every script gets `KEYS[1]` = the log (a stream, ids `<offset>-0`, one
//! field `m` = the stored message), `KEYS[2]` = the meta hash (`epoch`,
//! `last` offset), `KEYS[3]` = the members hash (member id → `<node id>
//! <info>`). The channel is an argument, `sharded` says whether to
//! `SPUBLISH` (a cluster: the channel has the topic's hash tag, so the
//! script may publish on it) or `PUBLISH` (one server).
//!
//! Frames on the channel: `m<epoch>:<offset>:<stored message>` for a
//! message, `p` for a presence change.

use crate::scripts::Script;

/// Appends a message: the log's epoch (`ARGV[1]`, random, if the log is
/// new: its meta hash is gone, and with it any old entries), the next
/// offset, `XADD` trimmed to about the history, the frame to subscribers,
/// the idle TTL on every key.
///
/// ARGV: epoch if new, stored message, history, ttl ms, channel, sharded.
/// Returns `{epoch, offset}`.
pub(crate) const PUBLISH: &str = r#"
local log, meta, members = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'last', '0')
end
local offset = string.format('%d', redis.call('HINCRBY', meta, 'last', 1))
redis.call('XADD', log, 'MAXLEN', '~', ARGV[3], offset .. '-0', 'm', ARGV[2])
local frame = 'm' .. epoch .. ':' .. offset .. ':' .. ARGV[2]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[5], frame)
else
  redis.call('PUBLISH', ARGV[5], frame)
end
redis.call('PEXPIRE', log, ARGV[4])
redis.call('PEXPIRE', meta, ARGV[4])
redis.call('PEXPIRE', members, ARGV[4])
return {epoch, offset}
"#;

/// Where the log stands and up to `max` messages after `after`. The log
/// may hold a little more than the history (`MAXLEN ~` trims whole
/// stream nodes); older entries than `last - history` are not shown, so
/// that every node sees the same bound.
///
/// ARGV: after, max, history. Returns `{epoch, last, first, entries}`
/// (`{'0', 0, 1, {}}` for a log that does not exist).
pub(crate) const READ: &str = r#"
local v = redis.call('HMGET', KEYS[2], 'epoch', 'last')
if not v[1] then return {'0', 0, 1, {}} end
local last = tonumber(v[2])
local first = last + 1
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if oldest[1] then first = tonumber(string.match(oldest[1][1], '^%d+')) end
local floor = last - tonumber(ARGV[3]) + 1
if first < floor then first = floor end
local entries = {}
local max = tonumber(ARGV[2])
if max > 0 then
  local from = math.max(tonumber(ARGV[1]) + 1, first)
  if from <= last then
    entries = redis.call('XRANGE', KEYS[1], string.format('%d', from), '+', 'COUNT', max)
  end
end
return {v[1], last, first, entries}
"#;

/// Adds or updates a member as this node's, refreshes the idle TTL,
/// announces.
///
/// ARGV: member id, node, info, ttl ms, channel, sharded.
pub(crate) const JOIN: &str = r#"
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[4]) end
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[5], 'p')
else
  redis.call('PUBLISH', ARGV[5], 'p')
end
return 1
"#;

/// Removes a member if this node added it (it may have joined again on
/// another node since: then it is left alone), and announces.
///
/// ARGV: member id, node, channel, sharded. Returns 1 if removed.
pub(crate) const LEAVE: &str = r#"
local v = redis.call('HGET', KEYS[3], ARGV[1])
if not v or string.sub(v, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[4] == '1' then
  redis.call('SPUBLISH', ARGV[3], 'p')
else
  redis.call('PUBLISH', ARGV[3], 'p')
end
return 1
"#;

/// Every member, as `HGETALL` gives them.
pub(crate) const MEMBERS: &str = r#"
return redis.call('HGETALL', KEYS[3])
"#;

/// Removes the members of dead nodes, and announces if there were any.
///
/// ARGV: channel, sharded, dead node ids… Returns how many were removed.
pub(crate) const PRUNE: &str = r#"
local dead = {}
for k = 3, #ARGV do dead[ARGV[k]] = true end
local all = redis.call('HGETALL', KEYS[3])
local removed = 0
for k = 1, #all, 2 do
  local node = string.match(all[k + 1], '^(%S+) ')
  if node and dead[node] then
    redis.call('HDEL', KEYS[3], all[k])
    removed = removed + 1
  end
end
if removed > 0 then
  if ARGV[2] == '1' then
    redis.call('SPUBLISH', ARGV[1], 'p')
  else
    redis.call('PUBLISH', ARGV[1], 'p')
  end
end
return removed
"#;

/// Keeps this node's members: adds back those missing (Redis lost them:
/// a restart without persistence, a failover) without touching a member
/// another node has since, refreshes the idle TTL, announces if any came
/// back.
///
/// ARGV: node, ttl ms, channel, sharded, then member id and info pairs.
/// Returns how many were added back.
pub(crate) const KEEP: &str = r#"
local added = 0
for k = 5, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[3], ARGV[k], ARGV[1] .. ' ' .. ARGV[k + 1])
end
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
if added > 0 then
  if ARGV[4] == '1' then
    redis.call('SPUBLISH', ARGV[3], 'p')
  else
    redis.call('PUBLISH', ARGV[3], 'p')
  end
end
return added
"#;

/// Every topic script, hashed once per store.
#[derive(Clone)]
pub(crate) struct TopicScripts {
    pub(crate) publish: Script,
    pub(crate) read: Script,
    pub(crate) join: Script,
    pub(crate) leave: Script,
    pub(crate) members: Script,
    pub(crate) prune: Script,
    pub(crate) keep: Script,
}

impl TopicScripts {
    pub(crate) fn new() -> Self {
        Self {
            publish: Script::new(PUBLISH),
            read: Script::new(READ),
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            members: Script::new(MEMBERS),
            prune: Script::new(PRUNE),
            keep: Script::new(KEEP),
        }
    }
}
