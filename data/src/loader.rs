//! A deterministic multi-threaded batch loader.
//!
//! An epoch visits the `n` items in an order shuffled from `(seed, epoch)` and cut into batches
//! (the last, short batch dropped by default, as the official `BatchSampler(drop_last=True)`).
//! Item `i` is produced with its own generator `Rng::derive(seed, epoch, i)`, so every batch is
//! the same whatever the number of worker threads, and an epoch resumed at batch `k` yields
//! exactly the batches `k..` of an uninterrupted run.
//!
//! Workers claim positions in order and run at most `prefetch` batches ahead of the batch being
//! waited for; the consumer reassembles the batches in order. The first failing item (in order)
//! ends the epoch with an error naming it; a panicking producer is reported the same way.
//! Dropping the iterator early stops and joins the workers.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::rng::Rng;

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Items per batch (> 0).
    pub batch_size: usize,
    /// Worker threads; 0 produces the items in the calling thread.
    pub workers: usize,
    /// Batches the workers may prepare beyond the one being waited for.
    pub prefetch: usize,
    /// Seed of the shuffles and of the per-item generators.
    pub seed: u64,
    /// Shuffle every epoch (otherwise items in index order).
    pub shuffle: bool,
    /// Drop the last batch when it is short.
    pub drop_last: bool,
}

impl LoaderConfig {
    /// `batch_size` items, `workers` threads, `seed`; shuffled, last short batch dropped, two
    /// batches of read-ahead.
    pub fn new(batch_size: usize, workers: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            workers,
            prefetch: 2,
            seed,
            shuffle: true,
            drop_last: true,
        }
    }
}

/// Why a batch could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E> {
    /// The batch size is 0.
    #[error("the batch size must be positive")]
    ZeroBatchSize,
    /// Resuming past the end of the epoch.
    #[error("cannot resume at batch {start}: the epoch has {batches} batches")]
    StartBeyondEnd {
        /// Requested first batch.
        start: usize,
        /// Batches per epoch.
        batches: usize,
    },
    /// A worker thread could not be started.
    #[error("cannot start a loader thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The producer failed on an item.
    #[error("item {index} (epoch {epoch}, batch {batch}): {source}")]
    Item {
        /// Item index.
        index: usize,
        /// Epoch.
        epoch: u64,
        /// Batch index within the epoch.
        batch: usize,
        /// The producer's error.
        #[source]
        source: E,
    },
    /// The producer panicked on an item.
    #[error("item {index} (epoch {epoch}, batch {batch}): the producer panicked: {message}")]
    Panicked {
        /// Item index.
        index: usize,
        /// Epoch.
        epoch: u64,
        /// Batch index within the epoch.
        batch: usize,
        /// The panic message.
        message: String,
    },
}

/// One batch: item indices and produced values, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    /// Epoch.
    pub epoch: u64,
    /// Batch index within the epoch.
    pub index: usize,
    /// Item indices.
    pub indices: Vec<usize>,
    /// Produced items.
    pub items: Vec<T>,
}

type Producer<T, E> = dyn Fn(usize, &mut Rng) -> Result<T, E> + Send + Sync;

/// Batches of `n` items made by a producer `Fn(index, &mut Rng) -> Result<T, E>`.
pub struct Loader<T, E> {
    n: usize,
    cfg: LoaderConfig,
    producer: Arc<Producer<T, E>>,
}

impl<T: Send + 'static, E: Send + 'static> Loader<T, E> {
    /// A loader of items `0..n`.
    pub fn new(
        n: usize,
        cfg: LoaderConfig,
        producer: impl Fn(usize, &mut Rng) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, LoadError<E>> {
        if cfg.batch_size == 0 {
            return Err(LoadError::ZeroBatchSize);
        }
        Ok(Loader {
            n,
            cfg,
            producer: Arc::new(producer),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let bs = self.cfg.batch_size;
        if self.cfg.drop_last {
            self.n / bs
        } else {
            self.n.div_ceil(bs)
        }
    }

    /// The item order of `epoch` (shuffled from `Rng::derive(seed, epoch, u64::MAX)`, a stream no
    /// item uses).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n).collect();
        if self.cfg.shuffle {
            Rng::derive(self.cfg.seed, epoch, u64::MAX).shuffle(&mut order);
        }
        order
    }

    /// The batches `start_batch..` of `epoch`, produced by the configured workers.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> Result<Batches<T, E>, LoadError<E>> {
        let batches = self.num_batches();
        if start_batch > batches {
            return Err(LoadError::StartBeyondEnd {
                start: start_batch,
                batches,
            });
        }
        let bs = self.cfg.batch_size;
        let end = (batches * bs).min(self.n);
        let order: Arc<[usize]> = self.order(epoch)[(start_batch * bs).min(end)..end].into();
        let mut it = Batches {
            epoch,
            seed: self.cfg.seed,
            batch_size: bs,
            start_batch,
            next_batch: start_batch,
            order: order.clone(),
            producer: self.producer.clone(),
            pool: None,
            done: false,
        };
        if self.cfg.workers > 0 && !order.is_empty() {
            let shared = Arc::new(Shared {
                state: Mutex::new(State {
                    next: 0,
                    limit: (1 + self.cfg.prefetch) * bs,
                    stop: false,
                }),
                wake: Condvar::new(),
            });
            let (tx, rx) = channel();
            let mut pool = Pool {
                shared,
                rx,
                pending: BTreeMap::new(),
                handles: Vec::new(),
                window: (1 + self.cfg.prefetch) * bs,
            };
            for w in 0..self.cfg.workers {
                let job = Job {
                    order: order.clone(),
                    producer: self.producer.clone(),
                    shared: pool.shared.clone(),
                    tx: tx.clone(),
                    seed: self.cfg.seed,
                    epoch,
                };
                let spawned = std::thread::Builder::new()
                    .name(format!("rlip-loader-{w}"))
                    .spawn(move || job.run());
                match spawned {
                    Ok(h) => pool.handles.push(h),
                    // Dropping `pool` stops and joins the workers already started.
                    Err(e) => return Err(LoadError::Spawn(e)),
                }
            }
            it.pool = Some(pool);
        }
        Ok(it)
    }
}

/// A produced item (or its failure) at a position of the epoch order.
type Produced<T, E> = (usize, Result<T, Failure<E>>);

enum Failure<E> {
    Error(E),
    Panic(String),
}

struct State {
    /// Next position to claim.
    next: usize,
    /// Positions below this may be claimed.
    limit: usize,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn produce<T, E>(
    producer: &Producer<T, E>,
    seed: u64,
    epoch: u64,
    index: usize,
) -> Result<T, Failure<E>> {
    let mut rng = Rng::derive(seed, epoch, index as u64);
    match catch_unwind(AssertUnwindSafe(|| producer(index, &mut rng))) {
        Ok(r) => r.map_err(Failure::Error),
        Err(p) => Err(Failure::Panic(
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into()),
        )),
    }
}

struct Job<T, E> {
    order: Arc<[usize]>,
    producer: Arc<Producer<T, E>>,
    shared: Arc<Shared>,
    tx: Sender<Produced<T, E>>,
    seed: u64,
    epoch: u64,
}

impl<T, E> Job<T, E> {
    fn run(self) {
        loop {
            let pos = {
                let mut st = self.shared.lock();
                while !st.stop && st.next < self.order.len() && st.next >= st.limit {
                    st = self.shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop || st.next >= self.order.len() {
                    return;
                }
                st.next += 1;
                st.next - 1
            };
            let r = produce(&*self.producer, self.seed, self.epoch, self.order[pos]);
            if self.tx.send((pos, r)).is_err() {
                return;
            }
        }
    }
}

struct Pool<T, E> {
    shared: Arc<Shared>,
    rx: Receiver<Produced<T, E>>,
    /// Items received ahead of the position being waited for.
    pending: BTreeMap<usize, Result<T, Failure<E>>>,
    handles: Vec<JoinHandle<()>>,
    /// Positions that may be in flight beyond the consumed ones.
    window: usize,
}

impl<T, E> Pool<T, E> {
    fn take(&mut self, pos: usize) -> Result<T, Failure<E>> {
        loop {
            if let Some(r) = self.pending.remove(&pos) {
                return r;
            }
            match self.rx.recv() {
                Ok((p, r)) => {
                    self.pending.insert(p, r);
                }
                // Unreachable while positions remain (workers catch panics); reported anyway.
                Err(_) => return Err(Failure::Panic("the loader workers exited".into())),
            }
        }
    }

    fn release(&mut self, consumed: usize) {
        self.shared.lock().limit = consumed + self.window;
        self.shared.wake.notify_all();
    }

    fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.pending.clear();
    }
}

impl<T, E> Drop for Pool<T, E> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The batches of one epoch, in order: an iterator of `Result<Batch<T>, LoadError<E>>` that ends
/// after the last batch or after the first error.
pub struct Batches<T, E> {
    epoch: u64,
    seed: u64,
    batch_size: usize,
    start_batch: usize,
    next_batch: usize,
    /// Item indices of the batches `start_batch..`.
    order: Arc<[usize]>,
    producer: Arc<Producer<T, E>>,
    pool: Option<Pool<T, E>>,
    done: bool,
}

impl<T, E> Batches<T, E> {
    /// Index of the batch the next call to `next` returns (for checkpointing: resuming with this
    /// value yields the same remaining batches).
    pub fn next_batch(&self) -> usize {
        self.next_batch
    }
}

impl<T, E> Iterator for Batches<T, E> {
    type Item = Result<Batch<T>, LoadError<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        let bs = self.batch_size;
        let lo = (self.next_batch - self.start_batch) * bs;
        if self.done || lo >= self.order.len() {
            self.done = true;
            return None;
        }
        let hi = (lo + bs).min(self.order.len());
        let (epoch, batch) = (self.epoch, self.next_batch);
        let mut items = Vec::with_capacity(hi - lo);
        for pos in lo..hi {
            let index = self.order[pos];
            let r = match &mut self.pool {
                Some(pool) => pool.take(pos),
                None => produce(&*self.producer, self.seed, epoch, index),
            };
            match r {
                Ok(v) => items.push(v),
                Err(f) => {
                    self.done = true;
                    if let Some(mut pool) = self.pool.take() {
                        pool.stop();
                    }
                    return Some(Err(match f {
                        Failure::Error(source) => LoadError::Item {
                            index,
                            epoch,
                            batch,
                            source,
                        },
                        Failure::Panic(message) => LoadError::Panicked {
                            index,
                            epoch,
                            batch,
                            message,
                        },
                    }));
                }
            }
        }
        if let Some(pool) = &mut self.pool {
            pool.release(hi);
        }
        self.next_batch += 1;
        Some(Ok(Batch {
            epoch,
            index: batch,
            indices: self.order[lo..hi].to_vec(),
            items,
        }))
    }
}
