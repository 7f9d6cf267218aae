//! Events: what happened to services and replicas, newest last, like
//! `kubectl get events`. Kept in memory (the last [`CAPACITY`]); each has a
//! sequence number so that clients can ask for what is new and wait for it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use shoal_api::objects::{Event, EventType, now_unix};
use tokio::sync::watch;

/// Events kept.
pub const CAPACITY: usize = 2000;

/// The event log.
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
    /// The newest sequence number, for waiters.
    latest: watch::Sender<u64>,
    /// Whether events are printed to stdout (`shoal up`'s console) rather
    /// than logged.
    print: bool,
}

impl Default for EventLog {
    fn default() -> Self {
        Self { events: Mutex::new(VecDeque::new()), latest: watch::channel(0).0, print: false }
    }
}

impl EventLog {
    /// An event log that also prints each event to stdout, as
    /// `shoal: <object> <reason>: <message>`.
    pub fn printing() -> Self {
        Self { print: true, ..Self::default() }
    }

    /// Records an event and logs it.
    pub fn record(&self, kind: EventType, object: impl Into<String>, reason: &str, message: impl Into<String>) {
        let (object, message) = (object.into(), message.into());
        if self.print {
            let mark = if kind == EventType::Warning { "WARNING " } else { "" };
            shoal_node::console_println!("shoal: {mark}{object} {reason}: {message}");
        } else {
            match kind {
                EventType::Normal => tracing::info!(%object, reason, "{message}"),
                EventType::Warning => tracing::warn!(%object, reason, "{message}"),
            }
        }
        let mut events = self.events.lock().expect("event lock");
        let seq = events.back().map_or(1, |e| e.seq + 1);
        events.push_back(Event { seq, time_unix: now_unix(), kind, object, reason: reason.to_owned(), message });
        if events.len() > CAPACITY {
            events.pop_front();
        }
        drop(events);
        self.latest.send_replace(seq);
    }

    /// A normal event.
    pub fn normal(&self, object: impl Into<String>, reason: &str, message: impl Into<String>) {
        self.record(EventType::Normal, object, reason, message);
    }

    /// A warning.
    pub fn warning(&self, object: impl Into<String>, reason: &str, message: impl Into<String>) {
        self.record(EventType::Warning, object, reason, message);
    }

    /// Events after `since` whose object is `object`, or, for a replica
    /// filter, starts with it followed by `-` (so `replica/kubia` matches
    /// `replica/kubia-7d5b8c-x2k4p`: the replicas of service kubia).
    pub fn since(&self, since: u64, object: Option<&str>) -> Vec<Event> {
        self.events
            .lock()
            .expect("event lock")
            .iter()
            .filter(|e| e.seq > since && object.is_none_or(|o| matches_object(&e.object, o)))
            .cloned()
            .collect()
    }

    /// Like [`EventLog::since`], waiting up to `wait` for at least one event.
    pub async fn wait_since(&self, since: u64, object: Option<&str>, wait: Duration) -> Vec<Event> {
        let mut latest = self.latest.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let found = self.since(since, object);
            if !found.is_empty() {
                return found;
            }
            if tokio::time::timeout_at(deadline, latest.changed()).await.is_err() {
                return Vec::new();
            }
        }
    }
}

fn matches_object(object: &str, filter: &str) -> bool {
    object == filter
        || (filter.starts_with("replica/") && object.strip_prefix(filter).is_some_and(|rest| rest.starts_with('-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_sequence_and_object() {
        let log = EventLog::default();
        log.normal("service/kubia", "Applied", "created");
        log.warning("replica/kubia-abc123-x2k4p", "BackOff", "exit code 1");
        log.normal("service/kubiax", "Applied", "created");
        log.normal("service/kubia-v2", "Applied", "created");
        assert_eq!(log.since(0, None).len(), 4);
        assert_eq!(log.since(1, None).len(), 3);
        assert_eq!(log.since(0, Some("service/kubia")).len(), 1);
        assert_eq!(log.since(0, Some("replica/kubia")).len(), 1);
    }

    #[tokio::test]
    async fn waits_for_a_new_event() {
        let log = std::sync::Arc::new(EventLog::default());
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.normal("service/a", "Applied", "x");
        });
        let got = log.wait_since(0, None, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1);
        assert!(log.wait_since(1, None, Duration::from_millis(10)).await.is_empty());
    }
}
