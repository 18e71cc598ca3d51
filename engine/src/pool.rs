//! A persistent worker pool whose jobs never wait for a thread that is not running.
//!
//! `threads - 1` parked threads plus the caller share each job. Workers *join* a job while
//! it is open; a job claims its work from shared counters, so whoever runs does the work and
//! the caller alone can finish it. Waits spin for a few tens of microseconds (the usual skew
//! between cores), then block, which frees the core for a thread that was descheduled.
//!
//! Why: the first pool gave each worker a fixed share and met at a barrier after every
//! layer. With more busy threads than cores (a camera capturing at 1000 fps next to two
//! inference threads on two cores), a descheduled worker held every layer up for a
//! scheduler time slice while the others spun, and two threads classified 119 frames/s
//! where one thread managed 877 (docs/BENCHMARKS.md).
//!
//! A panic inside a job never leaves a thread waiting: every participant catches its own
//! and still leaves the job, and [`WorkerPool::run`] waits for every participant (they
//! borrow the job) before it passes the panic on to its caller.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before it sleeps: about the gap between the jobs
/// of one frame (input preparation, then inference) and between back-to-back inferences. A
/// worker asleep when a job starts is woken and joins late (the caller does not wait for
/// it). Longer spins took CPU from the camera threads: with 200 us, two threads classified
/// fewer frames than one at 1000 fps on two cores (docs/BENCHMARKS.md).
const JOB_SPIN: Duration = Duration::from_micros(10);

/// How long a participant spins for another's work (the end of a job, or the rest of a
/// layer when its own chunks took less) before it blocks: about the usual skew between two
/// running cores. A thread that takes longer was most likely descheduled, and blocking frees
/// this core for it.
pub(crate) const WORK_SPIN: Duration = Duration::from_micros(30);

/// Longest spin for the rest of a layer: a participant spins up to twice as long as one of
/// its own chunks of the layer took (a running peer finishes a chunk of the same size in
/// about that time; blocking earlier, a peer's large chunk cost a wake-up per layer), but
/// at least [`WORK_SPIN`] and at most this.
const MAX_STAGE_SPIN: Duration = Duration::from_millis(1);

/// Spin-then-block waiting on a condition that other threads change.
///
/// Waiters check the condition, spinning, for a while; then they register as sleepers and
/// sleep on a condition variable. A thread that changes the condition calls
/// [`Gate::notify`], which makes a system call only when someone sleeps. Conditions must
/// read, and changers write, with `SeqCst` (the sleeper count pairs with them).
pub(crate) struct Gate {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate { sleepers: AtomicUsize::new(0), lock: Mutex::new(()), wake: Condvar::new() }
    }

    /// Returns once `ready()` holds: spinning for about `spin`, then sleeping.
    pub(crate) fn wait_until(&self, spin: Duration, ready: impl Fn() -> bool) {
        if ready() {
            return;
        }
        let start = Instant::now();
        'spin: loop {
            for _ in 0..32 {
                if ready() {
                    return;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= spin {
                break 'spin;
            }
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Either the changer's SeqCst write precedes this SeqCst increment, and the check
        // below sees it, or the changer sees this sleeper and notifies under the lock, which
        // this holds until it waits.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while !ready() {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the sleepers (if any) after a change of the condition.
    pub(crate) fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }
}

/// The job: called once by each participant with its worker index (0: the caller).
type Job = dyn Fn(usize) + Sync;

/// Keeps counters written by different threads on their own cache lines.
#[repr(align(128))]
pub(crate) struct Line<T>(pub(crate) T);

/// In [`Shared::members`]: the job is open (workers may join it).
const OPEN: usize = 1 << (usize::BITS - 1);

struct Shared {
    /// Jobs published so far; a worker that sees it change tries to join.
    epoch: Line<AtomicUsize>,
    /// The open flag and the number of workers inside the current job (or trying to join
    /// one). A worker joins with one increment that also tells it whether the job is open.
    members: Line<AtomicUsize>,
    /// The current job, lifetime-erased; written by the caller while the job is closed and
    /// no worker is inside, read by workers that joined it (the open flag orders the two).
    job: UnsafeCell<Option<*const Job>>,
    stop: AtomicBool,
    /// Set by a worker whose job panicked; read and cleared by the caller once every worker
    /// has left the job.
    panicked: AtomicBool,
    /// Workers waiting for the next epoch.
    idle: Gate,
    /// The caller waiting for the workers to leave the job.
    leaving: Gate,
}

// SAFETY: the job cell is written only by the thread that owns the (`!Sync`) `WorkerPool`,
// in `run`, while the job is closed and no worker is inside it; workers read it only after a
// join that saw the job open; the job itself is `Sync`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Blocks until the epoch differs from `seen` and returns the new one.
    fn next_epoch(&self, seen: usize) -> usize {
        self.idle.wait_until(JOB_SPIN, || self.epoch.0.load(Ordering::SeqCst) != seen);
        self.epoch.0.load(Ordering::SeqCst)
    }

    /// Publishes a new epoch (a job, or the stop flag) and wakes sleeping workers.
    fn publish(&self) {
        self.epoch.0.fetch_add(1, Ordering::SeqCst);
        self.idle.notify();
    }

    /// A worker's turn at the current job, if it is still open.
    fn join(&self, index: usize) {
        if self.members.0.fetch_add(1, Ordering::SeqCst) & OPEN != 0 {
            // SAFETY: the job is open, so the caller stored it before opening (ordered by
            // the SeqCst read-modify-writes) and keeps it alive and unchanged until every
            // member has left, which this one does below.
            let job = unsafe { (*self.job.get()).expect("job set") };
            // A panic is caught here so the worker still leaves the job (the caller waits
            // for that) and stays in the pool; the panic hook has already printed it.
            // SAFETY: as above: the job is alive until this worker leaves.
            if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
        }
        self.members.0.fetch_sub(1, Ordering::SeqCst);
        self.leaving.notify();
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
            members: Line(AtomicUsize::new(0)),
            job: UnsafeCell::new(None),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            idle: Gate::new(),
            leaving: Gate::new(),
        });
        // Every worker has started (and done the allocations of a thread start) before the
        // pool is handed out: jobs do not wait for workers, so a late start would only show
        // up as allocations in the middle of inferences.
        let started = Arc::new(std::sync::Barrier::new(threads));
        let handles = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                let started = Arc::clone(&started);
                std::thread::Builder::new()
                    .name(format!("prom-worker-{index}"))
                    .spawn(move || {
                        started.wait();
                        drop(started);
                        let mut seen = 0;
                        loop {
                            seen = shared.next_epoch(seen);
                            if shared.stop.load(Ordering::Acquire) {
                                break;
                            }
                            shared.join(index);
                        }
                    })
                    .expect("spawn worker thread")
            })
            .collect();
        started.wait();
        WorkerPool { shared, handles, threads, _not_sync: std::marker::PhantomData }
    }

    /// Workers in total.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(0)` on the calling thread and `job(i)` on each worker `i` that joins while
    /// the caller's call runs; returns when the caller's call has returned and every worker
    /// that joined has left.
    ///
    /// Workers that are not running (descheduled, or still waking up) simply do not join,
    /// so a job must not count on any worker but the caller: it claims its work from shared
    /// counters, and the caller's call returns only once all of it is done. A worker may
    /// join the same job more than once, one after the other (never two calls with the same
    /// index at once).
    ///
    /// # Panics
    /// If the job panicked on any participant: after every one has left, with the caller's
    /// own panic if it had one. The pool stays usable.
    pub fn run<'a>(&self, job: &'a (dyn Fn(usize) + Sync + 'a)) {
        if self.threads == 1 {
            job(0);
            return;
        }
        // SAFETY: erases the job's lifetime to store it; workers dereference it only while
        // they are members of the job, and this function waits for every member to leave
        // before returning.
        let erased: *const Job =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) };
        let shared = &*self.shared;
        // SAFETY: no worker reads the cell now: the previous job was closed and every member
        // left it (waited for below); a worker that tries to join before the open flag is
        // set again sees it clear and does not read the cell.
        unsafe { *shared.job.get() = Some(erased) };
        shared.members.0.fetch_or(OPEN, Ordering::SeqCst);
        shared.publish();
        // Members borrow the job: even if it panics here, wait for them first.
        let own = catch_unwind(AssertUnwindSafe(|| job(0)));
        shared.members.0.fetch_and(!OPEN, Ordering::SeqCst);
        shared.leaving.wait_until(WORK_SPIN, || shared.members.0.load(Ordering::SeqCst) == 0);
        // The members' leaving (acquired above) orders each one's flag before it.
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

/// Work in stages that must run in order (the layers of an inference), each stage cut into
/// `owners x per_owner` chunks, shared by the participants of one pool job.
///
/// Each participant owns a contiguous run of every stage's chunks (the same rows a fixed
/// split would give it, so with every thread running, each one reads what it wrote and the
/// arena layout's placement holds) and takes them first; then it takes what is left of the
/// others' (a participant that is descheduled, or joins late, loses its chunks to the
/// running ones); then it waits for the stage's last chunks. So a stage waits only for
/// chunks that are being computed, never for a thread that has not started.
pub(crate) struct Stages {
    owners: usize,
    /// Chunks per owner in the stages before stage `s` (`stages + 1` prefix sums).
    owner_base: Vec<usize>,
    /// Per owner: chunks of its sequence (over all stages) claimed so far.
    next: Vec<Line<AtomicUsize>>,
    /// Chunks completed (over all stages and owners).
    done: Line<AtomicUsize>,
    /// Set when a participant panicked: waiters then panic instead of waiting.
    poisoned: AtomicBool,
    gate: Gate,
}

impl Stages {
    /// Stages with `per_owner[s]` (at least 1) chunks per owner each.
    pub(crate) fn new(owners: usize, per_owner: impl IntoIterator<Item = usize>) -> Stages {
        let mut owner_base = vec![0];
        for per in per_owner {
            owner_base.push(owner_base.last().unwrap() + per.max(1));
        }
        let owners = owners.max(1);
        Stages {
            owners,
            owner_base,
            next: (0..owners).map(|_| Line(AtomicUsize::new(0))).collect(),
            done: Line(AtomicUsize::new(0)),
            poisoned: AtomicBool::new(false),
            gate: Gate::new(),
        }
    }

    /// Chunks of stage `s` (all owners together).
    pub(crate) fn chunks(&self, s: usize) -> usize {
        self.owners * (self.owner_base[s + 1] - self.owner_base[s])
    }

    /// Clears the counters and the poison for a new job, once no participant is inside
    /// (the exclusive borrow proves it).
    pub(crate) fn reset(&mut self) {
        for n in &mut self.next {
            *n.0.get_mut() = 0;
        }
        *self.done.0.get_mut() = 0;
        *self.poisoned.get_mut() = false;
    }

    /// Marks the job broken (a participant panicked and will not finish its chunk): every
    /// current and later wait panics until [`reset`](Stages::reset).
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
        self.gate.notify();
    }

    /// Participant `me` (`< owners`) works through every stage: `work(stage, chunk)` for
    /// each chunk it claims (`chunk < chunks(stage)`), then `after(stage)` once every chunk
    /// of the stage is done (by anyone). Returns after the last stage. Everything written in
    /// a chunk is visible to every participant once its stage is done.
    ///
    /// # Panics
    /// If the job is or becomes poisoned while waiting.
    pub(crate) fn run(&self, me: usize, work: impl Fn(usize, usize), after: impl Fn(usize)) {
        let owners = self.owners;
        for s in 0..self.owner_base.len() - 1 {
            let (first, end) = (self.owner_base[s], self.owner_base[s + 1]);
            let stage_end = owners * end;
            let started = Instant::now();
            let mut ran = 0u32;
            for k in 0..owners {
                let owner = (me + k) % owners;
                let next = &self.next[owner].0;
                let mut claimed = next.load(Ordering::Relaxed);
                while claimed < end {
                    match next.compare_exchange_weak(
                        claimed,
                        claimed + 1,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            work(s, owner * (end - first) + claimed - first);
                            ran += 1;
                            // SeqCst: publishes the chunk's writes and pairs with the gate.
                            self.done.0.fetch_add(1, Ordering::SeqCst);
                            self.gate.notify();
                            claimed = next.load(Ordering::Relaxed);
                        }
                        Err(now) => claimed = now,
                    }
                }
            }
            let finished = || {
                self.done.0.load(Ordering::SeqCst) >= stage_end
                    || self.poisoned.load(Ordering::SeqCst)
            };
            let spin = match ran {
                0 => WORK_SPIN,
                n => (started.elapsed() * 2 / n).clamp(WORK_SPIN, MAX_STAGE_SPIN),
            };
            self.gate.wait_until(spin, finished);
            if self.done.0.load(Ordering::SeqCst) < stage_end {
                panic!("another worker of this job panicked");
            }
            after(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    /// Runs `f` on its own thread and fails if it has not finished within a minute: a
    /// regression in these tests is a hang, which must fail rather than stall the suite.
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("finished (no participant left waiting)");
    }

    /// Waits (sleeping) until `ready()`, for at most ten seconds.
    fn eventually(ready: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while !ready() {
            if start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }

    /// A job that panics on the caller or on a worker makes `run` panic on the caller once
    /// every participant has left, and the pool keeps working afterwards.
    #[test]
    fn a_panicking_job_fails_the_run_and_the_pool_survives() {
        within_a_minute(|| {
            for threads in [2, 3] {
                let pool = WorkerPool::new(threads);
                for on_worker in [false, true] {
                    let joined = AtomicUsize::new(0);
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        pool.run(&|w| {
                            if w != 0 {
                                joined.fetch_add(1, Ordering::SeqCst);
                                if on_worker {
                                    panic!("test panic on worker {w}");
                                }
                            } else {
                                // Keep the job open until a worker has joined it.
                                assert!(eventually(|| joined.load(Ordering::SeqCst) > 0));
                                if !on_worker {
                                    panic!("test panic on the caller");
                                }
                            }
                        })
                    }));
                    assert!(result.is_err(), "{threads} threads, panic on a worker: {on_worker}");
                    let work = AtomicUsize::new(100);
                    let done = AtomicUsize::new(0);
                    pool.run(&|_| {
                        while work.fetch_sub(1, Ordering::Relaxed) as isize > 0 {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    assert_eq!(done.load(Ordering::Relaxed), 100, "the pool still works");
                }
            }
        });
    }

    /// Workers join jobs whether they were spinning (back-to-back jobs) or asleep (a pause
    /// far longer than the spin), and claimed work is done exactly once.
    #[test]
    fn workers_join_spinning_or_asleep_and_work_is_done_once() {
        within_a_minute(|| {
            let threads = 3;
            let pool = WorkerPool::new(threads);
            let joins: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
            for round in 0..40u64 {
                if round % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(30));
                }
                let items: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
                let next = AtomicUsize::new(0);
                let others = AtomicUsize::new(0);
                pool.run(&|w| {
                    if w != 0 {
                        others.fetch_add(1, Ordering::SeqCst);
                    } else {
                        // Keep the job open until every worker joined, so each must wake.
                        assert!(eventually(|| others.load(Ordering::SeqCst) >= threads - 1));
                    }
                    joins[w].fetch_add(1, Ordering::Relaxed);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        item.fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(items.iter().all(|i| i.load(Ordering::Relaxed) == 1), "round {round}");
            }
            for (w, j) in joins.iter().enumerate() {
                assert!(j.load(Ordering::Relaxed) >= 40, "worker {w} joined every job");
            }
        });
    }

    /// One participant alone completes a job cut for three (the others descheduled for
    /// the whole job, or never woken): every chunk once, stages in order.
    #[test]
    fn one_participant_alone_finishes_a_staged_job() {
        let per_owner = [2, 1, 4, 3];
        let stages = Stages::new(3, per_owner);
        let log = Mutex::new(Vec::new());
        let after = Mutex::new(Vec::new());
        stages.run(1, |s, c| log.lock().unwrap().push((s, c)), |s| after.lock().unwrap().push(s));
        let log = log.into_inner().unwrap();
        let mut expected = Vec::new();
        for (s, per) in per_owner.iter().enumerate() {
            // Its own chunks first (owner 1), then owner 2's, then owner 0's.
            for owner in [1, 2, 0] {
                expected.extend((0..*per).map(|j| (s, owner * per + j)));
            }
        }
        assert_eq!(log, expected);
        assert_eq!(after.into_inner().unwrap(), vec![0, 1, 2, 3]);
    }

    /// A worker that joined the job but does not run (here: blocked until the caller is
    /// through, as a descheduled thread would be) holds nothing up: the caller does every
    /// chunk of every stage, then the worker finds nothing left. With a fixed split and a
    /// barrier per stage, this deadlocks (and the test fails by timeout).
    #[test]
    fn a_stalled_worker_holds_up_no_stage() {
        within_a_minute(|| {
            let pool = WorkerPool::new(2);
            let per_owner = [2, 1, 3];
            let stages = Stages::new(2, per_owner);
            let joined = AtomicBool::new(false);
            let caller_through = AtomicBool::new(false);
            let by_worker = AtomicUsize::new(0);
            let runs: Vec<AtomicUsize> = (0..12).map(|_| AtomicUsize::new(0)).collect();
            let base = |s: usize| per_owner[..s].iter().sum::<usize>() * 2;
            pool.run(&|w| {
                if w == 0 {
                    assert!(eventually(|| joined.load(Ordering::SeqCst)), "the worker joined");
                } else {
                    joined.store(true, Ordering::SeqCst);
                    assert!(eventually(|| caller_through.load(Ordering::SeqCst)));
                }
                stages.run(
                    w,
                    |s, c| {
                        runs[base(s) + c].fetch_add(1, Ordering::SeqCst);
                        if w != 0 {
                            by_worker.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                    |_| {},
                );
                if w == 0 {
                    caller_through.store(true, Ordering::SeqCst);
                }
            });
            assert!(runs.iter().all(|r| r.load(Ordering::SeqCst) == 1));
            assert_eq!(by_worker.load(Ordering::SeqCst), 0);
        });
    }

    /// With a pool, every chunk runs once, and no chunk of a stage starts before every chunk
    /// of the stage before it is done; then a poisoned job releases its waiters.
    #[test]
    fn staged_jobs_keep_order_and_poison_releases_waiters() {
        within_a_minute(|| {
            for threads in [2, 3] {
                let pool = WorkerPool::new(threads);
                let per_owner = [3, 1, 2, 5, 1];
                let mut stages = Stages::new(threads, per_owner);
                for _ in 0..50 {
                    stages.reset();
                    let finished: Vec<AtomicUsize> =
                        per_owner.iter().map(|_| AtomicUsize::new(0)).collect();
                    let runs: Vec<Vec<AtomicUsize>> = per_owner
                        .iter()
                        .map(|p| (0..p * threads).map(|_| AtomicUsize::new(0)).collect())
                        .collect();
                    let stages = &stages;
                    pool.run(&|w| {
                        stages.run(
                            w,
                            |s, c| {
                                if s > 0 {
                                    let before = finished[s - 1].load(Ordering::SeqCst);
                                    assert_eq!(before, stages.chunks(s - 1), "stage {s} early");
                                }
                                runs[s][c].fetch_add(1, Ordering::SeqCst);
                                finished[s].fetch_add(1, Ordering::SeqCst);
                            },
                            |_| {},
                        )
                    });
                    for (s, chunks) in runs.iter().enumerate() {
                        for (c, n) in chunks.iter().enumerate() {
                            assert_eq!(n.load(Ordering::SeqCst), 1, "stage {s} chunk {c}");
                        }
                    }
                }
                stages.reset();
                let stages = &stages;
                let result = catch_unwind(AssertUnwindSafe(|| {
                    pool.run(&|w| {
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            stages.run(
                                w,
                                |s, c| {
                                    if s == 1 && c == 0 {
                                        panic!("test panic in stage 1");
                                    }
                                },
                                |_| {},
                            )
                        }));
                        if let Err(payload) = r {
                            stages.poison();
                            resume_unwind(payload);
                        }
                    })
                }));
                assert!(result.is_err(), "{threads} threads: the panic reached the caller");
            }
        });
    }
}
