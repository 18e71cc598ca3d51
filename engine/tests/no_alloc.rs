//! Zero heap allocations per inference, with a counting global allocator (in every thread,
//! worker threads included).

use prom_engine::{synthesize, Model, Plan, PointwiseMode, State, SynthConfig};
use prom_kernels::Kernels;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn inference_allocates_nothing() {
    let cfg = SynthConfig { width: 0.5, resolution: 128, classes: 20, ..SynthConfig::default() };
    let model = Arc::new(Model::from_bytes(&synthesize(&cfg).unwrap().to_bytes()).unwrap());
    let input = vec![90u8; 128 * 128 * 3];
    for mode in [PointwiseMode::Ternary, PointwiseMode::Int8Baseline] {
        for threads in [1, 2] {
            let plan = Arc::new(Plan::new(Arc::clone(&model), Kernels::detect().unwrap(), mode));
            let mut state = State::new(plan, threads);
            let first = state.run(&input).to_vec(); // warm-up (lazy OS and thread setup)
            let mut times = vec![std::time::Duration::ZERO; model.graph().ops.len()];
            ALLOCATIONS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            for _ in 0..5 {
                let logits = state.run(&input);
                assert_eq!(logits[0], first[0]);
                state.run_timed(&input, &mut times);
            }
            COUNTING.store(false, Ordering::SeqCst);
            let n = ALLOCATIONS.load(Ordering::SeqCst);
            assert_eq!(n, 0, "{n} allocations in 10 inferences ({mode:?}, {threads} threads)");
        }
    }
}
