//! A camera's publishing policy (`[camera.publish]`): which classes of a classified frame go
//! into its `Classified` signal, and whether the signal is sent at all.
//!
//! Order of operations per frame: smoothing (none, moving average, hysteresis) -> selection
//! (top-k above the threshold; with hysteresis the active classes) -> rate and change rules
//! (minimum interval, every frame or only on change). Everything is preallocated when the
//! policy is built, so [`Policy::decide`] allocates nothing.

use std::time::{Duration, Instant};

use crate::config::{Publish, PublishMode, Smoothing};
use crate::dbus::{Scores, MAX_TOP_K};

/// The publishing state of one camera for one model (class count).
#[derive(Debug)]
pub struct Policy {
    cfg: Publish,
    classes: usize,
    /// Moving average: the last `window` frames' scores, frame-major ring.
    history: Vec<f32>,
    /// Running per-class sums of `history` (f64 so adding and subtracting does not drift).
    sums: Vec<f64>,
    ring_pos: usize,
    ring_filled: usize,
    /// Hysteresis: whether each class is currently in the published set.
    active: Vec<bool>,
    smoothed: Vec<f32>,
    /// The class ids of the last published result, in order.
    last_ids: Vec<u32>,
    last_sent: Option<Instant>,
    sent_once: bool,
}

impl Policy {
    /// A policy for results over `classes` classes.
    pub fn new(cfg: Publish, classes: usize) -> Policy {
        let window = match cfg.smoothing {
            Smoothing::MovingAverage { window } => window,
            _ => 0,
        };
        Policy {
            cfg,
            classes,
            history: vec![0.0; window * classes],
            sums: vec![0.0; if window > 0 { classes } else { 0 }],
            ring_pos: 0,
            ring_filled: 0,
            active: vec![false; classes],
            smoothed: vec![0.0; classes],
            last_ids: Vec::with_capacity(MAX_TOP_K),
            last_sent: None,
            sent_once: false,
        }
    }

    /// The number of classes this policy was built for.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Decides on one frame's class probabilities (`probs.len()` must equal the class
    /// count). Fills `out` with the (class id, score) entries to publish, best first, and
    /// returns whether to publish them now.
    pub fn decide(&mut self, probs: &[f32], now: Instant, out: &mut Scores) -> bool {
        assert_eq!(probs.len(), self.classes, "class count changed without a new policy");
        self.smooth(probs);
        out.clear();
        let top_k = self.cfg.top_k.clamp(1, MAX_TOP_K);
        match self.cfg.smoothing {
            Smoothing::Hysteresis { enter, leave } => {
                for (a, &s) in self.active.iter_mut().zip(&self.smoothed) {
                    *a = if *a { s >= leave } else { s >= enter };
                }
                let (active, smoothed) = (&self.active, &self.smoothed);
                select_top(smoothed, top_k, |c| active[c], out);
            }
            _ => {
                let threshold = self.cfg.threshold;
                let smoothed = &self.smoothed;
                select_top(smoothed, top_k, |c| smoothed[c] >= threshold, out);
            }
        }
        if let Some(last) = self.last_sent {
            if now.saturating_duration_since(last) < self.cfg.min_interval {
                return false;
            }
        }
        if self.cfg.mode == PublishMode::OnChange
            && self.sent_once
            && out.as_slice().iter().map(|e| e.0).eq(self.last_ids.iter().copied())
        {
            return false;
        }
        self.last_ids.clear();
        self.last_ids.extend(out.as_slice().iter().map(|e| e.0));
        self.last_sent = Some(now);
        self.sent_once = true;
        true
    }

    /// The time left before another result may be published (zero when it may now).
    pub fn wait_left(&self, now: Instant) -> Duration {
        self.last_sent
            .map_or(Duration::ZERO, |t| (t + self.cfg.min_interval).saturating_duration_since(now))
    }

    fn smooth(&mut self, probs: &[f32]) {
        let n = self.classes;
        if self.sums.is_empty() {
            self.smoothed.copy_from_slice(probs);
            return;
        }
        let window = self.history.len() / n.max(1);
        let slot = &mut self.history[self.ring_pos * n..(self.ring_pos + 1) * n];
        for ((sum, old), &p) in self.sums.iter_mut().zip(slot.iter_mut()).zip(probs) {
            *sum += f64::from(p) - f64::from(*old);
            *old = p;
        }
        self.ring_pos = (self.ring_pos + 1) % window;
        self.ring_filled = (self.ring_filled + 1).min(window);
        let count = self.ring_filled as f64;
        for (s, &sum) in self.smoothed.iter_mut().zip(&self.sums) {
            *s = (sum / count).max(0.0) as f32;
        }
    }
}

/// The `k` best classes (by score, ties to the lower id) among those `eligible`, best
/// first, into `out`. One pass with insertion into the short sorted list: O(classes x k)
/// worst case, no allocation.
fn select_top(scores: &[f32], k: usize, eligible: impl Fn(usize) -> bool, out: &mut Scores) {
    let mut best: [(u32, f32); MAX_TOP_K] = [(0, 0.0); MAX_TOP_K];
    let mut len = 0;
    for (c, &s) in scores.iter().enumerate() {
        if !eligible(c) || (len == k && s <= best[k - 1].1) {
            continue;
        }
        // Insert after every entry scoring at least as much (earlier ids win ties).
        let mut at = len.min(k - 1);
        while at > 0 && best[at - 1].1 < s {
            at -= 1;
        }
        let end = len.min(k - 1);
        best.copy_within(at..end, at + 1);
        best[at] = (c as u32, s);
        len = (len + 1).min(k);
    }
    for &(c, s) in &best[..len] {
        out.push(c, f64::from(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Publish {
        Publish::default()
    }

    fn ids(s: &Scores) -> Vec<u32> {
        s.as_slice().iter().map(|e| e.0).collect()
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut seed = 12345u64;
        for k in [1, 2, 5, 17, 100] {
            let scores: Vec<f32> = (0..300)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) % 50) as f32 / 50.0 // many ties on purpose
                })
                .collect();
            let mut want: Vec<usize> = (0..scores.len()).collect();
            want.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            want.truncate(k);
            let mut out = Scores::default();
            select_top(&scores, k, |_| true, &mut out);
            assert_eq!(ids(&out), want.iter().map(|&c| c as u32).collect::<Vec<_>>(), "k={k}");
        }
    }

    #[test]
    fn threshold_and_every_frame() {
        let mut p = Policy::new(Publish { top_k: 3, threshold: 0.2, ..cfg() }, 4);
        let mut out = Scores::default();
        let now = Instant::now();
        assert!(p.decide(&[0.1, 0.5, 0.3, 0.1], now, &mut out));
        assert_eq!(out.as_slice(), &[(1, 0.5), (2, f64::from(0.3f32))]);
        // Every mode publishes identical results again, and empty ones too.
        assert!(p.decide(&[0.1, 0.5, 0.3, 0.1], now, &mut out));
        assert!(p.decide(&[0.25, 0.25, 0.25, 0.25], now, &mut out));
        assert_eq!(ids(&out), [0, 1, 2]);
        assert!(p.decide(&[0.1, 0.1, 0.1, 0.1], now, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn on_change_and_min_interval() {
        let publish = Publish {
            top_k: 1,
            mode: PublishMode::OnChange,
            min_interval: Duration::from_millis(100),
            ..cfg()
        };
        let mut p = Policy::new(publish, 3);
        let mut out = Scores::default();
        let t0 = Instant::now();
        assert!(p.decide(&[0.6, 0.3, 0.1], t0, &mut out), "first result is published");
        assert!(!p.decide(&[0.7, 0.2, 0.1], t0 + Duration::from_millis(200), &mut out));
        // Changed, but too soon: held back, and published once the interval has passed.
        assert!(!p.decide(&[0.1, 0.8, 0.1], t0 + Duration::from_millis(50), &mut out));
        assert_eq!(p.wait_left(t0 + Duration::from_millis(50)), Duration::from_millis(50));
        assert!(p.decide(&[0.1, 0.8, 0.1], t0 + Duration::from_millis(300), &mut out));
        assert_eq!(ids(&out), [1]);
        assert!(!p.decide(&[0.1, 0.8, 0.1], t0 + Duration::from_millis(900), &mut out));
    }

    #[test]
    fn moving_average_over_the_window() {
        let publish =
            Publish { top_k: 2, smoothing: Smoothing::MovingAverage { window: 3 }, ..cfg() };
        let mut p = Policy::new(publish, 2);
        let mut out = Scores::default();
        let now = Instant::now();
        p.decide(&[1.0, 0.0], now, &mut out);
        assert_eq!(out.as_slice(), &[(0, 1.0), (1, 0.0)]);
        p.decide(&[0.0, 1.0], now, &mut out);
        assert_eq!(out.as_slice(), &[(0, 0.5), (1, 0.5)]);
        p.decide(&[0.0, 1.0], now, &mut out);
        let third = f64::from((1.0f64 / 3.0) as f32);
        assert_eq!(out.as_slice(), &[(1, f64::from((2.0f64 / 3.0) as f32)), (0, third)]);
        // The first frame leaves the window.
        p.decide(&[0.0, 1.0], now, &mut out);
        assert_eq!(out.as_slice(), &[(1, 1.0), (0, 0.0)]);
    }

    #[test]
    fn hysteresis_enters_high_and_leaves_low() {
        let publish = Publish {
            top_k: 5,
            threshold: 0.99, // not used with hysteresis
            smoothing: Smoothing::Hysteresis { enter: 0.6, leave: 0.3 },
            ..cfg()
        };
        let mut p = Policy::new(publish, 3);
        let mut out = Scores::default();
        let now = Instant::now();
        p.decide(&[0.5, 0.4, 0.1], now, &mut out);
        assert!(out.is_empty(), "nothing reached enter");
        p.decide(&[0.7, 0.2, 0.1], now, &mut out);
        assert_eq!(ids(&out), [0]);
        p.decide(&[0.35, 0.6, 0.05], now, &mut out);
        assert_eq!(ids(&out), [1, 0], "class 0 stays above leave, class 1 entered");
        p.decide(&[0.29, 0.5, 0.21], now, &mut out);
        assert_eq!(ids(&out), [1]);
    }
}
