//! The requests and responses of the client's API.

use serde_json::{Map, Value, json};

use crate::wire::b64;

/// A key and its value, with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a deletion event).
    pub value: Vec<u8>,
    /// The revision of the put that created the key (0 for a deletion event).
    pub create_revision: i64,
    /// The revision of the last change to the key; for a deletion event, the deletion's revision.
    pub mod_revision: i64,
    /// How many times the key was put since it was created (1 after its creation).
    pub version: i64,
    /// The lease the key is attached to, or 0.
    pub lease: i64,
}

/// The result of [`Client::range`](crate::Client::range), or of a range in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The store's revision when the range was served.
    pub revision: i64,
    /// The keys found, in key order.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds.
    pub count: i64,
}

/// A lease granted by [`Client::lease_grant`](crate::Client::lease_grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease ID, to put keys with and keep alive.
    pub id: i64,
    /// The TTL granted in seconds (etcd raises a too short TTL to its minimum, 1.5 election
    /// timeouts, rounded up to a second).
    pub ttl: i64,
}

/// A member's status, from [`Client::status`](crate::Client::status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The etcd version, e.g. "3.4.23".
    pub version: String,
    /// The ID of the member that answered.
    pub member_id: u64,
    /// The ID of the member it believes is the leader, 0 when it knows none.
    pub leader: u64,
    /// The raft term.
    pub raft_term: u64,
    /// The store's revision.
    pub revision: i64,
}

/// How a [`Compare`] compares the key's field with the given value (`field <result> value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// `field == value`
    Equal,
    /// `field != value`
    NotEqual,
    /// `field > value`
    Greater,
    /// `field < value`
    Less,
}

impl CompareResult {
    fn as_str(self) -> &'static str {
        match self {
            CompareResult::Equal => "EQUAL",
            CompareResult::NotEqual => "NOT_EQUAL",
            CompareResult::Greater => "GREATER",
            CompareResult::Less => "LESS",
        }
    }
}

/// Which field of a key a [`Compare`] looks at, and the value to compare it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 when the key does not exist).
    Version(i64),
    /// The key's create revision (0 when the key does not exist).
    CreateRevision(i64),
    /// The key's mod revision (0 when the key does not exist).
    ModRevision(i64),
    /// The key's value (a comparison with a key that does not exist is always false).
    Value(Vec<u8>),
    /// The key's lease (0 when none or when the key does not exist).
    Lease(i64),
}

/// A condition of a [`Txn`]: `key.field <result> value`.
///
/// `Compare::create_revision(key, CompareResult::Equal, 0)` is the usual "the key does not exist"
/// precondition, and `Compare::mod_revision(key, CompareResult::Equal, rev)` the usual "the key has
/// not changed since I read it at `rev`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// How the field compares with the value.
    pub result: CompareResult,
    /// The field and the value.
    pub target: CompareTarget,
}

impl Compare {
    /// Compares the key's mod revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, result: CompareResult, revision: i64) -> Compare {
        Compare { key: key.into(), result, target: CompareTarget::ModRevision(revision) }
    }

    /// Compares the key's create revision (0 means the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, result: CompareResult, revision: i64) -> Compare {
        Compare { key: key.into(), result, target: CompareTarget::CreateRevision(revision) }
    }

    /// Compares the key's version.
    pub fn version(key: impl Into<Vec<u8>>, result: CompareResult, version: i64) -> Compare {
        Compare { key: key.into(), result, target: CompareTarget::Version(version) }
    }

    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, result: CompareResult, value: Vec<u8>) -> Compare {
        Compare { key: key.into(), result, target: CompareTarget::Value(value) }
    }

    /// Compares the key's lease.
    pub fn lease(key: impl Into<Vec<u8>>, result: CompareResult, lease: i64) -> Compare {
        Compare { key: key.into(), result, target: CompareTarget::Lease(lease) }
    }

    pub(crate) fn to_json(&self) -> Value {
        // The compared value is always sent, even when it is 0 or empty: a compare whose value is
        // absent is a different compare to etcd (one that never holds).
        let (target, field, value) = match &self.target {
            CompareTarget::Version(v) => ("VERSION", "version", json!(v.to_string())),
            CompareTarget::CreateRevision(v) => ("CREATE", "create_revision", json!(v.to_string())),
            CompareTarget::ModRevision(v) => ("MOD", "mod_revision", json!(v.to_string())),
            CompareTarget::Value(v) => ("VALUE", "value", json!(b64(v))),
            CompareTarget::Lease(v) => ("LEASE", "lease", json!(v.to_string())),
        };
        let mut o = Map::new();
        o.insert("key".into(), json!(b64(&self.key)));
        o.insert("target".into(), json!(target));
        o.insert("result".into(), json!(self.result.as_str()));
        o.insert(field.into(), value);
        Value::Object(o)
    }
}

/// An operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Puts `value` at `key`, attached to `lease` (0 for none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease, or 0.
        lease: i64,
    },
    /// Deletes `key`, or the keys in `[key, range_end)`; the response carries the deleted keys.
    Delete {
        /// The key, or the start of the range.
        key: Vec<u8>,
        /// The end of the range (exclusive), e.g. from [`prefix_end`](crate::prefix_end).
        range_end: Option<Vec<u8>>,
    },
    /// Reads `key`, or the keys in `[key, range_end)`.
    Range {
        /// The key, or the start of the range.
        key: Vec<u8>,
        /// The end of the range (exclusive), e.g. from [`prefix_end`](crate::prefix_end).
        range_end: Option<Vec<u8>>,
    },
}

impl Op {
    /// A put of `value` at `key` with `lease` (0 for none).
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Op {
        Op::Put { key: key.into(), value: value.into(), lease }
    }

    /// A deletion of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete { key: key.into(), range_end: None }
    }

    /// A deletion of every key with this prefix.
    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Op {
        let key = prefix.into();
        let range_end = Some(crate::prefix_end(&key));
        Op::Delete { key, range_end }
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Op {
        Op::Range { key: key.into(), range_end: None }
    }

    /// A read of every key with this prefix.
    pub fn get_prefix(prefix: impl Into<Vec<u8>>) -> Op {
        let key = prefix.into();
        let range_end = Some(crate::prefix_end(&key));
        Op::Range { key, range_end }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                json!({"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}})
            }
            Op::Delete { key, range_end } => {
                let mut o = key_range(key, range_end.as_deref());
                o.insert("prev_kv".into(), json!(true));
                json!({ "request_delete_range": o })
            }
            Op::Range { key, range_end } => json!({ "request_range": key_range(key, range_end.as_deref()) }),
        }
    }
}

/// `{"key": ..., "range_end": ...}`, without `range_end` when there is none.
pub(crate) fn key_range(key: &[u8], range_end: Option<&[u8]>) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("key".into(), json!(b64(key)));
    if let Some(end) = range_end {
        o.insert("range_end".into(), json!(b64(end)));
    }
    o
}

/// A transaction: if every compare holds, the `success` operations run, else the `failure` ones,
/// atomically at one revision.
///
/// ```
/// use shoal_etcd::{Compare, CompareResult, Op, Txn};
/// // Create the key only if it does not exist; otherwise read what is there.
/// let txn = Txn::new()
///     .when([Compare::create_revision("k", CompareResult::Equal, 0)])
///     .and_then([Op::put("k", "v", 0)])
///     .or_else([Op::get("k")]);
/// assert_eq!(txn.success.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// The operations run when they hold.
    pub success: Vec<Op>,
    /// The operations run when one does not.
    pub failure: Vec<Op>,
}

impl Txn {
    /// An empty transaction (which succeeds and does nothing).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds conditions.
    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Txn {
        self.compare.extend(compare);
        self
    }

    /// Adds operations to run when the conditions hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }

    /// Adds operations to run when a condition does not hold.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "compare": self.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": self.success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": self.failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The result of one [`Op`] of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// The result of an [`Op::Range`].
    Range(RangeResponse),
    /// The result of an [`Op::Put`]: the transaction's revision.
    Put {
        /// The revision of the put.
        revision: i64,
    },
    /// The result of an [`Op::Delete`].
    Delete {
        /// How many keys were deleted.
        deleted: i64,
        /// The keys deleted, as they were before.
        prev_kvs: Vec<KeyValue>,
    },
}

/// The result of [`Client::txn`](crate::Client::txn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and the `success` operations ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// The results of the operations that ran, in order.
    pub responses: Vec<OpResponse>,
}

/// What kind of change an [`Event`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change seen by a [`Watch`](crate::Watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// A put or a delete.
    pub kind: EventKind,
    /// For a put, the key as written. For a delete, `key` is set and `mod_revision` is the
    /// revision of the deletion; the other fields are 0 or empty.
    pub kv: KeyValue,
}

/// What a [`Watch`](crate::Watch) yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order; `revision` is the store's revision when they were sent.
    Events {
        /// The store's revision in the message's header.
        revision: i64,
        /// The changes (never empty).
        events: Vec<Event>,
    },
    /// The watch's start revision has been compacted: the watch is over (the next
    /// [`Watch::next`](crate::Watch::next) returns `None`). Read the current state and watch again
    /// from there.
    Compacted {
        /// The revision the store was compacted at.
        compact_revision: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_always_carry_their_value() {
        let c = Compare::create_revision("k", CompareResult::Equal, 0).to_json();
        assert_eq!(c, json!({"key": "aw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}));
        let c = Compare::value(b"k".as_slice(), CompareResult::NotEqual, vec![]).to_json();
        assert_eq!(c, json!({"key": "aw==", "target": "VALUE", "result": "NOT_EQUAL", "value": ""}));
        let c = Compare::mod_revision("k", CompareResult::Greater, 7).to_json();
        assert_eq!(c, json!({"key": "aw==", "target": "MOD", "result": "GREATER", "mod_revision": "7"}));
        let c = Compare::version("k", CompareResult::Less, 2).to_json();
        assert_eq!(c, json!({"key": "aw==", "target": "VERSION", "result": "LESS", "version": "2"}));
        let c = Compare::lease("k", CompareResult::Equal, -5).to_json();
        assert_eq!(c, json!({"key": "aw==", "target": "LEASE", "result": "EQUAL", "lease": "-5"}));
    }

    #[test]
    fn txn_encodes_ops() {
        let txn = Txn::new()
            .when([Compare::mod_revision("a", CompareResult::Equal, 3)])
            .and_then([Op::put("a", "b", 9), Op::delete_prefix("p/")])
            .or_else([Op::get("a")]);
        assert_eq!(
            txn.to_json(),
            json!({
                "compare": [{"key": "YQ==", "target": "MOD", "result": "EQUAL", "mod_revision": "3"}],
                "success": [
                    {"request_put": {"key": "YQ==", "value": "Yg==", "lease": "9"}},
                    {"request_delete_range": {"key": "cC8=", "range_end": "cDA=", "prev_kv": true}},
                ],
                "failure": [{"request_range": {"key": "YQ=="}}],
            })
        );
    }
}
