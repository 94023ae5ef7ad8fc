//! A single-value channel that wakes its receivers in a fixed order: the subset of
//! `tokio::sync::watch` that Keel uses.
//!
//! tokio's watch spreads its waiters over eight `Notify`s picked by a thread-local RNG that
//! is seeded from a process-wide counter, so which receiver wakes first differs between two
//! runs of one seed in the same process (madsim's determinism check and the test suite do
//! exactly that). This one keeps the value under a mutex, counts versions, and wakes every
//! waiter through one `Notify`, in the order they started waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

struct Shared<T> {
    value: Mutex<T>,
    version: AtomicU64,
    notify: Notify,
    senders: AtomicUsize,
    closed: AtomicBool,
}

/// The sending half; dropping the last one closes the channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving half: sees the latest value and waits for changes it has not seen.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// Every sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvError;

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("watch channel closed")
    }
}

impl std::error::Error for RecvError {}

pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: Mutex::new(init),
        version: AtomicU64::new(0),
        notify: Notify::new(),
        senders: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
    });
    (Sender { shared: shared.clone() }, Receiver { shared, seen: 0 })
}

impl<T> Sender<T> {
    /// Stores a new value and wakes every waiting receiver; returns the old value.
    pub fn send_replace(&self, value: T) -> T {
        let old = std::mem::replace(&mut *self.shared.value.lock().unwrap(), value);
        self.shared.version.fetch_add(1, Ordering::AcqRel);
        self.shared.notify.notify_waiters();
        old
    }

    /// Changes the value in place under the lock; wakes receivers only if `f` says it
    /// changed. Returns what `f` returned.
    pub fn send_if_modified(&self, f: impl FnOnce(&mut T) -> bool) -> bool {
        let changed = f(&mut self.shared.value.lock().unwrap());
        if changed {
            self.shared.version.fetch_add(1, Ordering::AcqRel);
            self.shared.notify.notify_waiters();
        }
        changed
    }

    /// Stores a new value and wakes every waiting receiver (never fails: a value sent with
    /// no receiver is still there for the next `subscribe`).
    pub fn send(&self, value: T) -> Result<(), T> {
        self.send_replace(value);
        Ok(())
    }

    pub fn borrow(&self) -> MutexGuard<'_, T> {
        self.shared.value.lock().unwrap()
    }

    /// A receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        Receiver { shared: self.shared.clone(), seen: self.shared.version.load(Ordering::Acquire) }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Sender { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.closed.store(true, Ordering::Release);
            self.shared.notify.notify_waiters();
        }
    }
}

impl<T> Receiver<T> {
    pub fn borrow(&self) -> MutexGuard<'_, T> {
        self.shared.value.lock().unwrap()
    }

    /// Waits for a value this receiver has not seen, and marks it seen; an error once every
    /// sender is gone (after any unseen value).
    pub async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.shared.version.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(RecvError);
            }
            notified.await;
        }
    }

    /// Waits until the value satisfies `f` (checked first against the current value).
    pub async fn wait_for(&mut self, mut f: impl FnMut(&T) -> bool) -> Result<(), RecvError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.seen = self.shared.version.load(Ordering::Acquire);
            if f(&self.shared.value.lock().unwrap()) {
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(RecvError);
            }
            notified.await;
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver { shared: self.shared.clone(), seen: self.seen }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_sees_each_new_value_once_and_ends_when_senders_go() {
        let (tx, mut rx) = channel(0u8);
        tx.send(1).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
        let waiter = tokio::spawn(async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                seen.push(*rx.borrow());
            }
            seen
        });
        tokio::task::yield_now().await;
        tx.send(2).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiter.await.unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn wait_for_checks_the_current_value_first() {
        let (tx, _) = channel(5u64);
        let mut rx = tx.subscribe();
        rx.wait_for(|v| *v >= 5).await.unwrap();
        let t = tokio::spawn(async move { rx.wait_for(|v| *v >= 9).await });
        tokio::task::yield_now().await;
        tx.send_replace(7);
        tokio::task::yield_now().await;
        assert!(!t.is_finished());
        tx.send_replace(9);
        assert_eq!(t.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn waiters_wake_in_the_order_they_started_waiting() {
        let (tx, rx) = channel(());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (mut rx, order) = (rx.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                rx.changed().await.unwrap();
                order.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..6).collect::<Vec<_>>());
    }
}
