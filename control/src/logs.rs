//! Replica output: the last lines of every replica, and a feed of new ones
//! for `shoal logs -f`. Lines arrive from the node agent already prefixed
//! with the replica's name (`kubia-7d5b8c-x2k4p | Received request from …`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Lines kept per replica.
pub const LINES_PER_REPLICA: usize = 1000;
// The console's notice of dropped output says how many lines are kept.
const _: () = assert!(LINES_PER_REPLICA == shoal_node::console::LOG_LINES_KEPT);

/// One line of output and the replica it came from.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The replica's name.
    pub replica: Arc<str>,
    /// The line, prefixed with the replica's name, ending in `\n`.
    pub text: Arc<str>,
}

/// Per-replica buffers of recent output and a feed of new lines.
pub struct LogBook {
    buffers: Mutex<HashMap<Arc<str>, VecDeque<Arc<str>>>>,
    feed: broadcast::Sender<LogLine>,
}

impl Default for LogBook {
    fn default() -> Self {
        Self { buffers: Mutex::new(HashMap::new()), feed: broadcast::channel(4096).0 }
    }
}

/// Whether `replica` belongs to `name`: it is the replica, or `name` is its
/// service (replica names are `<service>-<revision>-<suffix>`).
pub fn selects(name: &str, replica: &str) -> bool {
    replica == name || service_of(replica) == Some(name)
}

/// The service part of a replica name.
pub fn service_of(replica: &str) -> Option<&str> {
    let mut parts = replica.rsplitn(3, '-');
    let (_suffix, _revision, service) = (parts.next()?, parts.next()?, parts.next()?);
    Some(service)
}

impl LogBook {
    /// Takes a chunk of whole lines from `replica`.
    pub fn push(&self, replica: &str, chunk: &[u8]) {
        let text = String::from_utf8_lossy(chunk);
        let mut buffers = self.buffers.lock().expect("log lock");
        let key: Arc<str> = match buffers.get_key_value(replica) {
            Some((key, _)) => key.clone(),
            None => replica.into(),
        };
        let buffer = buffers.entry(key.clone()).or_default();
        for line in text.split_inclusive('\n') {
            let line: Arc<str> = line.into();
            buffer.push_back(line.clone());
            if buffer.len() > LINES_PER_REPLICA {
                buffer.pop_front();
            }
            let _ = self.feed.send(LogLine { replica: key.clone(), text: line });
        }
    }

    /// The last `tail` lines (all kept, without a tail) of the replicas
    /// `name` selects, replica by replica in name order.
    pub fn lines(&self, name: &str, tail: Option<usize>) -> Vec<Arc<str>> {
        let buffers = self.buffers.lock().expect("log lock");
        let mut replicas: Vec<&Arc<str>> = buffers.keys().filter(|r| selects(name, r)).collect();
        replicas.sort();
        let mut out = Vec::new();
        for replica in replicas {
            let buffer = &buffers[replica];
            let skip = tail.map_or(0, |t| buffer.len().saturating_sub(t));
            out.extend(buffer.iter().skip(skip).cloned());
        }
        out
    }

    /// Whether any output of a replica `name` selects was seen.
    pub fn knows(&self, name: &str) -> bool {
        self.buffers.lock().expect("log lock").keys().any(|r| selects(name, r))
    }

    /// A feed of new lines from every replica.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.feed.subscribe()
    }

    /// Forgets replicas that are gone and not in `keep`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.buffers.lock().expect("log lock").retain(|replica, _| keep(replica));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_service_or_replica() {
        assert!(selects("kubia", "kubia-7d5b8c-x2k4p"));
        assert!(selects("kubia-7d5b8c-x2k4p", "kubia-7d5b8c-x2k4p"));
        assert!(!selects("kubi", "kubia-7d5b8c-x2k4p"));
        assert!(selects("my-app", "my-app-7d5b8c-x2k4p"));
        assert!(!selects("my", "my-app-7d5b8c-x2k4p"));
    }

    #[test]
    fn keeps_a_tail_per_replica() {
        let book = LogBook::default();
        book.push("a-111111-aaaaa", b"a-111111-aaaaa | one\na-111111-aaaaa | two\n");
        book.push("a-111111-bbbbb", b"a-111111-bbbbb | three\n");
        book.push("b-111111-ccccc", b"b-111111-ccccc | other\n");
        assert_eq!(book.lines("a", None).len(), 3);
        assert_eq!(book.lines("a", Some(1)).len(), 2);
        assert_eq!(&*book.lines("a-111111-bbbbb", None)[0], "a-111111-bbbbb | three\n");
        assert!(book.knows("b"));
        assert!(!book.knows("c"));
    }
}
