//! Watch fan-out: committed events go to a tokio broadcast channel; each watcher replays what it
//! missed from the log, then filters the live stream by prefix.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{Event, Revision};

/// The channel committed events are published on (one `Arc` per event, shared by all watchers).
pub(crate) type EventSender = broadcast::Sender<Arc<Event>>;
pub(crate) type EventReceiver = broadcast::Receiver<Arc<Event>>;

/// A stream of events for one prefix. See [`crate::Store::watch`].
pub struct Watcher {
    prefix: String,
    replay: VecDeque<Event>,
    /// Highest revision delivered or covered by the replay; live events at or below it are
    /// duplicates of the replay.
    last: Revision,
    rx: Option<EventReceiver>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("prefix", &self.prefix)
            .field("last", &self.last)
            .field("replay", &self.replay.len())
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// `rx` must have subscribed *before* `replay` was read from the log, so that every event
    /// is either in `replay`, in `rx`, or both (duplicates are dropped by revision).
    pub(crate) fn new(
        prefix: &str,
        after: Revision,
        replay: Vec<Event>,
        rx: Option<EventReceiver>,
    ) -> Watcher {
        let last = replay.last().map_or(after, |e| e.revision().max(after));
        Watcher {
            prefix: prefix.to_owned(),
            replay: replay.into(),
            last,
            rx,
        }
    }

    /// The revision of the last event delivered (or the starting revision).
    pub fn last_revision(&self) -> Revision {
        self.last
    }

    /// The next event. `None` means the store was closed, or this watcher fell more than
    /// `StoreOptions::watch_buffer` events behind; either way the stream is over and the caller
    /// should re-list and watch again from the list's revision.
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(ev) = self.replay.pop_front() {
            return Some(ev);
        }
        loop {
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(ev) => {
                    if ev.revision() <= self.last || !ev.kv.key.starts_with(&self.prefix) {
                        continue;
                    }
                    self.last = ev.revision();
                    return Some(Event::clone(&ev));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        prefix = %self.prefix,
                        missed = n,
                        last_revision = self.last,
                        "watcher fell behind; ending the watch"
                    );
                    self.rx = None;
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }
}
