//! A live watcher's receiver, woken by a relay on its own thread.
//!
//! A change reaches its watchers through the kind's broadcast channel. If
//! every watcher waited on the channel itself, the cache's task would wake
//! each of them from its own thread: with thousands of watchers spread
//! over the server's arbiters, one cross-thread wake-up (a push to the
//! arbiter's queue and an eventfd write) per watcher per change, and each
//! arbiter would run the woken watchers one by one with its connections'
//! tasks between them (a task woken on its own thread runs first), so a
//! connection wrote to its socket once per watcher instead of once per
//! change.
//!
//! Instead, at most one relay task per thread and channel waits on the
//! channel and wakes that thread's watchers, which wait on its [`Notify`]: a change
//! costs one cross-thread wake-up per thread, the watchers are woken
//! locally all at once, and each connection task runs once after them and
//! sends their events together. Watchers still read their changes from
//! their own receivers (lag and closing are theirs), the relay only says
//! when to look.
//!
//! The relay is one more task to run per change and thread, which pays
//! only for many watchers: a thread's watchers of a channel wait on it
//! themselves (a scheduler's or controller's few watches) until
//! [`RELAY_FROM`] of them have waited there; from then on, until the last
//! of them goes, through the relay (a wait already begun on the channel
//! finishes there).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::{Notify, oneshot};

/// Watchers of one channel that have waited on one thread and are still
/// there, from which a relay wakes them.
const RELAY_FROM: usize = 8;

/// Numbers the channels made in this process: a relay serves one channel.
static CHANNELS: AtomicU64 = AtomicU64::new(0);

/// A new number for a channel.
pub(super) fn channel_id() -> u64 {
    CHANNELS.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// This thread's relays, by channel.
    static RELAYS: RefCell<HashMap<u64, Weak<Relay>>> = RefCell::new(HashMap::new());
}

/// What a thread's watchers of one channel share: they count themselves
/// by holding it, and wait on it once its task has started.
struct Relay {
    /// Notified by the relay's task after each change it receives.
    changed: Notify,
    /// Set when the task starts; dropped with the relay (when its last
    /// watcher goes), which ends the task then, not only at the channel's
    /// next change (a quiet kind whose watches are renewed would otherwise
    /// gather relays).
    started: OnceLock<oneshot::Sender<()>>,
}

impl Relay {
    /// Starts the task that notifies `changed` after each change of `rx`'s
    /// channel, if it has not started. Its receiver starts at the
    /// channel's tail: a change sent before it is found by the watcher's
    /// look after registering (see [`Live::recv`]).
    fn start<T: Clone + Send + 'static>(self: &Arc<Self>, rx: &broadcast::Receiver<T>) {
        self.started.get_or_init(|| {
            let (started, gone) = oneshot::channel();
            tokio::spawn(relay_changes(rx.resubscribe(), Arc::downgrade(self), gone));
            started
        });
    }
}

/// A watcher's end of a kind's live channel (of `Arc<Change<K>>`).
pub struct Live<T> {
    /// This watcher's own place in the channel: the changes it has not
    /// read, its lag, the channel's closing.
    rx: broadcast::Receiver<T>,
    /// The channel `rx` belongs to.
    channel: u64,
    /// The relay of the thread this watcher first waited on (held from
    /// then on, so it counts this watcher).
    relay: Option<Arc<Relay>>,
}

impl<T: Clone + Send + 'static> Live<T> {
    pub(super) fn new(rx: broadcast::Receiver<T>, channel: u64) -> Self {
        Self {
            rx,
            channel,
            relay: None,
        }
    }

    /// The next change, as [`broadcast::Receiver::recv`] (cancel safe).
    ///
    /// # Errors
    /// Lagged when the watcher fell more than the channel's capacity
    /// behind; Closed when the cache restarted.
    pub async fn recv(&mut self) -> Result<T, RecvError> {
        let Self { rx, channel, relay } = self;
        let relay: &Arc<Relay> = relay.get_or_insert_with(|| relay_of_this_thread(*channel));
        // Held by each of its watchers (and nothing else while the relay's
        // task has not started).
        if relay.started.get().is_none() && Arc::strong_count(relay) < RELAY_FROM {
            return rx.recv().await;
        }
        relay.start(rx);
        // Counted against the task's budget as the channel's own `recv`
        // is, so a watcher with changes waiting yields now and then.
        tokio::task::coop::cooperative(async {
            loop {
                // Registered before looking, so a change the relay
                // announces after the look wakes this watcher; one it
                // announced before is found by the look.
                let mut changed = pin!(relay.changed.notified());
                changed.as_mut().enable();
                match rx.try_recv() {
                    Ok(change) => return Ok(change),
                    Err(TryRecvError::Empty) => changed.await,
                    Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                }
            }
        })
        .await
    }

    /// The number of the channel this receiver belongs to.
    pub fn channel(&self) -> u64 {
        self.channel
    }

    /// Whether no change is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// The relay of this thread for `channel`, made (not started) if there is
/// none.
fn relay_of_this_thread(channel: u64) -> Arc<Relay> {
    RELAYS.with(|relays| {
        let mut relays = relays.borrow_mut();
        if let Some(relay) = relays.get(&channel).and_then(Weak::upgrade) {
            return relay;
        }
        relays.retain(|_, relay| relay.strong_count() > 0);
        let relay = Arc::new(Relay {
            changed: Notify::new(),
            started: OnceLock::new(),
        });
        relays.insert(channel, Arc::downgrade(&relay));
        relay
    })
}

/// Wakes the waiting watchers of `relay` after each change until the
/// channel closes (waking them to see it closed) or the relay is dropped
/// with its last watcher (`gone`).
async fn relay_changes<T: Clone + Send + 'static>(
    mut rx: broadcast::Receiver<T>,
    relay: Weak<Relay>,
    mut gone: oneshot::Receiver<()>,
) {
    loop {
        let received = tokio::select! {
            received = rx.recv() => received,
            _ = &mut gone => return,
        };
        let Some(relay) = relay.upgrade() else {
            return;
        };
        relay.changed.notify_waiters();
        if matches!(received, Err(RecvError::Closed)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
