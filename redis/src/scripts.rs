//! The Lua scripts: one per store operation on a session, each touching
//! only the keys of that session (one hash tag, so one Redis Cluster
//! slot), run with `EVALSHA` and sent whole again on `NOSCRIPT` (a Redis
//! restart, a failover or `SCRIPT FLUSH` forgets loaded scripts).
//!
//! Every script gets `KEYS[1]` = the meta hash, `KEYS[2]` = the outbound
//! list, `KEYS[3]` = the inbound list. The meta hash holds:
//!
//! | field | what |
//! |---|---|
//! | `sid`, `ident`, `hdr` | session id, identity (absent: none), kept headers |
//! | `node`, `epoch`, `rel` | owner, fencing epoch, `1` once released |
//! | `opened` | `1` once the `open` greeting went out |
//! | `acked`, `lout` | client acked up to; last outbound sequence number stored |
//! | `recv`, `done`, `cur`, `sends` | last inbound stored; [`Progress`](holdfast_server::store::Progress) |
//! | `cc`, `cr`, `cb` | close code, reason, `1` if the client closed (absent: open) |
//! | `tc` | topic cursors: one line per topic, `<topic> <epoch> <offset>` (absent: none) |
//!
//! The outbound list holds messages `acked + 1 ..= lout`, the inbound list
//! `done + 1 ..= recv`, so trimming is an `LTRIM` by count.

use fred::clients::Client;
use fred::interfaces::LuaInterface as _;
use fred::types::{MultipleKeys, Value};

/// Records a new session at epoch 1. A retry of the same create (same
/// node, same session id, still at epoch 1) succeeds again; any other
/// record under the tag is left alone and reported.
///
/// ARGV: node, ttl ms, session id, has identity (`0`/`1`), identity, headers.
pub(crate) const CREATE: &str = r#"
local m = KEYS[1]
if redis.call('EXISTS', m) == 1 then
  local v = redis.call('HMGET', m, 'node', 'epoch', 'sid')
  if v[1] == ARGV[1] and v[2] == '1' and v[3] == ARGV[3] then return {'OK'} end
  return {'EXISTS'}
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', m, 'sid', ARGV[3], 'hdr', ARGV[6], 'node', ARGV[1], 'epoch', '1', 'rel', '0',
  'opened', '0', 'acked', '0', 'lout', '0', 'recv', '0', 'done', '0', 'cur', '0', 'sends', '0')
if ARGV[4] == '1' then redis.call('HSET', m, 'ident', ARGV[5]) end
redis.call('PEXPIRE', m, ARGV[2])
return {'OK'}
"#;

/// One owner write, all or nothing: every check comes before the first
/// change.
///
/// ARGV: node, epoch, ttl ms, first outbound seq, outbound count, first
/// inbound seq, inbound count, acked (`''`: none), has progress, done,
/// current, sends, opened, has close, code, reason, by client, has
/// cursors, cursors (see `codec::encode_cursors`), then the outbound
/// messages, then the inbound ones.
///
/// Messages at or below the last stored sequence number are skipped: a
/// write retried after its answer was lost applies once. A first sequence
/// number past the next one expected is a gap: refused, nothing changed.
pub(crate) const WRITE: &str = r#"
local m, o, i = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', m, 'node', 'epoch', 'rel', 'acked', 'lout', 'recv', 'done')
if not st[2] then return {'NOTFOUND'} end
if st[1] ~= ARGV[1] or st[2] ~= ARGV[2] or st[3] == '1' then return {'FENCED'} end
local acked, lout, recv, done = tonumber(st[4]), tonumber(st[5]), tonumber(st[6]), tonumber(st[7])
local ofirst, nout = tonumber(ARGV[4]), tonumber(ARGV[5])
local ifirst, nin = tonumber(ARGV[6]), tonumber(ARGV[7])
if nout > 0 and ofirst > lout + 1 then
  return {'GAP', 'outbound message ' .. ofirst .. ' follows ' .. lout}
end
if nin > 0 and ifirst > recv + 1 then
  return {'GAP', 'inbound message ' .. ifirst .. ' follows ' .. recv}
end
local nlout, nrecv = lout, recv
if nout > 0 then nlout = math.max(lout, ofirst + nout - 1) end
if nin > 0 then nrecv = math.max(recv, ifirst + nin - 1) end
local nacked = acked
if ARGV[8] ~= '' then nacked = math.max(acked, tonumber(ARGV[8])) end
if nacked > nlout then
  return {'BAD', 'acked ' .. nacked .. ' is past the last outbound message ' .. nlout}
end
local ndone = done
if ARGV[9] == '1' then
  ndone = math.max(done, tonumber(ARGV[10]))
  if ndone > nrecv then
    return {'BAD', 'progress ' .. ndone .. ' is past the last inbound message ' .. nrecv}
  end
end
local function n(x) return string.format('%d', x) end
local function push(key, first, count, last, base)
  local from = base + (last + 1 - first)
  local to = base + count - 1
  while from <= to do
    local upto = math.min(to, from + 999)
    redis.call('RPUSH', key, unpack(ARGV, from, upto))
    from = upto + 1
  end
end
if nout > 0 then push(o, ofirst, nout, lout, 20) end
if nin > 0 then push(i, ifirst, nin, recv, 20 + nout) end
if nacked > acked then redis.call('LTRIM', o, n(nacked - acked), -1) end
if ndone > done then redis.call('LTRIM', i, n(ndone - done), -1) end
redis.call('HSET', m, 'acked', n(nacked), 'lout', n(nlout), 'recv', n(nrecv), 'done', n(ndone))
if ARGV[9] == '1' then redis.call('HSET', m, 'cur', ARGV[11], 'sends', ARGV[12]) end
if ARGV[13] == '1' then redis.call('HSET', m, 'opened', '1') end
if ARGV[14] == '1' then redis.call('HSET', m, 'cc', ARGV[15], 'cr', ARGV[16], 'cb', ARGV[17]) end
if ARGV[18] == '1' then redis.call('HSET', m, 'tc', ARGV[19]) end
redis.call('PEXPIRE', m, ARGV[3])
redis.call('PEXPIRE', o, ARGV[3])
redis.call('PEXPIRE', i, ARGV[3])
return {'OK'}
"#;

/// Who owns the session: `{}` if none, else `{node, epoch, rel}`.
pub(crate) const OWNER: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'rel')
if not v[2] then return {} end
return v
"#;

/// Compare and set on the owner read before, then the whole state.
///
/// ARGV: expected kind (`node`, `released`, `unknown`), expected node,
/// expected epoch, this node, ttl ms.
pub(crate) const CLAIM: &str = r#"
local m, o, i = KEYS[1], KEYS[2], KEYS[3]
local v = redis.call('HMGET', m, 'node', 'epoch', 'rel')
if not v[2] then return {'NOTFOUND'} end
local kind = 'node'
if v[3] == '1' then kind = 'released' end
if ARGV[1] ~= kind or v[2] ~= ARGV[3] or (kind == 'node' and v[1] ~= ARGV[2]) then
  return {'FENCED'}
end
redis.call('HINCRBY', m, 'epoch', 1)
redis.call('HSET', m, 'node', ARGV[4], 'rel', '0')
redis.call('PEXPIRE', m, ARGV[5])
redis.call('PEXPIRE', o, ARGV[5])
redis.call('PEXPIRE', i, ARGV[5])
return {'OK', redis.call('HGETALL', m), redis.call('LRANGE', o, 0, -1), redis.call('LRANGE', i, 0, -1)}
"#;

/// Marks the session released, if this node holds `epoch`.
///
/// ARGV: node, epoch.
pub(crate) const RELEASE: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'rel')
if not v[2] then return {'NOTFOUND'} end
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] or v[3] == '1' then return {'FENCED'} end
redis.call('HSET', KEYS[1], 'rel', '1')
return {'OK'}
"#;

/// Deletes the session's keys, if this node holds `epoch`.
///
/// ARGV: node, epoch.
pub(crate) const REMOVE: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'rel')
if not v[2] then return {'NOTFOUND'} end
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] or v[3] == '1' then return {'FENCED'} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {'OK'}
"#;

/// Refreshes the TTL of a session this node owns (not released); a
/// session another node took over is left alone.
///
/// ARGV: node, ttl ms.
pub(crate) const TOUCH: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'node', 'rel')
if v[1] ~= ARGV[1] or v[2] == '1' then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"#;

/// A script and its SHA-1, run by hash and sent whole when Redis does not
/// know it.
#[derive(Clone)]
pub(crate) struct Script {
    lua: &'static str,
    sha: String,
}

impl Script {
    pub(crate) fn new(lua: &'static str) -> Self {
        let sha = sha1_smol::Sha1::from(lua).digest().to_string();
        Self { lua, sha }
    }

    /// `EVALSHA`, then `EVAL` (which caches it on that node) on `NOSCRIPT`.
    pub(crate) async fn run(
        &self,
        client: &Client,
        keys: MultipleKeys,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        match client
            .evalsha::<Value, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(error) if error.details().starts_with("NOSCRIPT") => {
                client.eval(self.lua, keys, args).await
            }
            result => result,
        }
    }
}

/// Every script, hashed once per store.
#[derive(Clone)]
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) write: Script,
    pub(crate) owner: Script,
    pub(crate) claim: Script,
    pub(crate) release: Script,
    pub(crate) remove: Script,
    pub(crate) touch: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            create: Script::new(CREATE),
            write: Script::new(WRITE),
            owner: Script::new(OWNER),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            remove: Script::new(REMOVE),
            touch: Script::new(TOUCH),
        }
    }
}
