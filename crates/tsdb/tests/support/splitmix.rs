//! The random source of the gen.py-shaped data in tsdb's tests and benches: splitmix64 with
//! gen.py's distributions (not bit-identical to Python's Mersenne Twister). One copy, included
//! with `#[path]` by `tests/codec_props.rs` and `benches/{codec,segments,window}.rs`, so their
//! data sets stay the same.

/// splitmix64 state.
pub struct Gen(pub u64);

impl Gen {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Normal with mean 0 and standard deviation `sigma` (Box–Muller).
    pub fn gauss(&mut self, sigma: f64) -> f64 {
        let (u1, u2) = (self.uniform().max(f64::MIN_POSITIVE), self.uniform());
        sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
