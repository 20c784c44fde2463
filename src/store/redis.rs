//! Redis Streams: one stream per shard, keys ready for Redis Cluster.
//!
//! Every key of a shard carries the hash tag `{s<N>}`, so one shard's
//! records, checkpoints and replay results sit in one slot. A batch of
//! records is one `MULTI` over every shard it touches (one Redis; a Redis
//! Cluster would take one `MULTI` per shard, which the hash tags allow).
//! A record is one stream entry whose fields `"0"`, `"1"`, … are its
//! MessagePack pieces of at most 1 MiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{
    decode_result, encode_result, NewRecord, Persistence, ReplayWrite, StoreError, StoredRecord,
};
use crate::config::RedisConfig;
use crate::model::id::RecordId;
use crate::model::replay::ReplayResult;
use crate::model::sync::Checkpoint;

pub struct RedisStore {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    described: String,
    commit_script: Script,
    /// Each write trims its stream to about this many records.
    max_len: Option<u64>,
    /// What `CONFIG GET appendonly`/`save` said last.
    persistence: Mutex<Persistence>,
}

/// How long a command may take once sent. Generous: a write that times out
/// may still have happened, and writing it again would duplicate records.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Moves a checkpoint only forwards, and a rewound one only for a commit
/// that carries its rewind (ARGV[5], "" for none), as `Checkpoint::merge`;
/// returns the stored JSON.
const COMMIT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local c = cjson.decode(cur)
  local rewind = c['rewind']
  if rewind and rewind ~= cjson.null and string.format('%d', rewind) ~= ARGV[5] then
    return cur
  end
  local ms, seq = string.match(c['last_record_id'], '^(%d+)-(%d+)$')
  local cms, cseq, nms, nseq = tonumber(ms), tonumber(seq), tonumber(ARGV[2]), tonumber(ARGV[3])
  if cms > nms or (cms == nms and cseq > nseq) then
    return cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return ARGV[4]
"#;

impl RedisStore {
    /// Builds the pool without connecting: a node starts while Redis is down
    /// and connects when it comes.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.as_str())?;
        let connect_timeout = Duration::from_secs(config.connection_timeout.max(1));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(config.retry_count)
            .set_max_delay(Duration::from_secs(2));
        let pool = (0..config.pool_size.max(1))
            .map(|_| {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let described = format!("redis {}", client.get_connection_info().addr());
        Ok(RedisStore {
            client,
            manager_config,
            pool,
            next: AtomicUsize::new(0),
            prefix: config.key_prefix.clone(),
            described,
            commit_script: Script::new(COMMIT_LUA),
            max_len: None,
            persistence: Mutex::new(Persistence::Unknown),
        })
    }

    /// Keeps each record stream near `max_len` records as it is written
    /// (`XADD … MAXLEN ~`: Redis drops whole old nodes, so a stream holds
    /// up to a node's worth more; `trim` cuts it exactly). Without this a
    /// busy stream grows for a whole retention period and trimming it then
    /// stalls Redis while it frees millions of entries.
    pub fn with_max_len(mut self, max_len: Option<u64>) -> RedisStore {
        self.max_len = max_len.filter(|&n| n > 0);
        self
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    fn key(&self, shard: u32, what: &str) -> String {
        format!("{}:{{s{}}}:{}", self.prefix, shard, what)
    }
}

impl RedisStore {
    /// A parked record: a list of its MessagePack pieces.
    fn parked_key(&self, shard: u32, id: RecordId) -> String {
        self.key(shard, &format!("parked:{id}"))
    }
}

fn parse_id(shard: u32, id: &str) -> Result<RecordId, StoreError> {
    id.parse()
        .map_err(|e: crate::model::id::BadRecordId| StoreError::Corrupt {
            shard,
            id: RecordId::ZERO,
            message: e.to_string(),
        })
}

/// Parses an `XRANGE`/`XREVRANGE` reply into (id, fields in order).
fn parse_entries(shard: u32, reply: Value) -> Result<Vec<(RecordId, Vec<Bytes>)>, StoreError> {
    let corrupt = |message: &str| StoreError::Corrupt {
        shard,
        id: RecordId::ZERO,
        message: message.to_string(),
    };
    let Value::Array(entries) = reply else {
        return Err(corrupt("XRANGE did not answer an array"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut pair) = entry else {
            return Err(corrupt("stream entry is not an array"));
        };
        if pair.len() != 2 {
            return Err(corrupt("stream entry is not [id, fields]"));
        }
        let fields = pair.pop().expect("two items");
        let id = match pair.pop().expect("two items") {
            Value::BulkString(b) => parse_id(shard, &String::from_utf8_lossy(&b))?,
            Value::SimpleString(s) => parse_id(shard, &s)?,
            _ => return Err(corrupt("stream id is not a string")),
        };
        let Value::Array(fields) = fields else {
            return Err(corrupt("stream fields are not an array"));
        };
        let mut pieces: Vec<(usize, Bytes)> = Vec::with_capacity(fields.len() / 2);
        let mut it = fields.into_iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            let index = match name {
                Value::BulkString(b) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()),
                _ => None,
            };
            let (Some(index), Value::BulkString(value)) = (index, value) else {
                return Err(StoreError::Corrupt {
                    shard,
                    id,
                    message: "stream field is not a piece".into(),
                });
            };
            pieces.push((index, Bytes::from(value)));
        }
        pieces.sort_by_key(|(i, _)| *i);
        out.push((id, pieces.into_iter().map(|(_, p)| p).collect()));
    }
    Ok(out)
}

#[async_trait]
impl super::Store for RedisStore {
    fn dedicated(&self) -> Option<std::sync::Arc<dyn super::Store>> {
        let manager = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.manager_config.clone(),
        )
        .ok()?;
        Some(std::sync::Arc::new(RedisStore {
            client: self.client.clone(),
            manager_config: self.manager_config.clone(),
            pool: vec![manager],
            next: AtomicUsize::new(0),
            prefix: self.prefix.clone(),
            described: self.described.clone(),
            commit_script: self.commit_script.clone(),
            max_len: self.max_len,
            persistence: Mutex::new(Persistence::Unknown),
        }))
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    fn persistence(&self) -> Option<Persistence> {
        Some(*self.persistence.lock().expect("persistence lock"))
    }

    async fn check_persistence(&self) -> Result<Option<Persistence>, StoreError> {
        let mut conn = self.conn();
        let mut setting = async |name: &str| -> Result<Option<String>, redis::RedisError> {
            let reply: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(mut values) => Ok(values.remove(name)),
                // The server answered with an error: it will not say.
                Err(e) if e.code().is_some() => Ok(None),
                Err(e) => Err(e),
            }
        };
        let appendonly = setting("appendonly").await?;
        let save = setting("save").await?;
        let seen = match (appendonly, save) {
            (Some(appendonly), Some(save)) => Persistence::of_redis(&appendonly, &save),
            _ => Persistence::Unknown,
        };
        *self.persistence.lock().expect("persistence lock") = seen;
        Ok(Some(seen))
    }

    async fn append(&self, records: &[NewRecord]) -> Result<Vec<RecordId>, StoreError> {
        // One MULTI for the whole batch: one round trip, all or nothing
        // (so writing it again after an error cannot duplicate records).
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut key = String::new();
        let mut key_shard = None;
        for record in records {
            if key_shard != Some(record.shard) {
                key = self.key(record.shard, "records");
                key_shard = Some(record.shard);
            }
            let cmd = pipe.cmd("XADD").arg(&key);
            if let Some(max_len) = self.max_len {
                cmd.arg("MAXLEN").arg("~").arg(max_len);
            }
            cmd.arg("*");
            for (n, piece) in record.pieces.iter().enumerate() {
                cmd.arg(n).arg(piece.as_ref());
            }
        }
        let assigned: Vec<String> = pipe.query_async(&mut self.conn()).await?;
        records
            .iter()
            .zip(assigned)
            .map(|(record, id)| parse_id(record.shard, &id))
            .collect()
    }

    async fn read(
        &self,
        shard: u32,
        from: RecordId,
        to: RecordId,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.key(shard, "records"))
            .arg(from.to_string())
            .arg(if to == RecordId::MAX {
                "+".to_string()
            } else {
                to.to_string()
            })
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        Ok(parse_entries(shard, reply)?
            .into_iter()
            .map(|(id, pieces)| StoredRecord { shard, id, pieces })
            .collect())
    }

    async fn len(&self, shard: u32) -> Result<u64, StoreError> {
        let n: u64 = redis::cmd("XLEN")
            .arg(self.key(shard, "records"))
            .query_async(&mut self.conn())
            .await?;
        Ok(n)
    }

    async fn last_id(&self, shard: u32) -> Result<Option<RecordId>, StoreError> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(self.key(shard, "records"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        Ok(parse_entries(shard, reply)?.first().map(|(id, _)| *id))
    }

    async fn trim(
        &self,
        shard: u32,
        min_id: Option<RecordId>,
        max_len: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = self.key(shard, "records");
        let mut pipe = redis::pipe();
        if let Some(min_id) = min_id {
            pipe.cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg(min_id.to_string())
                .ignore();
        }
        if let Some(max_len) = max_len {
            pipe.cmd("XTRIM")
                .arg(&key)
                .arg("MAXLEN")
                .arg(max_len)
                .ignore();
        }
        let () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn checkpoint(&self, peer: &str, shard: u32) -> Result<Option<Checkpoint>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.key(shard, "checkpoints"))
            .arg(peer)
            .query_async(&mut self.conn())
            .await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn checkpoints(&self, shards: u32) -> Result<Vec<Checkpoint>, StoreError> {
        let mut pipe = redis::pipe();
        for shard in 0..shards {
            pipe.cmd("HVALS").arg(self.key(shard, "checkpoints"));
        }
        let all: Vec<Vec<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(all
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect())
    }

    async fn commit(&self, checkpoint: Checkpoint) -> Result<Checkpoint, StoreError> {
        let seen = checkpoint.rewind.map_or(String::new(), |r| r.to_string());
        // What is stored when the commit moves it.
        let moved = Checkpoint {
            rewind: None,
            ..checkpoint
        };
        let json = serde_json::to_string(&moved).expect("checkpoints always encode");
        let stored: String = self
            .commit_script
            .key(self.key(moved.shard, "checkpoints"))
            .arg(&moved.peer_id)
            .arg(moved.last_record_id.ms)
            .arg(moved.last_record_id.seq)
            .arg(json)
            .arg(seen)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(serde_json::from_str(&stored).unwrap_or(moved))
    }

    async fn set_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        let json = serde_json::to_string(&checkpoint).expect("checkpoints always encode");
        let _added: i64 = redis::cmd("HSET")
            .arg(self.key(checkpoint.shard, "checkpoints"))
            .arg(&checkpoint.peer_id)
            .arg(json)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn forget_peer(&self, peer: &str, shards: u32) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for shard in 0..shards {
            pipe.cmd("HDEL")
                .arg(self.key(shard, "checkpoints"))
                .arg(peer)
                .ignore();
        }
        let () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn save_replays(&self, write: ReplayWrite<'_>) -> Result<(), StoreError> {
        let shard = write.shard;
        let key = self.key(shard, "replays");
        let mut pipe = redis::pipe();
        pipe.atomic();
        for result in write.results {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg(write.keep.max(1))
                .arg("*")
                .arg("r")
                .arg(encode_result(result))
                .ignore();
        }
        let parked = self.key(shard, "parked");
        for p in write.park {
            let id = p.result.record_id;
            pipe.cmd("HSET")
                .arg(&parked)
                .arg(id.to_string())
                .arg(encode_result(&p.result))
                .ignore();
            let record = self.parked_key(shard, id);
            pipe.cmd("DEL").arg(&record).ignore();
            let mut push = redis::cmd("RPUSH");
            push.arg(&record);
            for piece in &p.pieces {
                push.arg(piece.as_ref());
            }
            pipe.add_command(push).ignore();
        }
        for id in write.unpark {
            pipe.cmd("HDEL").arg(&parked).arg(id.to_string()).ignore();
            pipe.cmd("DEL").arg(self.parked_key(shard, *id)).ignore();
        }
        if let Some(upto) = write.upto {
            pipe.cmd("HSET")
                .arg(self.key(shard, "replayed"))
                .arg(write.peer)
                .arg(upto.to_string())
                .ignore();
        }
        let () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn replayed_upto(&self, peer: &str, shard: u32) -> Result<Option<RecordId>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.key(shard, "replayed"))
            .arg(peer)
            .query_async(&mut self.conn())
            .await?;
        raw.map(|s| parse_id(shard, &s)).transpose()
    }

    async fn replays(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(self.key(shard, "replays"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        Ok(parse_replays(reply))
    }

    async fn parked(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.key(shard, "parked"))
            .query_async(&mut self.conn())
            .await?;
        let mut parked: Vec<ReplayResult> = all
            .iter()
            .filter_map(|(_, value)| decode_result(value))
            .collect();
        parked.sort_by_key(|r| r.record_id);
        parked.truncate(limit);
        Ok(parked)
    }

    async fn parked_record(
        &self,
        shard: u32,
        id: RecordId,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let pieces: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(self.parked_key(shard, id))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?;
        Ok((!pieces.is_empty()).then(|| StoredRecord {
            shard,
            id,
            pieces: pieces.into_iter().map(Bytes::from).collect(),
        }))
    }

    async fn parked_count(&self, shard: u32) -> Result<u64, StoreError> {
        Ok(redis::cmd("HLEN")
            .arg(self.key(shard, "parked"))
            .query_async(&mut self.conn())
            .await?)
    }
}

fn parse_replays(reply: Value) -> Vec<ReplayResult> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| match entry {
            Value::Array(mut pair) if pair.len() == 2 => match pair.pop() {
                Some(Value::Array(fields)) => fields.into_iter().nth(1),
                _ => None,
            },
            _ => None,
        })
        .filter_map(|value| match value {
            Value::BulkString(b) => decode_result(&b),
            _ => None,
        })
        .collect()
}
