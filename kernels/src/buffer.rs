//! A 64-byte aligned, zero-initialised byte buffer with typed integer views, for scratch
//! memory and packed weights (SIMD loads of whole cache lines, no split loads).

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Heap buffer of `len` bytes aligned to 64 bytes.
#[derive(Clone)]
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}

macro_rules! typed_views {
    ($($get:ident, $get_mut:ident, $t:ty;)*) => {$(
        /// The first `count` elements as a typed slice. Panics if the buffer is too small.
        pub fn $get(&self, count: usize) -> &[$t] {
            assert!(count * std::mem::size_of::<$t>() <= self.len, "aligned buffer too small");
            // SAFETY: the storage is at least `count * size_of::<T>()` initialised bytes,
            // 64-byte aligned (more than any integer type needs), and every bit pattern is a
            // valid integer; the borrow of `self` keeps it alive and unaliased by writers.
            unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<$t>(), count) }
        }
        /// The first `count` elements as a mutable typed slice. Panics if too small.
        pub fn $get_mut(&mut self, count: usize) -> &mut [$t] {
            assert!(count * std::mem::size_of::<$t>() <= self.len, "aligned buffer too small");
            // SAFETY: as above, and the exclusive borrow of `self` makes the slice unique.
            unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<$t>(), count) }
        }
    )*};
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf { lines: vec![Line([0; 64]); len.div_ceil(64)], len }
    }

    /// A buffer holding a copy of `values`.
    pub fn from_i8(values: &[i8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(values.len());
        b.as_i8_mut(values.len()).copy_from_slice(values);
        b
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the storage (64-byte aligned).
    pub fn as_ptr(&self) -> *const u8 {
        self.lines.as_ptr().cast()
    }

    /// Start of the storage, mutable (64-byte aligned).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr().cast()
    }

    typed_views! {
        as_u8, as_u8_mut, u8;
        as_u16, as_u16_mut, u16;
        as_i8, as_i8_mut, i8;
        as_i16, as_i16_mut, i16;
        as_i32, as_i32_mut, i32;
    }
}
