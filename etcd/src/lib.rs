//! A small async etcd v3 client for Shoal's control plane.
//!
//! # Why the JSON gateway
//!
//! etcd serves its v3 API over gRPC, and also through the official
//! [gRPC gateway](https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/), which maps every RPC to
//! `POST /v3/...` with a JSON body on the same client port. This crate talks to the gateway over
//! HTTP/1.1 with hyper, so building it needs no `protoc`, no tonic and no prost: nothing but the
//! crates the rest of the workspace already uses. The price is JSON encoding and a little more
//! bandwidth, which does not matter for a control plane whose etcd traffic is small (a few objects,
//! a few watches, a lease keep-alive now and then).
//!
//! What the gateway's JSON looks like (etcd 3.4), which the decoding here follows:
//!
//! - keys and values are base64 strings;
//! - 64-bit integers (revisions, lease IDs, counts, TTLs) are JSON strings;
//! - fields with their default value are omitted: `succeeded` is absent when false, `kvs` when empty,
//!   `count` when 0, a watch event's `type` when it is `PUT` (enum value 0), a lease's `TTL` when 0;
//! - errors are a non-200 response with `{"error", "message", "code"}` (a gRPC status code), and
//!   errors inside a stream (watch, keep-alive) are a line `{"error": {"grpc_code", "message", ...}}`;
//! - streams (watch, lease keep-alive) are chunked responses of newline-separated JSON objects, each
//!   `{"result": ...}`.
//!
//! Every key-value and lease request carries the gateway header `Grpc-Metadata-Hasleader: true`
//! (gRPC metadata `hasleader=true`, what etcd's Go client sends with `WithRequireLeader`): a member
//! that has lost its leader then fails requests at once with "etcdserver: no leader", and ends its
//! watch streams, instead of letting requests hang until etcd's own 7 s request timeout and
//! watches stay silent forever.
//!
//! # Endpoints and failures
//!
//! A [`Client`] holds several member endpoints. Requests go to the endpoint that last worked; on a
//! connection error, a timeout, or a server error that means the member cannot serve (no leader,
//! request timed out), the client tries the next endpoints in order, and gives up with
//! [`EtcdError::Unavailable`] naming every endpoint and each one's error. A request that timed out
//! may still have been applied by etcd, so a retried write can be applied twice: write with a
//! [`Txn`] whose compare makes a second application fail (as the control plane does anyway).
//!
//! # Testing
//!
//! [`testing::EtcdCluster`] runs real local etcd members for integration tests.

mod client;
mod error;
mod types;
mod watch;
mod wire;

#[doc(hidden)]
pub mod testing;

pub use client::Client;
pub use error::EtcdError;
pub use types::{
    Compare, CompareResult, CompareTarget, Event, EventKind, KeyValue, Lease, Op, OpResponse, RangeResponse, Status,
    Txn, TxnResponse, WatchMessage,
};
pub use watch::Watch;

/// The `range_end` that selects every key starting with `prefix` (what etcd's Go client calls
/// `GetPrefixRangeEnd`): `prefix` with its last byte that is not `0xff` incremented and everything
/// after it dropped. A prefix of only `0xff` bytes, or an empty prefix, has no such end: the result
/// is `[0]`, which etcd reads as "every key from `key` on".
///
/// ```
/// assert_eq!(shoal_etcd::prefix_end(b"/shoal/"), b"/shoal0".to_vec());
/// assert_eq!(shoal_etcd::prefix_end(b"a\xff"), b"b".to_vec());
/// assert_eq!(shoal_etcd::prefix_end(b""), vec![0]);
/// ```
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/shoal/services/"), b"/shoal/services0".to_vec());
        assert_eq!(prefix_end(b"a"), b"b".to_vec());
        assert_eq!(prefix_end(&[0x00]), vec![0x01]);
        assert_eq!(prefix_end(&[0x61, 0xfe]), vec![0x61, 0xff]);
    }

    #[test]
    fn prefix_end_drops_trailing_ff() {
        assert_eq!(prefix_end(&[0x61, 0xff]), vec![0x62]);
        assert_eq!(prefix_end(&[0x61, 0xff, 0xff]), vec![0x62]);
        assert_eq!(prefix_end(&[0x01, 0xfe, 0xff]), vec![0x01, 0xff]);
    }

    #[test]
    fn prefix_end_without_an_end_is_zero() {
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(&[0xff]), vec![0]);
        assert_eq!(prefix_end(&[0xff, 0xff, 0xff]), vec![0]);
    }
}
