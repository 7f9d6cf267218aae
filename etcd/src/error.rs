//! The client's error type, and how the gateway's error bodies map to it.

/// Why an etcd request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// An endpoint given to [`Client::new`](crate::Client::new) is not usable; the message names it.
    #[error("invalid etcd endpoint: {0}")]
    InvalidEndpoint(String),

    /// No endpoint could serve the request: connection errors, timeouts, and server errors that
    /// mean the member has no quorum ("etcdserver: request timed out", "no leader", "leader
    /// changed", gRPC codes 14 Unavailable and 4 DeadlineExceeded). Retrying later may succeed.
    #[error("etcd is unavailable at {endpoints}: {detail}")]
    Unavailable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// What went wrong: each endpoint's error in the order tried (so the last error last),
        /// separated by "; ".
        detail: String,
    },

    /// The revision asked for has been compacted away. etcd's gateway does not say up to which
    /// revision the store was compacted for a range (only for a watch), so `compact_revision` is 0
    /// when unknown.
    #[error("etcd revision has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// The revision the store was compacted at, or 0 when the server did not say.
        compact_revision: i64,
    },

    /// Any other error the server returned, with its gRPC status code (3 InvalidArgument, 5
    /// NotFound, 11 OutOfRange, ...) and message.
    #[error("etcd error (code {code}): {message}")]
    Server {
        /// The gRPC status code.
        code: i64,
        /// etcd's message, e.g. "etcdserver: mvcc: required revision is a future revision".
        message: String,
    },

    /// A response that does not decode; the message names the endpoint and path.
    #[error("unexpected response from etcd: {0}")]
    Protocol(String),
}

/// How one attempt at one endpoint failed: `Unavailable` failures make the client try the next
/// endpoint, `Fatal` ones are returned as they are.
#[derive(Debug)]
pub(crate) enum Failure {
    Unavailable(String),
    Fatal(EtcdError),
}

/// Maps an error the server reported (gRPC status code and message) to a [`Failure`].
pub(crate) fn classify(code: i64, message: &str, context: &str) -> Failure {
    if message.contains("required revision has been compacted") {
        return Failure::Fatal(EtcdError::Compacted { compact_revision: 0 });
    }
    let unavailable = code == 14
        || code == 4
        || ["request timed out", "no leader", "leader changed", "context deadline exceeded", "server stopped"]
            .iter()
            .any(|m| message.contains(m));
    if unavailable {
        Failure::Unavailable(format!("{context}: {message} (code {code})"))
    } else {
        Failure::Fatal(EtcdError::Server { code, message: message.to_string() })
    }
}

/// An error and its sources, joined with ": " (hyper's own messages are terse, e.g. "client error
/// (Connect)", and the useful part, "Connection refused", is in a source).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(f: Failure) -> EtcdError {
        match f {
            Failure::Fatal(e) => e,
            Failure::Unavailable(d) => panic!("expected a fatal error, got unavailable: {d}"),
        }
    }

    fn unavailable(f: Failure) -> String {
        match f {
            Failure::Unavailable(d) => d,
            Failure::Fatal(e) => panic!("expected unavailable, got {e:?}"),
        }
    }

    #[test]
    fn classifies_server_errors() {
        assert_eq!(
            fatal(classify(11, "etcdserver: mvcc: required revision has been compacted", "x")),
            EtcdError::Compacted { compact_revision: 0 }
        );
        assert_eq!(
            fatal(classify(11, "etcdserver: mvcc: required revision is a future revision", "x")),
            EtcdError::Server { code: 11, message: "etcdserver: mvcc: required revision is a future revision".into() }
        );
        assert_eq!(
            fatal(classify(5, "etcdserver: requested lease not found", "x")),
            EtcdError::Server { code: 5, message: "etcdserver: requested lease not found".into() }
        );
        let detail = unavailable(classify(14, "etcdserver: no leader", "POST http://a/v3/kv/put"));
        assert!(detail.contains("POST http://a/v3/kv/put") && detail.contains("no leader"), "{detail}");
        unavailable(classify(14, "etcdserver: request timed out", "x"));
        unavailable(classify(4, "deadline", "x"));
        unavailable(classify(2, "context deadline exceeded", "x"));
        unavailable(classify(2, "etcdserver: leader changed", "x"));
    }

    #[test]
    fn unavailable_message_names_etcd_and_the_endpoints() {
        let e = EtcdError::Unavailable { endpoints: "http://a:1,http://b:2".into(), detail: "refused".into() };
        assert_eq!(e.to_string(), "etcd is unavailable at http://a:1,http://b:2: refused");
    }
}
