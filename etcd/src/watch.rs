//! Watches: a task reads the gateway's chunked stream of JSON lines and hands over messages.

use std::fmt;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{Client, Opened, Read};
use crate::error::{EtcdError, Failure, classify};
use crate::types::WatchMessage;
use crate::wire::{StreamLine, WatchResp, WatchStep, decode, excerpt, parse_error};

const PATH: &str = "/v3/watch";

/// A watch started by [`Client::watch`].
///
/// It yields the changes in revision order with [`Watch::next`]. It runs on one member (the one
/// the client last reached; others are tried if it cannot be reached within the timeout), over
/// one HTTP/1.1 connection. When the stream ends ([`Watch::next`] returns `None`: the member went
/// away, or it lost its leader, which ends the stream after an `Err(Unavailable)`), watch again
/// from the revision after the last one seen. Dropping the watch cancels it and closes its
/// connection.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchMessage, EtcdError>>,
    task: JoinHandle<()>,
}

impl Watch {
    pub(crate) fn start(client: Client, body: Bytes) -> Watch {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(client, body, tx));
        Watch { rx, task }
    }

    /// The next message: `Some(Ok(..))` with events or a compaction (after which the watch is
    /// over), `Some(Err(..))` when the watch failed (it is then over too: the next call returns
    /// `None`), or `None` when the stream ended. A watch that cannot reach any member within the
    /// client's timeout yields one `Err(EtcdError::Unavailable)` and then `None`. The message that
    /// etcd sends when the watch is created is not yielded.
    pub async fn next(&mut self) -> Option<Result<WatchMessage, EtcdError>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Dropping the response body in the task closes the connection, which cancels the watch
        // in etcd.
        self.task.abort();
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("finished", &self.task.is_finished()).finish()
    }
}

type Tx = mpsc::Sender<Result<WatchMessage, EtcdError>>;

async fn run(client: Client, body: Bytes, tx: Tx) {
    let Opened { endpoint, mut body, mut buf } = match client.open(PATH, body, true, Read::FirstLine).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let endpoint = client.endpoint(endpoint).to_string();
    loop {
        // A JSON object may span chunks, and a chunk may hold several: split on newlines.
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            if !handle_line(&line, &endpoint, &tx).await {
                return;
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(%endpoint, error = %e, "etcd watch stream broke");
                break;
            }
            None => break,
        }
    }
    // etcd ends an error line without a newline.
    handle_line(&buf, &endpoint, &tx).await;
}

/// Handles one line of the stream; returns whether the watch goes on.
async fn handle_line(line: &[u8], endpoint: &str, tx: &Tx) -> bool {
    let line = line.trim_ascii();
    if line.is_empty() {
        return true;
    }
    if let Some((code, message)) = parse_error(line) {
        let error = match classify(code, &message, &format!("POST {endpoint}{PATH}")) {
            Failure::Unavailable(detail) => EtcdError::Unavailable { endpoints: endpoint.to_string(), detail },
            Failure::Fatal(e) => e,
        };
        let _ = tx.send(Err(error)).await;
        return false;
    }
    let step = decode::<StreamLine<WatchResp>>(line)
        .and_then(|l| l.result.ok_or_else(|| "no result in the line".to_string()))
        .and_then(WatchResp::into_step);
    match step {
        Ok(WatchStep::Skip) => true,
        Ok(WatchStep::Yield(message)) => tx.send(Ok(message)).await.is_ok(),
        Ok(WatchStep::End(Ok(message))) => {
            let _ = tx.send(Ok(message)).await;
            false
        }
        Ok(WatchStep::End(Err(reason))) => {
            let _ = tx.send(Err(EtcdError::Server { code: 1, message: reason })).await;
            false
        }
        Err(e) => {
            let error =
                EtcdError::Protocol(format!("POST {endpoint}{PATH}: cannot decode a line ({e}): {}", excerpt(line)));
            let _ = tx.send(Err(error)).await;
            false
        }
    }
}
