//! The batch loader: results independent of the worker count, exact resumption, error and panic
//! propagation, bounded read-ahead, and clean shutdown when the consumer stops early.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rlip_data::loader::{Batch, LoadError, Loader, LoaderConfig};
use rlip_data::rng::Rng;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("cannot make item {0}")]
struct Bad(usize);

/// An item that depends on its index and generator; odd items take a little longer so that the
/// workers finish out of order.
fn item(i: usize, rng: &mut Rng) -> Result<(usize, u64), Bad> {
    if i % 3 == 1 {
        std::thread::sleep(Duration::from_micros(300));
    }
    Ok((i, rng.next_u64()))
}

fn run<T, E>(loader: &Loader<T, E>, epoch: u64, start: usize) -> Vec<Result<Batch<T>, String>>
where
    T: Send + 'static,
    E: Send + 'static + std::fmt::Display + std::fmt::Debug,
{
    loader
        .epoch(epoch, start)
        .unwrap()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect()
}

fn cfg(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        prefetch: 1,
        ..LoaderConfig::new(batch, workers, 42)
    }
}

#[test]
fn same_batches_for_any_worker_count() {
    for drop_last in [true, false] {
        let mut runs = Vec::new();
        for workers in [0, 1, 2, 3] {
            let c = LoaderConfig {
                drop_last,
                ..cfg(4, workers)
            };
            let l = Loader::new(23, c, item).unwrap();
            runs.push((0..2).map(|e| run(&l, e, 0)).collect::<Vec<_>>());
        }
        assert!(runs.windows(2).all(|w| w[0] == w[1]));
        let epoch0 = &runs[0][0];
        assert_eq!(epoch0.len(), if drop_last { 5 } else { 6 });
        let seen: Vec<usize> = epoch0
            .iter()
            .flat_map(|b| b.as_ref().unwrap().indices.clone())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "no item twice");
        assert_eq!(seen.len(), if drop_last { 20 } else { 23 });
        for b in epoch0 {
            let b = b.as_ref().unwrap();
            for (i, v) in b.indices.iter().zip(&b.items) {
                assert_eq!(v.0, *i, "items are delivered with their index");
                assert_eq!(v.1, Rng::derive(42, 0, *i as u64).next_u64());
            }
        }
        assert_ne!(runs[0][0], runs[0][1], "epochs are shuffled differently");
    }
}

#[test]
fn unshuffled_order_is_the_index_order() {
    let c = LoaderConfig {
        shuffle: false,
        drop_last: false,
        ..cfg(3, 2)
    };
    let l = Loader::new(7, c, item).unwrap();
    assert_eq!(l.order(5), (0..7).collect::<Vec<_>>());
    let idx: Vec<Vec<usize>> = run(&l, 5, 0)
        .into_iter()
        .map(|b| b.unwrap().indices)
        .collect();
    assert_eq!(idx, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
}

#[test]
fn resuming_yields_the_tail_of_a_full_run() {
    for workers in [0, 2] {
        let l = Loader::new(30, cfg(4, workers), item).unwrap();
        let full = run(&l, 3, 0);
        assert_eq!(full.len(), l.num_batches());
        for k in 0..=l.num_batches() {
            assert_eq!(
                run(&l, 3, k),
                full[k..].to_vec(),
                "workers {workers}, batch {k}"
            );
        }
        let mut it = l.epoch(3, 2).unwrap();
        assert_eq!(it.next_batch(), 2);
        it.next();
        assert_eq!(it.next_batch(), 3);
        assert!(matches!(
            l.epoch(3, 8),
            Err(LoadError::StartBeyondEnd {
                start: 8,
                batches: 7
            })
        ));
    }
}

#[test]
fn the_first_failing_item_ends_the_epoch() {
    let bad = 13;
    let producer = move |i: usize, rng: &mut Rng| {
        if i == bad || i == 2 * bad {
            return Err(Bad(i));
        }
        item(i, rng)
    };
    let mut results = Vec::new();
    for workers in [0, 1, 2] {
        let l = Loader::new(40, cfg(4, workers), producer).unwrap();
        let order = l.order(0);
        let first_bad = order
            .iter()
            .position(|&i| i == bad || i == 2 * bad)
            .unwrap();
        let out: Vec<_> = l.epoch(0, 0).unwrap().collect();
        assert_eq!(
            out.len(),
            first_bad / 4 + 1,
            "batches up to the failing one"
        );
        assert!(out[..out.len() - 1].iter().all(|b| b.is_ok()));
        match out.last().unwrap() {
            Err(LoadError::Item {
                index,
                epoch: 0,
                batch,
                source,
            }) => {
                assert_eq!(*index, order[first_bad]);
                assert_eq!(*batch, first_bad / 4);
                assert_eq!(source, &Bad(*index));
                let msg = out.last().unwrap().as_ref().unwrap_err().to_string();
                assert!(msg.contains(&format!("item {index}")), "{msg}");
            }
            other => panic!("expected an item error, got {other:?}"),
        }
        results.push(
            out.into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect::<Vec<_>>(),
        );
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_panicking_producer_is_reported() {
    for workers in [0, 2] {
        let l = Loader::new(
            12,
            cfg(3, workers),
            |i: usize, _: &mut Rng| -> Result<usize, Bad> {
                if i == 5 {
                    panic!("boom at {i}");
                }
                Ok(i)
            },
        )
        .unwrap();
        let out: Vec<_> = l.epoch(1, 0).unwrap().collect();
        match out.last().unwrap() {
            Err(LoadError::Panicked { index, message, .. }) => {
                assert_eq!((*index, message.as_str()), (5, "boom at 5"));
            }
            other => panic!("expected a panic report, got {other:?}"),
        }
    }
}

#[test]
fn read_ahead_is_bounded() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let c = LoaderConfig {
        prefetch: 1,
        ..cfg(4, 3)
    };
    let l = Loader::new(100, c, move |i: usize, _: &mut Rng| -> Result<usize, Bad> {
        s.fetch_add(1, Ordering::SeqCst);
        Ok(i)
    })
    .unwrap();
    let mut it = l.epoch(0, 0).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        started.load(Ordering::SeqCst) <= 8,
        "current batch + 1 prefetched"
    );
    it.next().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let n = started.load(Ordering::SeqCst);
    assert!((4..=12).contains(&n), "{n} items started after one batch");
}

#[test]
fn dropping_the_iterator_early_does_not_hang() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let l = Loader::new(
            200,
            cfg(8, 2),
            |i: usize, _: &mut Rng| -> Result<usize, Bad> {
                std::thread::sleep(Duration::from_millis(1));
                Ok(i)
            },
        )
        .unwrap();
        let mut it = l.epoch(0, 0).unwrap();
        it.next().unwrap().unwrap();
        drop(it);
        // A consumer that stops without taking anything, and one that stops after an error.
        drop(l.epoch(1, 0).unwrap());
        let failing = Loader::new(
            50,
            cfg(2, 2),
            |i: usize, _: &mut Rng| {
                if i == 0 { Err(Bad(i)) } else { Ok(i) }
            },
        )
        .unwrap();
        let mut it = failing.epoch(0, 0).unwrap();
        for r in it.by_ref() {
            if r.is_err() {
                break;
            }
        }
        assert!(it.next().is_none(), "nothing after the error");
        drop(it);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the loader shut down");
}

#[test]
fn zero_batch_size_is_rejected() {
    assert!(matches!(
        Loader::new(3, cfg(0, 1), item),
        Err(LoadError::ZeroBatchSize)
    ));
    let l = Loader::new(0, cfg(2, 2), item).unwrap();
    assert_eq!(run(&l, 0, 0).len(), 0);
}
