//! Initial noise from a documented, seeded, platform-independent generator: NumPy's legacy
//! `np.random.RandomState(seed).standard_normal(shape)` (MT19937 and the polar Box–Muller method),
//! cast to f32. The same latents can be made in Python, which is how diffusers' own AudioLDM tests
//! inject noise; `libm` makes `ln` and `sqrt` identical on every platform.

/// The 32-bit Mersenne Twister, seeded as NumPy's `RandomState(seed)` seeds it for an integer seed.
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1812433253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 == 1 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// An integer in `low..high` as NumPy's legacy `RandomState.randint(low, high)` draws it:
    /// 32-bit draws masked to the range's bit width, redrawn while out of range. `high` must
    /// exceed `low` by at most 2^32.
    pub fn randint(&mut self, low: u64, high: u64) -> u64 {
        let range = high.saturating_sub(low).saturating_sub(1);
        if range == 0 {
            return low;
        }
        let range = range.min(u64::from(u32::MAX)) as u32;
        let mask = u32::MAX >> range.leading_zeros();
        loop {
            let value = self.next_u32() & mask;
            if value <= range {
                return low + u64::from(value);
            }
        }
    }

    /// A double in [0, 1) with 53 random bits (NumPy's `random_sample`).
    pub fn next_f64(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (a as f64 * 67108864.0 + b as f64) / 9007199254740992.0
    }
}

/// Standard normal values as NumPy's legacy `standard_normal` draws them.
pub struct LegacyNormal {
    mt: Mt19937,
    cached: Option<f64>,
}

impl LegacyNormal {
    pub fn new(seed: u32) -> Self {
        Self {
            mt: Mt19937::new(seed),
            cached: None,
        }
    }

    pub fn next_f64(&mut self) -> f64 {
        if let Some(value) = self.cached.take() {
            return value;
        }
        loop {
            let x1 = 2.0 * self.mt.next_f64() - 1.0;
            let x2 = 2.0 * self.mt.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = libm::sqrt(-2.0 * libm::log(r2) / r2);
                self.cached = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `count` values, cast to f32.
    pub fn sample(&mut self, count: usize) -> Vec<f32> {
        (0..count).map(|_| self.next_f64() as f32).collect()
    }
}

/// `np.random.RandomState(seed).standard_normal(count).astype(np.float32)`.
pub fn standard_normal(seed: u32, count: usize) -> Vec<f32> {
    LegacyNormal::new(seed).sample(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by NumPy: `np.random.RandomState(0).standard_normal(4)` and
    /// `np.random.RandomState(0).randint(0, 2**32, 2, dtype=np.uint64)`-independent raw draws.
    #[test]
    fn matches_numpy_legacy_normal() {
        let got: Vec<f64> = {
            let mut n = LegacyNormal::new(0);
            (0..4).map(|_| n.next_f64()).collect()
        };
        let want = [
            1.764052345967664,
            0.4001572083672233,
            0.9787379841057392,
            2.240893199201458,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
        // The first raw output of MT19937 seeded with 5489 (the reference implementation's default).
        assert_eq!(Mt19937::new(5489).next_u32(), 3499211612);
    }

    #[test]
    fn randint_matches_numpy() {
        // `r = np.random.RandomState(seed); [r.randint(0, high) for _ in range(3)]`.
        for (seed, high, want) in [
            (0, 24_001, [2732, 10799, 9845]),
            (7, 24_001, [16921, 10742, 5699]),
            (42, 5, [3, 4, 2]),
            (123, 1 << 32, [2991312382, 3062119789, 1228959102]),
            (5, 1_000_001, [297827, 18638, 544751]),
        ] {
            let mut rng = Mt19937::new(seed);
            let got: Vec<u64> = (0..3).map(|_| rng.randint(0, high)).collect();
            assert_eq!(got, want, "seed {seed}, high {high}");
        }
        // `np.random.seed(42); np.random.randint(0, 24001)`: the global generator is the same.
        assert_eq!(Mt19937::new(42).randint(0, 24_001), 23654);
        assert_eq!(Mt19937::new(9).randint(3, 4), 3);
    }
}
