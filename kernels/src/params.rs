//! Parameters shared by every kernel tier: the fused requantization epilogue, shapes, and the
//! one rounding rule of the PROM-Q numeric contract (docs/FORMAT.md, "Requantization").

/// Smallest allowed requantization shift.
///
/// Shifts below 32 would let `(acc * m) >> s` leave the int32 range; every tier relies on
/// `s >= 32` to take the high 32 bits of the 64-bit product and shift the rest (see
/// [`requantize`]). With `m < 2^31` this means the effective scale `m * 2^-s` is below 0.5,
/// which every MobileNetV2 layer satisfies by a wide margin (typical scales are 2^-5..2^-12).
pub const MIN_SHIFT: u8 = 32;
/// Largest allowed requantization shift (the rounding term `2^(s-1)` must fit an i64 sum).
pub const MAX_SHIFT: u8 = 62;

/// The fused epilogue of a convolution: bias, per-output-channel fixed-point requantization,
/// output zero point and clamp.
///
/// For every output channel `n` and int32 accumulator `acc`:
/// ```text
/// x = acc + bias[n]                      (two's complement, wrapping)
/// y = (x * multiplier[n] + 2^(shift[n]-1)) >> shift[n]   (exact, in i64; >> is floor)
/// out = clamp(y + output_zero_point, output_min, output_max)
/// ```
/// i.e. round half up. Every tier implements exactly this; the scalar tier is the oracle.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// int32 bias per output channel, with the input zero point already folded in.
    pub bias: &'a [i32],
    /// Fixed-point multiplier per output channel, in `0..=i32::MAX`.
    pub multiplier: &'a [i32],
    /// Right shift per output channel, in `MIN_SHIFT..=MAX_SHIFT`.
    pub shift: &'a [u8],
    /// Output zero point.
    pub output_zero_point: i8,
    /// Lower clamp bound (quantized), e.g. the zero point for ReLU6.
    pub output_min: i8,
    /// Upper clamp bound (quantized).
    pub output_max: i8,
}

impl Epilogue<'_> {
    /// Panics with a message naming the problem unless the epilogue fits `channels` outputs
    /// and every parameter is inside the numeric contract.
    ///
    /// Kernels call this once per call (O(channels), negligible next to the MACs), so a
    /// contract violation is a loud panic rather than silently different tiers.
    pub fn check(&self, channels: usize) {
        assert_eq!(self.bias.len(), channels, "epilogue: bias length != output channels");
        assert_eq!(
            self.multiplier.len(),
            channels,
            "epilogue: multiplier length != output channels"
        );
        assert_eq!(self.shift.len(), channels, "epilogue: shift length != output channels");
        // Folds without early exits, so that these per-call passes vectorize.
        let min_multiplier = self.multiplier.iter().fold(0, |lo: i32, &m| lo.min(m));
        assert!(min_multiplier >= 0, "epilogue: negative multiplier");
        let (lo, hi) =
            self.shift.iter().fold((MIN_SHIFT, MAX_SHIFT), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        assert!(
            lo >= MIN_SHIFT && hi <= MAX_SHIFT,
            "epilogue: shift outside {MIN_SHIFT}..={MAX_SHIFT}"
        );
        assert!(self.output_min <= self.output_max, "epilogue: output_min > output_max");
    }
}

/// Largest shift with which an epilogue can be [folded](Epilogue::foldable).
pub const FOLD_MAX_SHIFT: u8 = 53;

impl Epilogue<'_> {
    /// Whether, for accumulators at most `acc_max` in magnitude, every channel's bias,
    /// rounding term and output zero point fold exactly into one 64-bit addend
    /// ([`Epilogue::folded_addend`]), so a SIMD epilogue computes
    /// `(acc * m + addend) >> s` and skips the bias and zero-point additions. True of real
    /// models. Exact when `acc + bias` cannot wrap, since then
    /// `(acc + bias) m + 2^(s-1) = acc m + bias m + 2^(s-1)`, and adding `zp * 2^s` before the
    /// floor division by `2^s` adds exactly `zp` after it. No 64-bit sum can overflow:
    /// `|acc| + |bias| < 2^31` and `m < 2^31` bound `|acc m| + |bias m|` by `2^62`, and with
    /// `s <= 53`, `2^(s-1) + |zp 2^s| <= 2^52 + 2^60`.
    pub fn foldable(&self, acc_max: i64) -> bool {
        // Maxima without early exits, so that these per-call passes vectorize.
        let max_shift = self.shift.iter().fold(0, |hi, &s| hi.max(s));
        let max_bias = self.bias.iter().fold(0, |hi, &b| hi.max(b.unsigned_abs()));
        max_shift <= FOLD_MAX_SHIFT && i64::from(max_bias) + acc_max <= i64::from(i32::MAX)
    }

    /// Channel `c`'s folded addend `bias * m + 2^(s-1) + zp * 2^s` (meaningful where
    /// [`Epilogue::foldable`] holds).
    pub fn folded_addend(&self, c: usize) -> i64 {
        let (bias, m, s) = (i64::from(self.bias[c]), i64::from(self.multiplier[c]), self.shift[c]);
        bias * m + (1i64 << (s - 1)) + (i64::from(self.output_zero_point) << s)
    }
}

/// Low multiplier bits that must be zero for the [short form](Epilogue::short_form).
pub const SHORT_FORM_ZERO_BITS: u32 = 16;

impl Epilogue<'_> {
    /// Whether, for accumulators at most `acc_max` (below 2^15) in magnitude, every channel's
    /// epilogue evaluates exactly in int32 as `y = ((acc * (m >> 16) + B16) >> (s - 16)) + zp`
    /// with `B16 =` [`short_addend`](Epilogue::short_addend), so a SIMD epilogue works on
    /// int16 accumulators with 16-bit multiplies (`vpmaddwd`) instead of 64-bit products.
    /// Holds when every multiplier is a multiple of 2^16 (the packer's
    /// [`quantize_scale_short`] makes them so), `acc + bias` cannot wrap, every shift is at
    /// most [`FOLD_MAX_SHIFT`] and the int32 sum cannot overflow. Exact because, with
    /// `bias m + 2^(s-1) = 2^16 B16 + b0` (`0 <= b0 < 2^16`), the contract's
    /// `(acc + bias) m + 2^(s-1)` is `2^16 (acc (m >> 16) + B16) + b0`, and flooring that by
    /// `2^s` equals flooring `acc (m >> 16) + B16` by `2^(s-16)` (nested floor division); an
    /// arithmetic shift of an int32 by 32 or more is still that floor (0 or -1).
    pub fn short_form(&self, acc_max: i64) -> bool {
        acc_max < 1 << 15 && self.short_form_wide(acc_max)
    }

    /// The [short form](Epilogue::short_form) for accumulators kept in int32 (any `acc_max`):
    /// the same formula and proof, with only the int32 sum `acc (m >> 16) + B16` bounded, so
    /// a kernel with int32 sums multiplies them by `m >> 16` with a 32-bit multiply-add
    /// (NEON `mla`) instead of forming 64-bit products.
    pub fn short_form_wide(&self, acc_max: i64) -> bool {
        // `&` rather than `&&` inside: no early exit, so the pass vectorizes.
        self.foldable(acc_max)
            && (0..self.bias.len()).fold(true, |ok, c| {
                let m = i64::from(self.multiplier[c]);
                ok & (m % (1 << SHORT_FORM_ZERO_BITS) == 0)
                    & (self.short_addend_wide(c).abs() + acc_max * (m >> SHORT_FORM_ZERO_BITS)
                        <= i64::from(i32::MAX))
            })
    }

    /// Channel `c`'s short-form addend `floor((bias m + 2^(s-1)) / 2^16)` (meaningful where
    /// [`Epilogue::short_form`] holds).
    pub fn short_addend(&self, c: usize) -> i32 {
        self.short_addend_wide(c) as i32
    }

    fn short_addend_wide(&self, c: usize) -> i64 {
        let (bias, m, s) = (i64::from(self.bias[c]), i64::from(self.multiplier[c]), self.shift[c]);
        (bias * m + (1i64 << (s - 1))) >> SHORT_FORM_ZERO_BITS
    }
}

/// The requantization rule of the numeric contract, for one value (scalar reference).
#[inline]
pub fn requantize(acc: i32, bias: i32, multiplier: i32, shift: u8, zp: i8, min: i8, max: i8) -> i8 {
    let x = acc.wrapping_add(bias);
    let product = i64::from(x) * i64::from(multiplier) + (1i64 << (shift - 1));
    // |product| < 2^62 + 2^61 and shift >= 32, so the shifted value fits an i32 with room
    // for the zero point.
    let y = (product >> shift) as i32 + i32::from(zp);
    y.clamp(i32::from(min), i32::from(max)) as i8
}

/// Shape of a pointwise (1x1) convolution: `pixels` rows of `k` input channels to `n` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointwiseShape {
    /// Number of pixels (H * W), the rows of the NHWC activation matrix.
    pub pixels: usize,
    /// Input channels.
    pub k: usize,
    /// Output channels.
    pub n: usize,
}

impl PointwiseShape {
    /// Panics unless the shape is within the kernels' limits and the activation lengths fit
    /// it. Shared by `Kernels` and the SIMD entry points, whose pointer arithmetic relies on
    /// it.
    pub fn check_call(&self, input_len: usize, output_len: usize) {
        assert!(self.k > 0 && self.n > 0, "pointwise: empty channel count");
        assert!(self.k <= crate::MAX_POINTWISE_K, "pointwise: k above {}", crate::MAX_POINTWISE_K);
        assert_eq!(input_len, self.pixels * self.k, "pointwise: input length != pixels * k");
        assert_eq!(output_len, self.pixels * self.n, "pointwise: output length != pixels * n");
    }
}

/// Shape of a depthwise 3x3 convolution with padding 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthwiseShape {
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Channels (input = output).
    pub channels: usize,
    /// 1 or 2.
    pub stride: usize,
}

impl DepthwiseShape {
    /// Panics unless a call computing output `rows` fits this shape: input, weight
    /// (`9 * channels`) and output lengths, the row range, and the epilogue. Shared by
    /// `Kernels` and the SIMD entry points, whose pointer arithmetic relies on it.
    pub fn check_call(
        &self,
        input_len: usize,
        weights_len: usize,
        epi: &Epilogue<'_>,
        rows: &std::ops::Range<usize>,
        output_len: usize,
    ) {
        let (ho, wo, c) = (self.out_height(), self.out_width(), self.channels);
        assert!(c > 0, "depthwise: no channels");
        assert_eq!(input_len, self.height * self.width * c, "depthwise: input length");
        assert_eq!(weights_len, 9 * c, "depthwise: weights length != 9 * channels");
        assert!(rows.start <= rows.end && rows.end <= ho, "depthwise: rows out of range");
        assert_eq!(output_len, rows.len() * wo * c, "depthwise: output length");
        epi.check(c);
    }

    /// Output height: `(height - 1) / stride + 1` (3x3 kernel, padding 1).
    pub fn out_height(&self) -> usize {
        conv3x3_out(self.height, self.stride)
    }
    /// Output width.
    pub fn out_width(&self) -> usize {
        conv3x3_out(self.width, self.stride)
    }
}

/// Shape of the stem: full 3x3 stride-2 padding-1 convolution from RGB uint8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StemShape {
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub out_channels: usize,
}

impl StemShape {
    /// Panics unless a call computing output `rows` fits this shape: RGB input, weight
    /// (`27 * out_channels`) and output lengths, the row range, and the epilogue. Shared by
    /// `Kernels` and the SIMD entry points, whose pointer arithmetic relies on it.
    pub fn check_call(
        &self,
        input_len: usize,
        weights_len: usize,
        epi: &Epilogue<'_>,
        rows: &std::ops::Range<usize>,
        output_len: usize,
    ) {
        let (ho, wo, co) = (self.out_height(), self.out_width(), self.out_channels);
        assert!(co > 0, "stem: no output channels");
        assert_eq!(input_len, self.height * self.width * 3, "stem: input length");
        assert_eq!(weights_len, 27 * co, "stem: weights length != 27 * out_channels");
        assert!(rows.start <= rows.end && rows.end <= ho, "stem: rows out of range");
        assert_eq!(output_len, rows.len() * wo * co, "stem: output length");
        epi.check(co);
    }

    /// Input channels of the stem (RGB).
    pub const IN_CHANNELS: usize = 3;
    /// Output height.
    pub fn out_height(&self) -> usize {
        conv3x3_out(self.height, 2)
    }
    /// Output width.
    pub fn out_width(&self) -> usize {
        conv3x3_out(self.width, 2)
    }
}

/// Output extent of a 3x3 convolution with padding 1.
pub fn conv3x3_out(extent: usize, stride: usize) -> usize {
    assert!(extent > 0, "empty input");
    assert!(stride == 1 || stride == 2, "stride must be 1 or 2");
    (extent - 1) / stride + 1
}

/// Parameters of the quantized residual add `out = a + b` with two input scales.
///
/// ```text
/// x = (a - a_zero_point) * a_multiplier + (b - b_zero_point) * b_multiplier   (in i64)
/// y = (x + 2^(shift-1)) >> shift
/// out = clamp(y + output_zero_point, output_min, output_max)
/// ```
#[derive(Clone, Copy, Debug)]
pub struct AddParams {
    /// Zero point of `a`.
    pub a_zero_point: i8,
    /// Zero point of `b`.
    pub b_zero_point: i8,
    /// Multiplier of `a`, in `0..=ADD_MAX_MULTIPLIER`.
    pub a_multiplier: i32,
    /// Multiplier of `b`, in `0..=ADD_MAX_MULTIPLIER`.
    pub b_multiplier: i32,
    /// Right shift, in `1..=ADD_MAX_SHIFT`.
    pub shift: u8,
    /// Output zero point.
    pub output_zero_point: i8,
    /// Lower clamp bound.
    pub output_min: i8,
    /// Upper clamp bound.
    pub output_max: i8,
}

/// Largest residual-add multiplier: 255 * 2^22 * 2 < 2^31, so the sum fits an i32 too.
pub const ADD_MAX_MULTIPLIER: i32 = 1 << 22;
/// Largest residual-add shift.
pub const ADD_MAX_SHIFT: u8 = 31;

impl AddParams {
    /// Panics unless the parameters are inside the numeric contract.
    pub fn check(&self) {
        assert!(
            (0..=ADD_MAX_MULTIPLIER).contains(&self.a_multiplier)
                && (0..=ADD_MAX_MULTIPLIER).contains(&self.b_multiplier),
            "add: multiplier outside 0..=2^22"
        );
        assert!((1..=ADD_MAX_SHIFT).contains(&self.shift), "add: shift outside 1..=31");
        assert!(self.output_min <= self.output_max, "add: output_min > output_max");
    }
}

/// Parameters of global average pooling with requantization:
/// `acc[c] = sum over pixels of (q - input_zero_point)`, then the [`requantize`] rule with a
/// per-tensor multiplier and shift (which carry the `1 / pixels` factor).
#[derive(Clone, Copy, Debug)]
pub struct PoolParams {
    /// Input zero point.
    pub input_zero_point: i8,
    /// Fixed-point multiplier, `0..=i32::MAX`.
    pub multiplier: i32,
    /// Right shift, `MIN_SHIFT..=MAX_SHIFT`.
    pub shift: u8,
    /// Output zero point.
    pub output_zero_point: i8,
    /// Lower clamp bound.
    pub output_min: i8,
    /// Upper clamp bound.
    pub output_max: i8,
}

impl PoolParams {
    /// Panics unless the parameters are inside the numeric contract.
    pub fn check(&self) {
        assert!(self.multiplier >= 0, "pool: negative multiplier");
        assert!((MIN_SHIFT..=MAX_SHIFT).contains(&self.shift), "pool: shift out of range");
        assert!(self.output_min <= self.output_max, "pool: output_min > output_max");
    }
}

/// Computes a (multiplier, shift) pair in the contract's ranges approximating `scale`
/// (`0 < scale < 0.5`), with the multiplier normalised to `[2^30, 2^31)` for full precision.
///
/// Returns `None` when the scale is not representable. Used at model build time only.
pub fn quantize_scale(scale: f64) -> Option<(i32, u8)> {
    if !(scale.is_finite() && scale > 0.0) {
        return None;
    }
    let mut shift: i32 = 31;
    let mut m = scale * 2f64.powi(shift);
    while m < f64::from(1u32 << 30) {
        m *= 2.0;
        shift += 1;
    }
    while m >= f64::from(1u32 << 31) {
        m /= 2.0;
        shift -= 1;
    }
    let mut mi = m.round() as i64;
    if mi == 1i64 << 31 {
        mi >>= 1;
        shift -= 1;
    }
    if !(i32::from(MIN_SHIFT)..=i32::from(MAX_SHIFT)).contains(&shift) {
        return None;
    }
    Some((mi as i32, shift as u8))
}

/// [`quantize_scale`] with the multiplier rounded to its top 15 bits (a multiple of 2^16),
/// which the packer uses for convolutions so that kernels may take the
/// [short form](Epilogue::short_form) of the epilogue. The relative error of the scale is at
/// most 2^-15, below 0.004 of an output step for any int8 output.
pub fn quantize_scale_short(scale: f64) -> Option<(i32, u8)> {
    let (m, s) = quantize_scale(scale)?;
    let unit = 1i64 << SHORT_FORM_ZERO_BITS;
    let rounded = (i64::from(m) + unit / 2) / unit * unit;
    // m >= 2^30, so rounding up can only reach 2^31: halve it, one shift less.
    if rounded == 1i64 << 31 {
        let s = s.checked_sub(1).filter(|&s| s >= MIN_SHIFT)?;
        return Some(((rounded >> 1) as i32, s));
    }
    Some((rounded as i32, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requantize_rounds_half_up_and_clamps() {
        // scale 2^30 * 2^-32 = 0.25: 6 * 0.25 = 1.5 -> 2, -6 * 0.25 = -1.5 -> -1 (half up)
        assert_eq!(requantize(6, 0, 1 << 30, 32, 0, -128, 127), 2);
        assert_eq!(requantize(-6, 0, 1 << 30, 32, 0, -128, 127), -1);
        assert_eq!(requantize(-7, 0, 1 << 30, 32, 0, -128, 127), -2);
        assert_eq!(requantize(5, -1, 1 << 30, 32, 3, -128, 127), 4);
        assert_eq!(requantize(1000, 0, 1 << 30, 32, 0, -128, 127), 127);
        assert_eq!(requantize(-1000, 0, 1 << 30, 32, 0, 0, 127), 0);
        // the bias add wraps: MAX + 1 = -2^31, times ~2^31 >> 62 rounds to -1
        assert_eq!(requantize(i32::MAX, 1, i32::MAX, 62, 5, -128, 127), 4);
    }

    /// The folded form equals the contract wherever `foldable` says so, at the bounds too.
    #[test]
    fn folded_addend_matches_requantize() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let acc_max = 128 * 127 * 1344;
        for i in 0..200_000 {
            let shift = MIN_SHIFT + (next() % u64::from(FOLD_MAX_SHIFT - MIN_SHIFT + 1)) as u8;
            let multiplier = if i % 7 == 0 { i32::MAX } else { (next() >> 33) as i32 };
            let limit = i64::from(i32::MAX) - acc_max;
            let bias =
                if i % 5 == 0 { limit } else { (next() as i64).rem_euclid(2 * limit) - limit };
            let bias = bias as i32 * if i % 2 == 0 { 1 } else { -1 };
            let acc = if i % 3 == 0 {
                acc_max
            } else {
                (next() as i64).rem_euclid(2 * acc_max) - acc_max
            };
            let acc = acc as i32 * if i % 4 < 2 { 1 } else { -1 };
            let zp = next() as i8;
            let (bias_s, mult_s, shift_s) = ([bias], [multiplier], [shift]);
            let epi = Epilogue {
                bias: &bias_s,
                multiplier: &mult_s,
                shift: &shift_s,
                output_zero_point: zp,
                output_min: -128,
                output_max: 127,
            };
            assert!(epi.foldable(acc_max));
            let folded = (i64::from(acc) * i64::from(multiplier) + epi.folded_addend(0)) >> shift;
            let expected = requantize(acc, bias, multiplier, shift, zp, -128, 127);
            assert_eq!(
                folded.clamp(-128, 127) as i8,
                expected,
                "acc {acc} bias {bias} m {multiplier} s {shift}"
            );
        }
        let wide = Epilogue {
            bias: &[i32::MAX - 10],
            multiplier: &[1],
            shift: &[40],
            output_zero_point: 0,
            output_min: -128,
            output_max: 127,
        };
        assert!(!wide.foldable(11) && wide.foldable(10));
        assert!(!Epilogue { shift: &[54], bias: &[0], ..wide }.foldable(0));
    }

    /// `check` accepts the contract's ranges and rejects each violation, wherever in the
    /// channels it is.
    #[test]
    fn check_rejects_every_violation() {
        let ok = |m: &[i32], s: &[u8]| {
            let bias = vec![0; m.len()];
            let epi = Epilogue {
                bias: &bias,
                multiplier: m,
                shift: s,
                output_zero_point: 0,
                output_min: -128,
                output_max: 127,
            };
            std::panic::catch_unwind(|| epi.check(m.len())).is_ok()
        };
        let n = 37;
        let (m, s) = (vec![1 << 30; n], vec![40u8; n]);
        assert!(ok(&m, &s));
        assert!(ok(&vec![0; n], &vec![MIN_SHIFT; n]) && ok(&m, &vec![MAX_SHIFT; n]));
        for at in [0, 17, n - 1] {
            let mut bad = m.clone();
            bad[at] = -1;
            assert!(!ok(&bad, &s), "negative multiplier at {at}");
            for wrong in [MIN_SHIFT - 1, MAX_SHIFT + 1] {
                let mut bad = s.clone();
                bad[at] = wrong;
                assert!(!ok(&m, &bad), "shift {wrong} at {at}");
            }
        }
    }

    #[test]
    fn short_form_equals_the_contract() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut checked, mut checked_wide) = (0, 0);
        for case in 0..8000 {
            let bounds = [127i64, 128 * 16, 128 * 96, 128 * 255, (1 << 15) - 1, 128 * 384];
            let acc_max = [bounds[case % 5], bounds[case % 6], 128 * 576, 128 * 960][case % 4];
            let scale = 2f64.powf(-((next() % 1200) as f64) / 100.0 - 1.1);
            let (m, s) = quantize_scale_short(scale).unwrap();
            assert_eq!(m % (1 << 16), 0);
            let bias =
                [(next() % 200_001) as i32 - 100_000, i32::MAX - acc_max as i32][case % 7 / 6];
            let zp = (next() % 256) as i64 as i8;
            let (lo, hi) = if case % 3 == 0 { (zp, 127) } else { (-128, 127) };
            let (b, mm, sh) = ([bias], [m], [s]);
            let epi = Epilogue {
                bias: &b,
                multiplier: &mm,
                shift: &sh,
                output_zero_point: zp,
                output_min: lo,
                output_max: hi,
            };
            assert_eq!(epi.short_form(acc_max), acc_max < 1 << 15 && epi.short_form_wide(acc_max));
            if !epi.short_form_wide(acc_max) {
                continue;
            }
            if acc_max < 1 << 15 {
                checked += 1;
            } else {
                checked_wide += 1;
            }
            let a16 = epi.short_addend(0);
            for _ in 0..50 {
                let acc = (next() % (2 * acc_max as u64 + 1)) as i64 - acc_max;
                let acc = [acc, acc_max, -acc_max][(next() % 3) as usize] as i32;
                let y = ((acc * (m >> 16) + a16) >> (s - 16).min(31)) + i32::from(zp);
                let short = y.clamp(i32::from(lo), i32::from(hi)) as i8;
                assert_eq!(short, requantize(acc, bias, m, s, zp, lo, hi), "acc {acc} m {m} s {s}");
            }
        }
        assert!(checked > 1800, "short form held in only {checked} cases");
        assert!(checked_wide > 400, "wide short form held in only {checked_wide} cases");
        // Not short: a multiplier with low bits set, an accumulator bound of 2^15.
        let epi = Epilogue {
            bias: &[0],
            multiplier: &[(1 << 30) + 1],
            shift: &[40],
            output_zero_point: 0,
            output_min: -128,
            output_max: 127,
        };
        assert!(!epi.short_form(100));
        let epi = Epilogue { multiplier: &[1 << 30], ..epi };
        assert!(epi.short_form(100) && !epi.short_form(1 << 15));
    }

    #[test]
    fn quantize_scale_round_trips() {
        for &s in &[0.4999, 0.25, 0.1, 1e-3, 3.3e-5, 1e-9] {
            let (m, sh) = quantize_scale(s).unwrap();
            let back = f64::from(m) / 2f64.powi(i32::from(sh));
            assert!(((back - s) / s).abs() < 1e-8, "{s} -> {m} >> {sh}");
            assert!(m >= 1 << 30);
        }
        for &s in &[0.4999, 0.25, 0.1, 1e-3, 3.3e-5, 1e-9] {
            let (m, sh) = quantize_scale_short(s).unwrap();
            let back = f64::from(m) / 2f64.powi(i32::from(sh));
            assert!(((back - s) / s).abs() <= 2f64.powi(-15), "{s} -> {m} >> {sh}");
            assert!(m >= 1 << 30 && m % (1 << 16) == 0);
        }
        assert!(quantize_scale(0.6).is_none());
        assert!(quantize_scale(0.0).is_none());
        assert!(quantize_scale(1e-30).is_none());
    }
}
