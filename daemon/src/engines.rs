//! The engine states the inference thread runs a model with, and, for `threads = "auto"`,
//! the choice between one thread and several made by measuring both while serving.
//!
//! Why measure: whether a second thread pays depends on more than the model. On two cores
//! with a camera thread busy at 1000 fps, two inference threads classified fewer frames than
//! one for every model tried (6 M to 301 M MACs), because three busy threads shared two
//! cores; with idle cores, two threads were up to 1.7x faster on the larger models
//! (docs/BENCHMARKS.md, issue 12 item 7). So `auto` keeps a one-thread state and a
//! several-thread state of the same model (results are bit-identical, only speed differs),
//! times the frames of each in turn, serves with the faster one, and checks again now and
//! then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prom_engine::{Plan, State};

use crate::config::Threads;

/// A trial of one thread count ends after this many frames and [`TRIAL_TIME`].
const TRIAL_FRAMES: u32 = 48;
/// Shortest trial: long enough for the scheduler's share of the cores to show.
const TRIAL_TIME: Duration = Duration::from_millis(500);
/// After a choice, the thread count is kept this long before both are timed again (a
/// trial of the slower count costs at most its share of time: 2 x 0.5 s in 30 s).
const HOLD_TIME: Duration = Duration::from_secs(30);
/// The several-thread state is chosen only when its frames are this much faster; ties go to
/// one thread, which leaves the cores to everything else.
const SEVERAL_MUST_WIN_BY: f64 = 0.03;

/// The engine state(s) of the served model.
pub struct Engines {
    states: Vec<State>,
    current: usize,
    chooser: Option<Chooser>,
}

impl Engines {
    /// States for `plan` with `threads`: one state, or with [`Threads::Auto`] and a model
    /// large enough for several threads ([`Threads::for_model_here`]), a one-thread state
    /// and a several-thread state with a chooser.
    pub fn new(plan: Arc<Plan>, threads: Threads) -> Engines {
        let several = threads.for_model_here(plan.macs());
        if threads != Threads::Auto || several == 1 {
            return Engines { states: vec![State::new(plan, several)], current: 0, chooser: None };
        }
        let states = vec![State::new(plan.clone(), 1), State::new(plan, several)];
        Engines { states, current: 0, chooser: Some(Chooser::new(2, Instant::now())) }
    }

    /// The state to run the next frame with.
    pub fn state(&mut self) -> &mut State {
        &mut self.states[self.current]
    }

    /// Threads of the state that serves (the chosen one, not one on trial).
    pub fn threads(&self) -> usize {
        let chosen = self.chooser.as_ref().map_or(self.current, |c| c.chosen);
        self.states[chosen].threads()
    }

    /// Records that a frame took `busy` (preparation, inference and publishing, wall clock)
    /// on the current state and finished at `now`; may change the state of the next frame.
    pub fn record(&mut self, busy: Duration, now: Instant) {
        let Some(chooser) = &mut self.chooser else { return };
        let (before, round) = (chooser.chosen, chooser.rounds);
        self.current = chooser.record(busy, now);
        if chooser.rounds != round {
            let ms: Vec<String> = (chooser.last_means.iter().zip(&self.states))
                .map(|(m, s)| format!("{} thread(s) {:.2} ms", s.threads(), m * 1e3))
                .collect();
            let chosen = self.states[chooser.chosen].threads();
            let what = format!("threads auto: {chosen} (frame times {})", ms.join(", "));
            if chooser.chosen != before || round == 0 {
                tracing::info!("{what}");
            } else {
                tracing::debug!("{what}");
            }
        }
    }
}

/// Times the frames of each of `options` thread counts in turn (index 0: one thread) and
/// picks the one whose frames took least wall-clock time.
#[derive(Debug)]
pub(crate) struct Chooser {
    /// Mean frame time of each option in the current round, once measured.
    means: Vec<Option<f64>>,
    /// The option being timed, or `None` while the chosen one is held.
    trial: Option<usize>,
    trial_started: Instant,
    trial_frames: u32,
    trial_busy: Duration,
    /// The option that serves between rounds.
    pub(crate) chosen: usize,
    held_since: Instant,
    /// Rounds completed, and the means of the last one.
    rounds: u64,
    last_means: Vec<f64>,
}

impl Chooser {
    pub(crate) fn new(options: usize, now: Instant) -> Chooser {
        Chooser {
            means: vec![None; options],
            trial: Some(0),
            trial_started: now,
            trial_frames: 0,
            trial_busy: Duration::ZERO,
            chosen: 0,
            held_since: now,
            rounds: 0,
            last_means: vec![f64::NAN; options],
        }
    }

    /// Records one frame on the option returned last; returns the option for the next frame.
    pub(crate) fn record(&mut self, busy: Duration, now: Instant) -> usize {
        let Some(trial) = self.trial else {
            if now.duration_since(self.held_since) >= HOLD_TIME {
                self.start_trial(0, now);
                return 0;
            }
            return self.chosen;
        };
        self.trial_frames += 1;
        self.trial_busy += busy;
        if self.trial_frames < TRIAL_FRAMES || now.duration_since(self.trial_started) < TRIAL_TIME {
            return trial;
        }
        self.means[trial] = Some(self.trial_busy.as_secs_f64() / f64::from(self.trial_frames));
        if trial + 1 < self.means.len() {
            self.start_trial(trial + 1, now);
            return trial + 1;
        }
        self.chosen = self.best();
        self.trial = None;
        self.held_since = now;
        for (last, mean) in self.last_means.iter_mut().zip(&mut self.means) {
            *last = mean.take().unwrap_or(f64::NAN);
        }
        self.rounds += 1;
        self.chosen
    }

    fn start_trial(&mut self, option: usize, now: Instant) {
        self.trial = Some(option);
        self.trial_started = now;
        self.trial_frames = 0;
        self.trial_busy = Duration::ZERO;
    }

    /// The option with the least mean frame time; a later (more threads) option must beat
    /// the best earlier one by [`SEVERAL_MUST_WIN_BY`].
    fn best(&self) -> usize {
        let mut best = 0;
        let mut best_mean = self.means[0].unwrap_or(f64::INFINITY);
        for (i, mean) in self.means.iter().enumerate().skip(1) {
            let mean = mean.unwrap_or(f64::INFINITY);
            if mean < best_mean * (1.0 - SEVERAL_MUST_WIN_BY) {
                (best, best_mean) = (i, mean);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `frames` frames spaced `gap` apart from `*now`, each taking `busy[option]` on
    /// the option the chooser gave it; returns the options used.
    fn feed(
        c: &mut Chooser,
        frames: u32,
        busy: [u64; 2],
        gap: u64,
        now: &mut Instant,
    ) -> Vec<usize> {
        let mut used = Vec::new();
        let mut next = c.trial.unwrap_or(c.chosen);
        for _ in 0..frames {
            used.push(next);
            *now += Duration::from_micros(gap);
            next = c.record(Duration::from_micros(busy[next]), *now);
        }
        used
    }

    #[test]
    fn times_each_option_then_serves_the_faster_and_checks_again_after_the_hold() {
        let start = Instant::now();
        let mut now = start;
        let mut c = Chooser::new(2, start);
        // One thread first, for at least TRIAL_FRAMES frames and TRIAL_TIME.
        let used = feed(&mut c, TRIAL_FRAMES, [4000, 2000], 5000, &mut now);
        assert!(used.iter().all(|&o| o == 0));
        assert_eq!(c.trial, Some(0), "240 ms < TRIAL_TIME: still timing one thread");
        feed(&mut c, 60, [4000, 2000], 5000, &mut now);
        assert_eq!(c.trial, Some(1));
        // Several threads: 2 ms a frame against 4: chosen after its trial.
        let used = feed(&mut c, 120, [4000, 2000], 5000, &mut now);
        assert!(used.iter().all(|&o| o == 1), "{used:?}");
        assert_eq!((c.trial, c.chosen), (None, 1));
        // Held for HOLD_TIME, whatever the frames take.
        let held = feed(&mut c, 1000, [1000, 9000], 20_000, &mut now);
        assert!(held.iter().all(|&o| o == 1), "{held:?}");
        // Then both are timed again; now one thread wins (the cores got busy).
        let used = feed(&mut c, 1000, [1000, 9000], 20_000, &mut now);
        let runs: Vec<(usize, usize)> =
            used.chunk_by(|a, b| a == b).map(|r| (r[0], r.len())).collect();
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 0, 1, 0], "{runs:?}");
        assert!(runs[1].1 >= TRIAL_FRAMES as usize && runs[2].1 >= TRIAL_FRAMES as usize);
        assert_eq!((c.trial, c.chosen), (None, 0));
    }

    #[test]
    fn several_threads_must_win_clearly() {
        let mut now = Instant::now();
        let mut c = Chooser::new(2, now);
        feed(&mut c, 400, [1000, 980], 5000, &mut now);
        assert_eq!((c.trial, c.chosen), (None, 0), "2% faster is a tie");
        now += HOLD_TIME;
        feed(&mut c, 400, [1000, 950], 5000, &mut now);
        assert_eq!((c.trial, c.chosen), (None, 1), "5% faster wins");
        // A trial with no result (no option timed) keeps one thread.
        assert_eq!(Chooser::new(2, now).best(), 0);
    }

    #[test]
    fn engines_for_small_models_and_fixed_counts_have_one_state() {
        use prom_engine::{synthesize, Model, PointwiseMode, SynthConfig};
        use prom_kernels::Kernels;
        let plan = |resolution| {
            let cfg = SynthConfig { width: 1.0, resolution, classes: 10, ..SynthConfig::default() };
            let model = Arc::new(Model::from_bytes(&synthesize(&cfg).unwrap().to_bytes()).unwrap());
            Arc::new(Plan::new(model, Kernels::detect().unwrap(), PointwiseMode::Ternary))
        };
        let (small, large) = (plan(64), plan(160));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(large.macs() >= 4 * crate::config::AUTO_MACS_PER_THREAD);

        let e = Engines::new(small.clone(), Threads::Auto);
        assert_eq!((e.states.len(), e.threads()), (1, 1));
        assert!(e.chooser.is_none());
        let e = Engines::new(small, Threads::Fixed(3));
        assert_eq!((e.states.len(), e.threads()), (1, 3));
        let e = Engines::new(large.clone(), Threads::Fixed(1));
        assert_eq!((e.states.len(), e.threads()), (1, 1));
        let mut e = Engines::new(large, Threads::Auto);
        if cpus == 1 {
            assert_eq!(e.states.len(), 1);
            return;
        }
        assert_eq!(e.states.len(), 2);
        assert_eq!(e.states[1].threads(), cpus.min(4));
        // Starts on one thread, timing it; both states give the same logits.
        assert_eq!(e.threads(), 1);
        let input = vec![77u8; 160 * 160 * 3];
        let one = e.states[0].run(&input).to_vec();
        assert_eq!(e.states[1].run(&input), &one[..]);
    }
}
