//! The worker pool of one route: a semaphore of invocation slots that the
//! autoscaler ([`scaler`]) resizes.
//!
//! A worker is a permit. Growing adds permits. Shrinking forgets idle
//! permits at once and takes busy ones as they come home, so scale-in never
//! interrupts a running invocation.

pub mod autoscale;
pub mod instances;
pub mod scaler;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A resizable set of worker slots.
#[derive(Debug)]
pub struct WorkerPool {
    sem: Arc<Semaphore>,
    /// The size the pool is heading to.
    target: AtomicUsize,
    /// Busy permits still to forget when they come home.
    debt: AtomicUsize,
    busy: AtomicUsize,
}

/// One busy worker slot; dropping it frees the slot (or retires it).
#[derive(Debug)]
pub struct Worker {
    pool: Arc<WorkerPool>,
    permit: Option<OwnedSemaphorePermit>,
}

impl WorkerPool {
    /// A pool of `size` workers.
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(size)),
            target: AtomicUsize::new(size),
            debt: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    /// Waits for a free worker.
    pub async fn acquire(self: &Arc<Self>) -> Worker {
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("the pool semaphore is never closed");
        self.busy.fetch_add(1, Ordering::Relaxed);
        Worker {
            pool: self.clone(),
            permit: Some(permit),
        }
    }

    /// The number of workers the pool has (or is heading to).
    pub fn size(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }

    /// Workers running an invocation now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Sets the pool size. Idle workers retire at once, busy ones when they
    /// finish.
    pub fn resize(&self, new: usize) {
        let old = self.target.swap(new, Ordering::SeqCst);
        if new > old {
            let mut grow = new - old;
            // Cancel retirements still owed before adding permits.
            while grow > 0 {
                let debt = self.debt.load(Ordering::SeqCst);
                if debt == 0 {
                    break;
                }
                let take = debt.min(grow);
                if self
                    .debt
                    .compare_exchange(debt, debt - take, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    grow -= take;
                }
            }
            self.sem.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let idle = self.sem.forget_permits(shrink);
            self.debt.fetch_add(shrink - idle, Ordering::SeqCst);
        }
    }

    fn release(&self, permit: OwnedSemaphorePermit) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
        let mut debt = self.debt.load(Ordering::SeqCst);
        while debt > 0 {
            match self
                .debt
                .compare_exchange(debt, debt - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    permit.forget();
                    return;
                }
                Err(now) => debt = now,
            }
        }
        drop(permit);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.pool.release(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrinking_waits_for_busy_workers() {
        let pool = WorkerPool::new(2);
        let a = pool.acquire().await;
        let b = pool.acquire().await;
        pool.resize(0);
        assert_eq!(pool.busy(), 2, "scale-in interrupted nobody");
        drop(a);
        drop(b);
        assert_eq!(pool.sem.available_permits(), 0);
        pool.resize(1);
        let _c = pool.acquire().await;
        assert_eq!(pool.sem.available_permits(), 0);
    }

    #[tokio::test]
    async fn growing_cancels_owed_retirements_first() {
        let pool = WorkerPool::new(3);
        let busy = pool.acquire().await;
        pool.resize(0); // two idle forgotten, one owed
        pool.resize(2); // cancels the owed one, adds one
        drop(busy);
        assert_eq!(pool.sem.available_permits(), 2);
        assert_eq!(pool.size(), 2);
    }
}
