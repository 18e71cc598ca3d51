//! A persistent worker pool: `threads - 1` parked threads plus the caller run each layer
//! together. Per job the caller publishes it with one store and waits for one counter; each
//! worker sees the store and bumps the counter. Nothing is allocated per job.
//!
//! A panic inside a job never leaves a thread waiting: every worker catches its own and
//! still reports done, a [`SpinBarrier`] can be poisoned so that parties waiting for one
//! that will never arrive panic too, and [`WorkerPool::run`] waits for every worker (they
//! borrow the job) before it passes the panic on to its caller.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins before a worker sleeps waiting for the next job: layers take tens of microseconds
/// and waking a parked thread costs about as much, so the short gaps between the layers of a
/// frame spin; long ones (between frames) sleep on a condition variable.
const SPINS: usize = 20_000;
/// Spins before the caller, waiting for the workers to finish a job, yields its core (a
/// worker that was descheduled mid-job must get to run).
const DONE_SPINS: usize = 1_000;

/// Waits until `done()` holds: spinning `spins` times, then yielding the core between checks
/// (so a thread that was descheduled gets to run).
fn spin_until(spins: usize, done: impl Fn() -> bool) {
    for _ in 0..spins {
        if done() {
            return;
        }
        std::hint::spin_loop();
    }
    while !done() {
        std::thread::yield_now();
    }
}

/// A barrier for the workers of one job (the layers of an inference): all spin, since the
/// others arrive within microseconds; after a while a waiter yields its core, so a worker
/// that was descheduled gets to run.
pub struct SpinBarrier {
    parties: usize,
    /// Arrivals in the current generation and the generation, on one cache line: an
    /// arrival is one read-modify-write of it, a release one more store.
    state: Line<(AtomicUsize, AtomicUsize)>,
    /// Set when a party panicked and will not arrive: waiters then panic instead of waiting.
    poisoned: AtomicBool,
}

impl SpinBarrier {
    /// A barrier for `parties` threads.
    pub fn new(parties: usize) -> SpinBarrier {
        SpinBarrier {
            parties: parties.max(1),
            state: Line((AtomicUsize::new(0), AtomicUsize::new(0))),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Marks the barrier broken: a party panicked. Every current and later `wait` panics
    /// until [`reset`](SpinBarrier::reset).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Clears arrivals and poisoning, for a new job once no party is waiting (the
    /// exclusive borrow proves it).
    pub fn reset(&mut self) {
        *self.state.0 .0.get_mut() = 0;
        *self.poisoned.get_mut() = false;
    }

    /// Returns once all parties have called `wait` (for this generation). Everything a
    /// party wrote before it arrived is visible to every party after it returns.
    ///
    /// # Panics
    /// If the barrier is or becomes poisoned while waiting.
    pub fn wait(&self) {
        if self.parties == 1 {
            return;
        }
        let (arrived, generation) = &self.state.0;
        let current = generation.load(Ordering::Acquire);
        // AcqRel: the last arriver acquires every earlier arrival's writes, and its release
        // of the generation below passes them on to the waiters.
        if arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            arrived.store(0, Ordering::Relaxed);
            generation.fetch_add(1, Ordering::Release);
            return;
        }
        let poisoned = || self.poisoned.load(Ordering::Acquire);
        spin_until(SPINS, || generation.load(Ordering::Acquire) != current || poisoned());
        if generation.load(Ordering::Acquire) == current {
            panic!("another worker of this job panicked");
        }
    }
}

/// The job of one layer: called once per worker with the worker's index.
type Job = dyn Fn(usize) + Sync;

/// Keeps the two counters written by different sides on their own cache lines.
#[repr(align(128))]
struct Line<T>(T);

struct Shared {
    /// Job count so far; a worker runs job `epoch` once it sees the count reach it.
    epoch: Line<AtomicUsize>,
    /// Workers (not counting the caller) that finished the current job.
    done: Line<AtomicUsize>,
    /// The current job, lifetime-erased; written by the caller before it bumps `epoch`
    /// (release) and read by workers after they see it (acquire); valid until `done` says
    /// every worker finished.
    job: UnsafeCell<Option<*const Job>>,
    stop: AtomicBool,
    /// Set by a worker whose job panicked (it still reports done); read and cleared by the
    /// caller once every worker is done.
    panicked: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`: the caller takes the lock and notifies
    /// only when there are any, so a job handed to spinning workers makes no system call.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: the job cell is written only by the thread that owns the (`!Sync`) `WorkerPool`,
// in `run`, while no worker reads it: after every worker reported the previous job done and
// before the `epoch` bump that lets them read it again; the job itself is `Sync`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Blocks until the epoch differs from `seen` and returns the new one.
    fn next_epoch(&self, seen: usize) -> usize {
        for _ in 0..SPINS {
            let epoch = self.epoch.0.load(Ordering::Acquire);
            if epoch != seen {
                return epoch;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SeqCst pairs with the caller's SeqCst epoch bump and sleeper check: either this
        // sees the new epoch, or the caller sees this sleeper and notifies under the lock,
        // which this holds until it waits.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut epoch = self.epoch.0.load(Ordering::SeqCst);
        while epoch == seen {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            epoch = self.epoch.0.load(Ordering::SeqCst);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        epoch
    }

    /// Publishes a new epoch (a job, or the stop flag) and wakes sleeping workers.
    fn publish(&self) {
        self.epoch.0.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }
}

/// The pool. Not `Sync`: one thread submits jobs.
pub struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: usize,
    /// Makes the pool `!Sync` (`run` relies on a single submitting thread).
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl WorkerPool {
    /// A pool of `threads` workers in total, the calling thread being worker 0.
    pub fn new(threads: usize) -> WorkerPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: Line(AtomicUsize::new(0)),
            done: Line(AtomicUsize::new(0)),
            job: UnsafeCell::new(None),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let handles = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("prom-worker-{index}"))
                    .spawn(move || {
                        let mut seen = 0;
                        loop {
                            seen = shared.next_epoch(seen);
                            if shared.stop.load(Ordering::Acquire) {
                                break;
                            }
                            // SAFETY: the caller stored the job before publishing this
                            // epoch (acquired above) and keeps it alive, untouched, until
                            // this worker reports done below.
                            let job = unsafe { (*shared.job.get()).expect("job set") };
                            // A panic is caught here, so the worker reports done (the caller
                            // waits for that) and stays in the pool; the panic hook has
                            // already printed its message.
                            // SAFETY: as above: the job is alive until the report below.
                            if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_err()
                            {
                                shared.panicked.store(true, Ordering::Relaxed);
                            }
                            shared.done.0.fetch_add(1, Ordering::Release);
                        }
                    })
                    .expect("spawn worker thread")
            })
            .collect();
        WorkerPool { shared, handles, threads, _not_sync: std::marker::PhantomData }
    }

    /// Workers in total.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(i)` on every worker `i` and returns when all are done.
    ///
    /// # Panics
    /// If the job panicked on any worker: after every worker is done, with the caller's own
    /// panic if it had one. The pool stays usable.
    pub fn run<'a>(&self, job: &'a (dyn Fn(usize) + Sync + 'a)) {
        if self.threads == 1 {
            job(0);
            return;
        }
        // SAFETY: erases the job's lifetime to store it; workers dereference it only until
        // they report done, which this function waits for before returning.
        let erased: *const Job =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) };
        let shared = &*self.shared;
        // SAFETY: no worker reads the cell now: every one reported the previous job done
        // (waited for below) and none sees a new epoch before `publish`.
        unsafe { *shared.job.get() = Some(erased) };
        shared.publish();
        // The workers borrow the job: even if it panics here, wait for them first.
        let own = catch_unwind(AssertUnwindSafe(|| job(0)));
        let workers = self.threads - 1;
        spin_until(DONE_SPINS, || shared.done.0.load(Ordering::Acquire) == workers);
        shared.done.0.store(0, Ordering::Relaxed);
        // The done counter (acquired above) orders each worker's flag before its report.
        let worker_panicked = shared.panicked.swap(false, Ordering::Relaxed);
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if worker_panicked {
            panic!("a worker thread panicked while running a job");
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if self.threads > 1 {
            self.shared.stop.store(true, Ordering::Release);
            self.shared.publish();
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
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `f` on its own thread and fails if it has not finished within a minute: a
    /// regression in these tests is a hang, which must fail rather than stall the suite.
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("finished (no worker left waiting)");
    }

    /// A job that panics on any one worker makes `run` panic on the caller once every
    /// worker is done, and the pool keeps working afterwards.
    #[test]
    fn a_panicking_job_fails_the_run_and_the_pool_survives() {
        within_a_minute(|| {
            for threads in [2, 3] {
                let pool = WorkerPool::new(threads);
                for culprit in 0..threads {
                    let ran = AtomicUsize::new(0);
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        pool.run(&|w| {
                            ran.fetch_add(1, Ordering::Relaxed);
                            if w == culprit {
                                panic!("test panic on worker {w}");
                            }
                        })
                    }));
                    assert!(result.is_err(), "{threads} threads, worker {culprit} panicked");
                    assert_eq!(ran.load(Ordering::Relaxed), threads, "every worker ran");
                    let after = AtomicUsize::new(0);
                    pool.run(&|_| {
                        after.fetch_add(1, Ordering::Relaxed);
                    });
                    assert_eq!(after.load(Ordering::Relaxed), threads, "the pool still works");
                }
            }
        });
    }

    /// When one party panics and poisons the barrier, the parties waiting at it panic
    /// instead of waiting forever; after a reset it works again.
    #[test]
    fn a_poisoned_barrier_releases_its_waiters() {
        within_a_minute(|| {
            let threads = 3;
            let pool = WorkerPool::new(threads);
            let mut barrier = SpinBarrier::new(threads);
            let released = AtomicUsize::new(0);
            let result = catch_unwind(AssertUnwindSafe(|| {
                pool.run(&|w| {
                    if w == 1 {
                        barrier.poison();
                        panic!("test panic before the barrier");
                    }
                    let waited = catch_unwind(AssertUnwindSafe(|| barrier.wait()));
                    assert!(waited.is_err(), "worker {w} left a poisoned barrier by panicking");
                    released.fetch_add(1, Ordering::Relaxed);
                })
            }));
            assert!(result.is_err());
            assert_eq!(released.load(Ordering::Relaxed), threads - 1);
            barrier.reset();
            let passed = AtomicUsize::new(0);
            pool.run(&|_| {
                barrier.wait();
                passed.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(passed.load(Ordering::Relaxed), threads);
        });
    }

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
