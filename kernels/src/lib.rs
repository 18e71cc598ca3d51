//! # prom-kernels
//!
//! Compute kernels for PROM-quantized CNNs: ternary pointwise convolutions done with additions
//! only, and int8 depthwise, stem, pointwise (the multiply baseline), linear, residual add and
//! average pool. Tensors are NHWC, batch 1. Nothing here allocates in a kernel call.
//!
//! Three tiers implement the same numeric contract bit for bit (docs/FORMAT.md):
//! - `scalar`: plain loops, the oracle;
//! - `avx2`: x86_64 with AVX2 (module [`x86_64`]);
//! - `avx512`: x86_64 with AVX-512 F/BW/VL: its own add-only ternary pointwise kernel
//!   (32-pixel tiles), the AVX2 kernels for the other operations;
//! - `neon`: aarch64 (module `aarch64`).
//!
//! [`Kernels::detect`] picks the best tier once and logs it; the environment variable
//! `PROM_KERNEL_TIER` (`scalar`, `avx2`, `avx512`, `neon`) forces one, which is an error if this
//! CPU cannot run it.
//!
//! Unsafe code is fenced: SIMD functions are `#[target_feature]` `unsafe fn`s reachable only
//! through a capability token ([`x86_64::Avx2`], [`x86_64::Avx512`], `aarch64::Neon`) that can be
//! built only when the CPU has the feature.

pub mod buffer;
pub mod params;
mod scalar;
pub mod ternary;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use buffer::AlignedBuf;
pub use params::{
    quantize_scale, quantize_scale_short, requantize, AddParams, DepthwiseShape, Epilogue,
    PointwiseShape, PoolParams, StemShape,
};
pub use ternary::TernaryWeights;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable that forces a kernel tier.
pub const TIER_ENV: &str = "PROM_KERNEL_TIER";

/// A kernel implementation tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Portable reference loops.
    Scalar,
    /// x86_64 AVX2.
    Avx2,
    /// x86_64 AVX-512 (F, BW, VL).
    Avx512,
    /// aarch64 NEON (Advanced SIMD).
    Neon,
}

impl Tier {
    /// All tiers, in order of preference from worst to best.
    pub const ALL: [Tier; 4] = [Tier::Scalar, Tier::Avx2, Tier::Avx512, Tier::Neon];

    /// Lower-case name, as accepted by `PROM_KERNEL_TIER`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    /// Parses a tier name.
    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the tier.
    pub fn is_available(self) -> bool {
        Kernels::new(self).is_ok()
    }

    fn index(self) -> usize {
        match self {
            Tier::Scalar => 0,
            Tier::Avx2 => 1,
            Tier::Avx512 => 2,
            Tier::Neon => 3,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error choosing a tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierError {
    /// The tier cannot run on this CPU.
    Unavailable(Tier),
    /// `PROM_KERNEL_TIER` names no tier.
    UnknownName(String),
}

impl std::fmt::Display for TierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierError::Unavailable(t) => {
                write!(f, "kernel tier `{t}` is not available on this CPU")
            }
            TierError::UnknownName(n) => {
                write!(f, "{TIER_ENV}={n:?} names no kernel tier (scalar, avx2, avx512, neon)")
            }
        }
    }
}

impl std::error::Error for TierError {}

static CALLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Number of kernel calls each tier has served in this process. Tests use it to prove that
/// the tier they mean to test really ran.
pub fn tier_calls(tier: Tier) -> u64 {
    CALLS[tier.index()].load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug)]
enum Imp {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(x86_64::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(x86_64::Avx512),
    #[cfg(target_arch = "aarch64")]
    Neon(aarch64::Neon),
}

/// The kernels of one tier. Cheap to copy; every method is safe.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    imp: Imp,
}

/// Int8 pointwise weights packed for one tier's kernel (see [`Kernels::pack_int8_pointwise`]).
#[derive(Clone, Debug)]
pub struct Int8PointwiseWeights {
    tier: Tier,
    n: usize,
    k: usize,
    data: AlignedBuf,
}

impl Int8PointwiseWeights {
    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input channels.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Tier this packing is for.
    pub fn tier(&self) -> Tier {
        self.tier
    }
}

/// Ternary pointwise weights prepared for one tier's kernel (see
/// [`Kernels::prepare_ternary`]): the packed codes re-expressed in the form the tier's
/// add-only kernel reads without any arithmetic on weights (row-offset lists for the SIMD
/// tiers). Built once at load time; only `prepare_ternary` can make one, so its contents are
/// always valid for its shape.
#[derive(Clone, Debug)]
pub struct PreparedTernary {
    tier: Tier,
    n: usize,
    k: usize,
    data: AlignedBuf,
}

impl PreparedTernary {
    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input channels.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Tier this preparation is for.
    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// Bytes of memory the prepared form occupies.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Per-thread scratch memory for pointwise kernels, sized once by [`Kernels::scratch`].
#[derive(Clone, Debug)]
pub struct Scratch {
    buf: AlignedBuf,
}

impl Scratch {
    /// Scratch of `bytes` bytes (64-byte aligned).
    pub fn with_bytes(bytes: usize) -> Scratch {
        Scratch { buf: AlignedBuf::zeroed(bytes) }
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether the scratch is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 0
    }
}

impl Kernels {
    /// The best tier for this CPU, or the one `PROM_KERNEL_TIER` forces.
    ///
    /// Detection runs once per process and logs the chosen tier.
    pub fn detect() -> Result<Kernels, TierError> {
        static CHOSEN: OnceLock<Result<Tier, TierError>> = OnceLock::new();
        let tier = CHOSEN.get_or_init(|| {
            let chosen = match std::env::var(TIER_ENV) {
                Ok(name) if !name.trim().is_empty() => {
                    let tier = Tier::from_name(&name).ok_or(TierError::UnknownName(name))?;
                    Kernels::new(tier)?;
                    tracing::info!(tier = tier.name(), "kernel tier forced by {TIER_ENV}");
                    tier
                }
                _ => {
                    let best = Kernels::best().tier();
                    tracing::info!(tier = best.name(), "kernel tier detected");
                    best
                }
            };
            Ok(chosen)
        });
        Kernels::new(tier.clone()?)
    }

    /// The best tier this CPU supports, ignoring the environment.
    pub fn best() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = x86_64::Avx512::detect() {
            return Kernels { imp: Imp::Avx512(t) };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = x86_64::Avx2::detect() {
            return Kernels { imp: Imp::Avx2(t) };
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(t) = aarch64::Neon::detect() {
            return Kernels { imp: Imp::Neon(t) };
        }
        Kernels::scalar()
    }

    /// The scalar reference tier (always available).
    pub fn scalar() -> Kernels {
        Kernels { imp: Imp::Scalar }
    }

    /// A specific tier, if this CPU can run it.
    pub fn new(tier: Tier) -> Result<Kernels, TierError> {
        let imp = match tier {
            Tier::Scalar => Some(Imp::Scalar),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => x86_64::Avx2::detect().map(Imp::Avx2),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => x86_64::Avx512::detect().map(Imp::Avx512),
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => aarch64::Neon::detect().map(Imp::Neon),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        imp.map(|imp| Kernels { imp }).ok_or(TierError::Unavailable(tier))
    }

    /// This tier.
    pub fn tier(&self) -> Tier {
        match self.imp {
            Imp::Scalar => Tier::Scalar,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => Tier::Avx2,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => Tier::Avx512,
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(_) => Tier::Neon,
        }
    }

    /// Pixels per tile of this tier's pointwise kernels: splitting a layer's pixels across
    /// threads at multiples of it leaves no thread with a needless partial tile.
    pub fn pointwise_tile(&self) -> usize {
        match self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => 32,
            _ => 16,
        }
    }

    fn count(&self) {
        CALLS[self.tier().index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Scratch large enough for pointwise calls of this tier with up to `max_k` inputs and
    /// `max_n` outputs.
    pub fn scratch(&self, max_k: usize, max_n: usize) -> Scratch {
        let bytes = match self.imp {
            Imp::Scalar => max_n * 4,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => x86_64::scratch_bytes(max_k, max_n),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => x86_64::scratch_bytes_avx512(max_k, max_n),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(_) => aarch64::scratch_bytes(max_k, max_n),
        };
        Scratch::with_bytes(bytes.max(max_n * 4))
    }

    /// Prepares packed ternary weights (layout in [`ternary`]) for this tier's kernel, once,
    /// at load time. Panics if the codes do not match the shape or a code is above 80.
    pub fn prepare_ternary(&self, weights: TernaryWeights<'_>) -> PreparedTernary {
        weights.check();
        assert!(weights.k > 0 && weights.n > 0, "ternary weights: empty shape");
        let (n, k) = (weights.n, weights.k);
        let data = match self.imp {
            Imp::Scalar => {
                let mut buf = AlignedBuf::zeroed(weights.codes.len());
                buf.as_u8_mut(weights.codes.len()).copy_from_slice(weights.codes);
                buf
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => x86_64::prepare_lists(weights.codes, k, n),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => x86_64::prepare_lists_avx512(weights.codes, k, n),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(_) => aarch64::prepare_lists(weights.codes, k, n),
        };
        PreparedTernary { tier: self.tier(), n, k, data }
    }

    /// Ternary pointwise convolution: `input` is `pixels x k` int8, `output` is
    /// `pixels x n` int8, weights prepared by [`Kernels::prepare_ternary`] of this tier.
    /// Add-only MAC work.
    ///
    /// Panics if a length or parameter breaks the contract (the engine validates first).
    pub fn ternary_pointwise(
        &self,
        shape: PointwiseShape,
        input: &[i8],
        weights: &PreparedTernary,
        epi: &Epilogue<'_>,
        output: &mut [i8],
        scratch: &mut Scratch,
    ) {
        shape.check_call(input.len(), output.len());
        assert!(weights.n == shape.n && weights.k == shape.k, "ternary weights: shape mismatch");
        assert_eq!(weights.tier, self.tier(), "ternary weights prepared for another tier");
        epi.check(shape.n);
        self.count();
        match self.imp {
            Imp::Scalar => {
                let codes = weights.data.as_u8(shape.n * ternary::groups(shape.k));
                let w = TernaryWeights { n: shape.n, k: shape.k, codes };
                let acc = scratch.buf.as_i32_mut(shape.n);
                scalar::ternary_pointwise(shape, input, w, epi, output, acc)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => {
                x86_64::ternary_pointwise(t, shape, input, &weights.data, epi, output, scratch)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => x86_64::ternary_pointwise_avx512(
                t,
                shape,
                input,
                &weights.data,
                epi,
                output,
                scratch,
            ),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(t) => {
                aarch64::ternary_pointwise(t, shape, input, &weights.data, epi, output, scratch)
            }
        }
    }

    /// The int8-multiply pointwise kernel this tier runs (the baseline `promctl benchmark`
    /// compares the add-only kernels against), in XNNPACK's naming.
    pub fn int8_pointwise_kernel(&self) -> &'static str {
        match self.imp {
            Imp::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => "int8_pw_c2__avx2 (vpmaddwd)",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => "int8_pw_12x32c2__avx512 (vpmaddwd)",
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(t) if t.has_dot_product() => "int8_pw_4x16c4__neon_dot (sdot)",
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(_) => "int8_pw_4x4c16__neon (smull + sadalp)",
        }
    }

    /// Packs row-major `n x k` int8 weights for this tier's int8 pointwise kernel.
    pub fn pack_int8_pointwise(&self, weights: &[i8], n: usize, k: usize) -> Int8PointwiseWeights {
        assert_eq!(weights.len(), n * k, "int8 pointwise weights: length != n * k");
        let data = match self.imp {
            Imp::Scalar => AlignedBuf::from_i8(weights),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => x86_64::pack_int8_pointwise(weights, n, k),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => x86_64::pack_int8_pointwise_avx512(weights, n, k),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(t) => aarch64::pack_int8_pointwise(t, weights, n, k),
        };
        Int8PointwiseWeights { tier: self.tier(), n, k, data }
    }

    /// Int8-multiply pointwise convolution (the baseline the ternary kernel is measured
    /// against), same shapes and epilogue as [`Kernels::ternary_pointwise`].
    pub fn int8_pointwise(
        &self,
        shape: PointwiseShape,
        input: &[i8],
        weights: &Int8PointwiseWeights,
        epi: &Epilogue<'_>,
        output: &mut [i8],
        scratch: &mut Scratch,
    ) {
        shape.check_call(input.len(), output.len());
        assert!(weights.n == shape.n && weights.k == shape.k, "int8 weights: shape mismatch");
        assert_eq!(weights.tier, self.tier(), "int8 weights packed for another tier");
        epi.check(shape.n);
        self.count();
        match self.imp {
            Imp::Scalar => {
                let _ = scratch;
                scalar::int8_pointwise(
                    shape,
                    input,
                    weights.data.as_i8(shape.n * shape.k),
                    epi,
                    output,
                )
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => {
                x86_64::int8_pointwise(t, shape, input, &weights.data, epi, output, scratch)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => {
                x86_64::int8_pointwise_avx512(t, shape, input, &weights.data, epi, output, scratch)
            }
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(t) => {
                aarch64::int8_pointwise(t, shape, input, &weights.data, epi, output, scratch)
            }
        }
    }

    /// Depthwise 3x3 convolution, padding 1 with `input_zero_point`, stride 1 or 2. Weights
    /// are `[ky * 3 + kx][channel]`. Computes output rows `rows` into `output`
    /// (`rows.len() * out_width * channels` values), so threads can split the rows.
    #[allow(clippy::too_many_arguments)]
    pub fn depthwise3x3(
        &self,
        shape: DepthwiseShape,
        input: &[i8],
        input_zero_point: i8,
        weights: &[i8],
        epi: &Epilogue<'_>,
        rows: Range<usize>,
        output: &mut [i8],
    ) {
        shape.check_call(input.len(), weights.len(), epi, &rows, output.len());
        self.count();
        match self.imp {
            Imp::Scalar => {
                scalar::depthwise3x3(shape, input, input_zero_point, weights, epi, rows, output)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => {
                x86_64::depthwise3x3(t, shape, input, input_zero_point, weights, epi, rows, output)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => x86_64::depthwise3x3_avx512(
                t,
                shape,
                input,
                input_zero_point,
                weights,
                epi,
                rows,
                output,
            ),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(t) => {
                aarch64::depthwise3x3(t, shape, input, input_zero_point, weights, epi, rows, output)
            }
        }
    }

    /// Stem: 3x3 stride-2 padding-1 convolution from uint8 RGB (`height x width x 3`) to
    /// int8, weights `[(ky * 3 + kx) * 3 + ci][out_channel]`, output rows `rows`.
    #[allow(clippy::too_many_arguments)]
    pub fn stem3x3s2(
        &self,
        shape: StemShape,
        input: &[u8],
        input_zero_point: u8,
        weights: &[i8],
        epi: &Epilogue<'_>,
        rows: Range<usize>,
        output: &mut [i8],
    ) {
        shape.check_call(input.len(), weights.len(), epi, &rows, output.len());
        self.count();
        match self.imp {
            Imp::Scalar => {
                scalar::stem3x3s2(shape, input, input_zero_point, weights, epi, rows, output)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => {
                x86_64::stem3x3s2(t, shape, input, input_zero_point, weights, epi, rows, output)
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => x86_64::stem3x3s2_avx512(
                t,
                shape,
                input,
                input_zero_point,
                weights,
                epi,
                rows,
                output,
            ),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(t) => {
                aarch64::stem3x3s2(t, shape, input, input_zero_point, weights, epi, rows, output)
            }
        }
    }

    /// Int8 linear layer (classifier) to int32 logits; weights row-major `n x k`, bias with
    /// the input zero point folded in.
    pub fn linear(&self, input: &[i8], weights: &[i8], bias: &[i32], logits: &mut [i32]) {
        assert_eq!(weights.len(), input.len() * logits.len(), "linear: weights length");
        assert_eq!(bias.len(), logits.len(), "linear: bias length");
        self.count();
        match self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => x86_64::linear(t, input, weights, bias, logits),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => x86_64::linear(t.avx2(), input, weights, bias, logits),
            _ => scalar::linear(input, weights, bias, logits),
        }
    }

    /// Quantized residual add of two int8 tensors of equal length.
    pub fn add(&self, a: &[i8], b: &[i8], params: &AddParams, output: &mut [i8]) {
        assert!(a.len() == b.len() && a.len() == output.len(), "add: length mismatch");
        params.check();
        self.count();
        match self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => x86_64::add(t, a, b, params, output),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => x86_64::add_avx512(t, a, b, params, output),
            _ => scalar::add(a, b, params, output),
        }
    }

    /// Global average pool of `pixels x channels` int8 to `channels` int8.
    pub fn global_avg_pool(
        &self,
        input: &[i8],
        channels: usize,
        params: &PoolParams,
        out: &mut [i8],
    ) {
        assert!(
            channels > 0 && input.len().is_multiple_of(channels),
            "pool: input not pixels x channels"
        );
        assert!(!input.is_empty(), "pool: empty input");
        assert!(input.len() / channels <= 1 << 16, "pool: more than 65536 pixels");
        assert_eq!(out.len(), channels, "pool: output length");
        params.check();
        self.count();
        match self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => x86_64::global_avg_pool(t, input, channels, params, out),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => x86_64::global_avg_pool(t.avx2(), input, channels, params, out),
            _ => scalar::global_avg_pool(input, channels, params, out),
        }
    }
}

/// Largest input channel count of a pointwise call.
///
/// Accumulator bound: each int8 activation is at most 128 in magnitude, so a ternary sum over
/// `k` inputs is at most `128 * k`, and an int8 product sum at most `128 * 127 * k`. With
/// `k <= 16384` these are below 2^21 and 2^28: no int32 accumulator can overflow. MobileNetV2
/// at width 1.4 needs at most 1344 (`960 * 1.4`); the tests run that worst case with every
/// input at -128 and every weight at -1 (and at +1). Tiers that accumulate partial sums in
/// int16 widen often enough by construction (see each kernel's comment).
pub const MAX_POINTWISE_K: usize = 16384;
