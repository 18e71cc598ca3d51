//! A persistent worker pool: `threads - 1` parked threads plus the caller run each layer
//! together, meeting at two barriers per layer. Nothing is allocated per job.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins before sleeping at a barrier: layers take tens of microseconds, and waking a
/// parked thread costs about as much, so short waits spin; long ones (between frames)
/// sleep on a condition variable.
const SPINS: usize = 20_000;

/// A reusable barrier that spins briefly before blocking.
struct Barrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Threads asleep (or about to sleep) on `wake`: the last arriver takes the lock and
    /// notifies only when there are any, so a barrier whose waiters all spun costs no
    /// system call (a futex wake per barrier, two barriers per layer, was a measurable share
    /// of a two-thread inference).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Barrier {
    fn new(parties: usize) -> Barrier {
        Barrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            // SeqCst pairs with the sleeper's SeqCst increment and re-check below: either
            // the sleeper sees the new generation, or this sees it counted and notifies
            // under the lock, which the sleeper holds until it waits.
            self.generation.fetch_add(1, Ordering::SeqCst);
            if self.sleepers.load(Ordering::SeqCst) > 0 {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.wake.notify_all();
            }
            return;
        }
        for _ in 0..SPINS {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while self.generation.load(Ordering::SeqCst) == generation {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The job of one layer: called once per worker with the worker's index.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    start: Barrier,
    end: Barrier,
    /// The current job, lifetime-erased; valid between the two barriers of one `run`.
    job: Mutex<Option<*const Job>>,
    stop: AtomicBool,
}

// SAFETY: the raw job pointer is only dereferenced by workers between the `start` and `end`
// barriers of the `run` call that stored it, while that call keeps the job alive; the job
// itself is `Sync`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// The pool.
pub struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: usize,
}

impl WorkerPool {
    /// A pool of `threads` workers in total, the calling thread being worker 0.
    pub fn new(threads: usize) -> WorkerPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            start: Barrier::new(threads),
            end: Barrier::new(threads),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let handles = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("prom-worker-{index}"))
                    .spawn(move || loop {
                        shared.start.wait();
                        if shared.stop.load(Ordering::Acquire) {
                            break;
                        }
                        let job =
                            shared.job.lock().unwrap_or_else(|e| e.into_inner()).expect("job set");
                        // SAFETY: `run` stored a pointer to a job it keeps alive until every
                        // worker has passed the `end` barrier below.
                        unsafe { (*job)(index) };
                        shared.end.wait();
                    })
                    .expect("spawn worker thread")
            })
            .collect();
        WorkerPool { shared, handles, threads }
    }

    /// Workers in total.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(i)` on every worker `i` and returns when all are done.
    pub fn run<'a>(&self, job: &'a (dyn Fn(usize) + Sync + 'a)) {
        if self.threads == 1 {
            job(0);
            return;
        }
        // SAFETY: erases the job's lifetime to store it; it is dereferenced only until the
        // `end` barrier, before this function returns and `job` can go out of scope.
        let erased: *const Job =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(erased);
        self.shared.start.wait();
        job(0);
        self.shared.end.wait();
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if self.threads > 1 {
            self.shared.stop.store(true, Ordering::Release);
            self.shared.start.wait();
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// Every worker runs every job exactly once, whether the others spun at the barriers
    /// (back-to-back jobs) or fell asleep there (a pause far longer than the spin).
    #[test]
    fn every_worker_runs_every_job_spinning_or_asleep() {
        for threads in [2, 3] {
            let pool = WorkerPool::new(threads);
            let hits: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
            for round in 0..40u64 {
                if round % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(30));
                }
                pool.run(&|w| {
                    hits[w].fetch_add(round + 1, Ordering::Relaxed);
                });
                let expected = (round + 1) * (round + 2) / 2;
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), expected, "round {round}");
                }
            }
        }
    }
}
