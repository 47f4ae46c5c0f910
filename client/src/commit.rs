//! Waiting for many writes to commit at the cost of one request per commit advance: a [`CommitFollower`] follows
//! one node's commit with long polls (`GET /node/commit?after_seqno=…&wait_ms=…`) and wakes every waiter whose
//! write the commit has passed. [`Client::wait_for_commit`] asks once per write instead; a client with many writes
//! in flight (a load generator, a batch importer) shares one follower.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::{Error, Result};
use synod_core::txid::{TxId, TxStatus};

/// How long one long poll waits before asking again (well inside the node's 10 s bound).
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
/// Pause after a failed poll (a node restarting), so a refusing node does not turn following into a busy loop.
const FOLLOW_RETRY: Duration = Duration::from_millis(20);

/// Follows one node's commit in a background task; dropping it stops the task.
pub struct CommitFollower {
    client: Client,
    commits: watch::Receiver<Option<TxId>>,
    task: JoinHandle<()>,
}

impl CommitFollower {
    /// Starts following the commit of `client`'s node (within a Tokio runtime).
    pub fn start(client: Client) -> CommitFollower {
        let (tx, commits) = watch::channel(None);
        let poller = client.clone();
        let task = tokio::spawn(async move {
            let mut seen = 0;
            while !tx.is_closed() {
                match poller.commit_after(seen, FOLLOW_WAIT).await {
                    Ok(commit) => {
                        seen = seen.max(commit.seqno);
                        tx.send_if_modified(|last| {
                            let moved = *last != Some(commit);
                            *last = Some(commit);
                            moved
                        });
                    }
                    Err(_) => tokio::time::sleep(FOLLOW_RETRY).await,
                }
            }
        });
        CommitFollower {
            client,
            commits,
            task,
        }
    }

    /// The commit last seen, if any.
    pub fn commit(&self) -> Option<TxId> {
        *self.commits.borrow()
    }

    /// Waits until `tx_id` is Committed (as [`Client::wait_for_commit`]: [`Error::TxInvalid`] if it never can be,
    /// [`Error::CommitTimeout`] after `timeout`).
    pub async fn wait(&self, tx_id: TxId, timeout: Duration) -> Result<TxStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut commits = self.commits.clone();
        loop {
            let current = *commits.borrow_and_update();
            if let Some(commit) = current {
                if commit.seqno >= tx_id.seqno {
                    // A commit in the write's own view covers it: that primary's log held it below the commit.
                    // From a later view the write may have been rolled back: only the node can say.
                    if commit.view == tx_id.view {
                        return Ok(TxStatus::Committed);
                    }
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return self.client.wait_for_commit(tx_id, left).await;
                }
            }
            match tokio::time::timeout_at(deadline, commits.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(Error::CommitTimeout {
                        tx_id,
                        waited: timeout,
                        last_status: None,
                    })
                }
            }
        }
    }
}

impl Drop for CommitFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}
