//! The gateway's JSON, as it comes over the wire (see the crate documentation for its quirks),
//! and its conversion into the API's types.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::types::{Event, EventKind, KeyValue, OpResponse, RangeResponse, Status, TxnResponse, WatchMessage};

/// Bytes as the gateway wants them: standard base64 with padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .map_err(|e| format!("invalid base64 {s:?}: {e}"))
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(Vec::new()),
        Some(s) => unb64(&s).map_err(de::Error::custom),
    }
}

/// An integer, which proto3 JSON writes as a string when it is 64-bit (and as a number
/// otherwise); `null` is the default.
trait Int: Sized + Default + FromStr + TryFrom<i64> + TryFrom<u64> {}
impl Int for i64 {}
impl Int for u64 {}

struct IntVisitor<T>(PhantomData<T>);

impl<'de, T: Int> Visitor<'de> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, or a string holding one")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|_| E::custom(format!("invalid integer {v:?}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

fn de_int<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(IntVisitor(PhantomData))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Header {
    #[serde(deserialize_with = "de_int")]
    pub revision: i64,
    #[serde(deserialize_with = "de_int")]
    pub member_id: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Kv {
    #[serde(deserialize_with = "de_bytes")]
    key: Vec<u8>,
    #[serde(deserialize_with = "de_bytes")]
    value: Vec<u8>,
    #[serde(deserialize_with = "de_int")]
    create_revision: i64,
    #[serde(deserialize_with = "de_int")]
    mod_revision: i64,
    #[serde(deserialize_with = "de_int")]
    version: i64,
    #[serde(deserialize_with = "de_int")]
    lease: i64,
}

impl From<Kv> for KeyValue {
    fn from(kv: Kv) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

fn kvs(kvs: Option<Vec<Kv>>) -> Vec<KeyValue> {
    kvs.unwrap_or_default().into_iter().map(KeyValue::from).collect()
}

/// `/v3/kv/put`, and `response_put` in a transaction.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PutResp {
    pub header: Option<Header>,
}

impl PutResp {
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map_or(0, |h| h.revision)
    }
}

/// `/v3/kv/range`, and `response_range` in a transaction.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RangeResp {
    header: Option<Header>,
    kvs: Option<Vec<Kv>>,
    #[serde(deserialize_with = "de_int")]
    count: i64,
}

impl RangeResp {
    /// The response, with `revision` when the header carries none.
    pub fn into_api(self, revision: i64) -> RangeResponse {
        let own = self.header.map_or(0, |h| h.revision);
        RangeResponse { revision: if own != 0 { own } else { revision }, kvs: kvs(self.kvs), count: self.count }
    }
}

/// `/v3/kv/deleterange`, and `response_delete_range` in a transaction.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DeleteResp {
    pub header: Option<Header>,
    #[serde(deserialize_with = "de_int")]
    pub deleted: i64,
    prev_kvs: Option<Vec<Kv>>,
}

impl DeleteResp {
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map_or(0, |h| h.revision)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RespOp {
    response_put: Option<PutResp>,
    response_range: Option<RangeResp>,
    response_delete_range: Option<DeleteResp>,
}

/// `/v3/kv/txn`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TxnResp {
    header: Option<Header>,
    succeeded: bool,
    responses: Option<Vec<RespOp>>,
}

impl TxnResp {
    pub fn into_api(self) -> Result<TxnResponse, String> {
        let revision = self.header.map_or(0, |h| h.revision);
        let mut responses = Vec::new();
        for (i, op) in self.responses.unwrap_or_default().into_iter().enumerate() {
            let response = if let Some(r) = op.response_range {
                OpResponse::Range(r.into_api(revision))
            } else if let Some(p) = op.response_put {
                let own = p.revision();
                OpResponse::Put { revision: if own != 0 { own } else { revision } }
            } else if let Some(d) = op.response_delete_range {
                OpResponse::Delete { deleted: d.deleted, prev_kvs: kvs(d.prev_kvs) }
            } else {
                return Err(format!(
                    "transaction response {i} is none of response_put, response_range, response_delete_range"
                ));
            };
            responses.push(response);
        }
        Ok(TxnResponse { succeeded: self.succeeded, revision, responses })
    }
}

/// `/v3/lease/grant`. (etcd's LeaseGrantResponse has an `error` string field too.)
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LeaseGrantResp {
    #[serde(rename = "ID", deserialize_with = "de_int")]
    pub id: i64,
    #[serde(rename = "TTL", deserialize_with = "de_int")]
    pub ttl: i64,
    pub error: String,
}

/// The `result` of `/v3/lease/keepalive`'s one line. A TTL of 0 (so, absent) means the lease is gone.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct KeepAliveResp {
    #[serde(rename = "TTL", deserialize_with = "de_int")]
    pub ttl: i64,
}

/// A line of a gateway stream: `{"result": ...}` or `{"error": {...}}` (errors are taken out
/// before decoding as this; see [`parse_error`]).
#[derive(Debug, Deserialize)]
pub(crate) struct StreamLine<T> {
    pub result: Option<T>,
}

/// `/v3/maintenance/status`. (The gateway keeps the proto's own, camelCase, names for these.)
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StatusResp {
    header: Option<Header>,
    version: String,
    #[serde(deserialize_with = "de_int")]
    leader: u64,
    #[serde(rename = "raftTerm", deserialize_with = "de_int")]
    raft_term: u64,
}

impl From<StatusResp> for Status {
    fn from(s: StatusResp) -> Status {
        let header = s.header.unwrap_or_default();
        Status {
            version: s.version,
            member_id: header.member_id,
            leader: s.leader,
            raft_term: s.raft_term,
            revision: header.revision,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireEvent {
    /// Absent for a put (enum value 0).
    #[serde(rename = "type")]
    kind: Option<String>,
    kv: Option<Kv>,
}

/// The `result` of a line of `/v3/watch`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WatchResp {
    header: Option<Header>,
    canceled: bool,
    #[serde(deserialize_with = "de_int")]
    compact_revision: i64,
    cancel_reason: String,
    events: Option<Vec<WireEvent>>,
}

/// What to do with a line of a watch stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WatchStep {
    /// Nothing to yield (the creation message, a progress notification).
    Skip,
    /// Yield this and go on.
    Yield(WatchMessage),
    /// The watch is over: yield this (a compaction) or, for `Err`, report the cancellation.
    End(Result<WatchMessage, String>),
}

impl WatchResp {
    pub fn into_step(self) -> Result<WatchStep, String> {
        if self.canceled {
            if self.compact_revision > 0 {
                return Ok(WatchStep::End(Ok(WatchMessage::Compacted { compact_revision: self.compact_revision })));
            }
            let reason = if self.cancel_reason.is_empty() { "no reason given".to_string() } else { self.cancel_reason };
            return Ok(WatchStep::End(Err(format!("the watch was canceled by etcd: {reason}"))));
        }
        let events = self.events.unwrap_or_default();
        if events.is_empty() {
            // The "created" message, or a progress notification.
            return Ok(WatchStep::Skip);
        }
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let kind = match e.kind.as_deref() {
                None | Some("PUT") => EventKind::Put,
                Some("DELETE") => EventKind::Delete,
                Some(other) => return Err(format!("unknown watch event type {other:?}")),
            };
            out.push(Event { kind, kv: e.kv.unwrap_or_default().into() });
        }
        let revision = self.header.map_or(0, |h| h.revision);
        Ok(WatchStep::Yield(WatchMessage::Events { revision, events: out }))
    }
}

/// The error an error body or stream line carries, as (gRPC code, message): either the unary form
/// `{"error": "...", "message": "...", "code": 11}` or the stream form `{"error": {"grpc_code": 14,
/// "message": "..."}}`. `None` when the body is not one of these.
pub(crate) fn parse_error(body: &[u8]) -> Option<(i64, String)> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Error {
        Text(String),
        Stream {
            #[serde(default, deserialize_with = "de_int")]
            grpc_code: i64,
            #[serde(default)]
            message: String,
        },
    }
    #[derive(Deserialize)]
    struct Body {
        error: Error,
        #[serde(default)]
        message: String,
        #[serde(default, deserialize_with = "de_int")]
        code: i64,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    Some(match body.error {
        Error::Text(text) => (body.code, if body.message.is_empty() { text } else { body.message }),
        Error::Stream { grpc_code, message } => (grpc_code, message),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// A short, printable excerpt of a body, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = text.trim();
    if body.len() > MAX { format!("{text}...") } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies below are as etcd 3.4.23's gateway sent them.

    #[test]
    fn decodes_range_with_strings_and_omitted_fields() {
        let body = br#"{"header":{"cluster_id":"2572849836766647556","member_id":"3704289084508602062","revision":"4","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"4","version":"3","value":"YmFy"}],"count":"1"}"#;
        let r = decode::<RangeResp>(body).unwrap().into_api(0);
        assert_eq!(r.revision, 4);
        assert_eq!(r.count, 1);
        assert_eq!(
            r.kvs,
            vec![KeyValue {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                create_revision: 2,
                mod_revision: 4,
                version: 3,
                lease: 0
            }]
        );
        // No kvs, no count: an empty range.
        let empty = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"9","raft_term":"2"}}"#;
        let r = decode::<RangeResp>(empty).unwrap().into_api(0);
        assert_eq!((r.revision, r.count, r.kvs.len()), (9, 0, 0));
        // Numbers as numbers are accepted too, and an empty value is absent.
        let r = decode::<RangeResp>(br#"{"header":{"revision":5},"kvs":[{"key":"YQ==","lease":7}],"count":1}"#)
            .unwrap()
            .into_api(0);
        assert_eq!((r.revision, r.count, r.kvs[0].lease, r.kvs[0].value.len()), (5, 1, 7, 0));
        assert!(decode::<RangeResp>(br#"{"count":"x"}"#).is_err());
        assert!(decode::<RangeResp>(br#"{"kvs":[{"key":"!!"}]}"#).is_err());
    }

    #[test]
    fn decodes_txn_without_succeeded() {
        let failed = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"4","raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"4"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"4","version":"3","value":"YmFy"}],"count":"1"}}]}"#;
        let t = decode::<TxnResp>(failed).unwrap().into_api().unwrap();
        assert!(!t.succeeded);
        assert_eq!(t.revision, 4);
        match &t.responses[..] {
            [OpResponse::Range(r)] => assert_eq!((r.count, r.kvs[0].value.as_slice()), (1, b"bar".as_slice())),
            other => panic!("unexpected {other:?}"),
        }
        let ok = br#"{"header":{"revision":"3"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}},{"response_range":{"header":{"revision":"3"}}},{"response_delete_range":{"header":{"revision":"3"},"deleted":"1","prev_kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}]}}]}"#;
        let t = decode::<TxnResp>(ok).unwrap().into_api().unwrap();
        assert!(t.succeeded);
        assert_eq!(t.responses.len(), 3);
        assert_eq!(t.responses[0], OpResponse::Put { revision: 3 });
        assert_eq!(t.responses[1], OpResponse::Range(RangeResponse { revision: 3, kvs: vec![], count: 0 }));
        match &t.responses[2] {
            OpResponse::Delete { deleted: 1, prev_kvs } => assert_eq!(prev_kvs[0].key, b"foo"),
            other => panic!("unexpected {other:?}"),
        }
        // A put response without a header takes the transaction's revision; an unknown one fails.
        let t = decode::<TxnResp>(br#"{"header":{"revision":"8"},"succeeded":true,"responses":[{"response_put":{}}]}"#)
            .unwrap()
            .into_api()
            .unwrap();
        assert_eq!(t.responses, vec![OpResponse::Put { revision: 8 }]);
        assert!(decode::<TxnResp>(br#"{"responses":[{"response_txn":{}}]}"#).unwrap().into_api().is_err());
    }

    #[test]
    fn decodes_watch_events_with_put_as_absent_type() {
        let put = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"6","raft_term":"2"},"events":[{"kv":{"key":"dy9h","create_revision":"6","mod_revision":"6","version":"1","value":"MQ=="}}]}"#;
        let step = decode::<WatchResp>(put).unwrap().into_step().unwrap();
        let expected = WatchMessage::Events {
            revision: 6,
            events: vec![Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: b"w/a".to_vec(),
                    value: b"1".to_vec(),
                    create_revision: 6,
                    mod_revision: 6,
                    version: 1,
                    lease: 0,
                },
            }],
        };
        assert_eq!(step, WatchStep::Yield(expected));

        let delete =
            br#"{"header":{"revision":"7"},"events":[{"type":"DELETE","kv":{"key":"dy9h","mod_revision":"7"}}]}"#;
        match decode::<WatchResp>(delete).unwrap().into_step().unwrap() {
            WatchStep::Yield(WatchMessage::Events { revision: 7, events }) => {
                assert_eq!(events[0].kind, EventKind::Delete);
                assert_eq!((events[0].kv.key.as_slice(), events[0].kv.mod_revision), (b"w/a".as_slice(), 7));
            }
            other => panic!("unexpected {other:?}"),
        }

        let created = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"},"created":true}"#;
        assert_eq!(decode::<WatchResp>(created).unwrap().into_step().unwrap(), WatchStep::Skip);

        let compacted =
            br#"{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"canceled":true,"compact_revision":"6"}"#;
        assert_eq!(
            decode::<WatchResp>(compacted).unwrap().into_step().unwrap(),
            WatchStep::End(Ok(WatchMessage::Compacted { compact_revision: 6 }))
        );
        let canceled = br#"{"canceled":true,"cancel_reason":"boom"}"#;
        match decode::<WatchResp>(canceled).unwrap().into_step().unwrap() {
            WatchStep::End(Err(reason)) => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode::<WatchResp>(br#"{"events":[{"type":"WHAT"}]}"#).unwrap().into_step().is_err());
    }

    #[test]
    fn decodes_leases_and_status() {
        let g =
            decode::<LeaseGrantResp>(br#"{"header":{"revision":"4"},"ID":"9137419016192038158","TTL":"2"}"#).unwrap();
        assert_eq!((g.id, g.ttl, g.error.as_str()), (9137419016192038158, 2, ""));

        let alive = br#"{"result":{"header":{"revision":"4"},"ID":"9137419016192038158","TTL":"5"}}"#;
        assert_eq!(decode::<StreamLine<KeepAliveResp>>(alive).unwrap().result.unwrap().ttl, 5);
        let gone =
            br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"4","raft_term":"2"},"ID":"12345"}}"#;
        assert_eq!(decode::<StreamLine<KeepAliveResp>>(gone).unwrap().result.unwrap().ttl, 0);

        let status = br#"{"header":{"cluster_id":"2572849836766647556","member_id":"3704289084508602062","revision":"7","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"3704289084508602062","raftIndex":"7","raftTerm":"2","raftAppliedIndex":"7","dbSizeInUse":"16384"}"#;
        let s: Status = decode::<StatusResp>(status).unwrap().into();
        assert_eq!(
            s,
            Status {
                version: "3.4.23".into(),
                member_id: 3704289084508602062,
                leader: 3704289084508602062,
                raft_term: 2,
                revision: 7
            }
        );
        // member IDs use all 64 bits
        let s: Status = decode::<StatusResp>(br#"{"header":{"member_id":"18446744073709551615"}}"#).unwrap().into();
        assert_eq!((s.member_id, s.leader), (u64::MAX, 0));
    }

    #[test]
    fn parses_error_bodies() {
        let unary = br#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#;
        assert_eq!(parse_error(unary), Some((11, "etcdserver: mvcc: required revision has been compacted".into())));
        let stream = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert_eq!(parse_error(stream), Some((14, "etcdserver: no leader".into())));
        assert_eq!(parse_error(br#"{"error":"only text"}"#), Some((0, "only text".into())));
        assert_eq!(parse_error(b"Not Found\n"), None);
        assert_eq!(parse_error(br#"{"result":{}}"#), None);
    }

    #[test]
    fn base64_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unb64(&b64(&all)).unwrap(), all);
        assert_eq!(b64(b""), "");
        assert_eq!(unb64("").unwrap(), Vec::<u8>::new());
    }
}
