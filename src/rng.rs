//! A small seeded random number generator (SplitMix64) for weight init, data order, generated
//! math problems and the planner's sampling: the project's only one.
//!
//! libtorch's generator is global to the process, so tests running in parallel would disturb each
//! other's draws; weights and data order come from this instead, and depend only on the seed. It
//! is fully specified here, so that its draws never change with a crate's version.

/// SplitMix64: tiny, fast, and good enough for initialisation and shuffling.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed; `stream` separates independent sequences of one seed.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng {
            state: seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F),
        };
        r.next_u64();
        r
    }

    /// A generator whose state is `state` as it is, with no mixing of seed and stream: the
    /// reference SplitMix64 seeded with `state` (for sequences that must stay as they were
    /// first published, such as the generated math problems).
    pub fn from_state(state: u64) -> Rng {
        Rng { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0; 0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `n` draws from a normal distribution (Box-Muller), as f32.
    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let u1 = self.next_f64().max(f64::MIN_POSITIVE);
            let u2 = self.next_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            out.push((mean + std * r * t.cos()) as f32);
            if out.len() < n {
                out.push((mean + std * r * t.sin()) as f32);
            }
        }
        out
    }

    /// `n` draws uniform in [lo, hi), as f32.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.next_f64()) as f32)
            .collect()
    }

    /// Shuffle a slice in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Run the body of test `name` (its full path) alone, in a child process of the test binary:
/// for tests that seed libtorch's global generator and compare what two computations draw from
/// it, which tests on other threads of the same binary would otherwise draw from in between.
#[cfg(all(test, feature = "torch"))]
pub(crate) fn alone(name: &str, body: impl FnOnce()) {
    if std::env::var_os("SWEEP_TEST_ALONE").is_some() {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--test-threads=1"])
        .env("SWEEP_TEST_ALONE", "1")
        .output()
        .expect("the test binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}, alone:\n{text}");
    assert!(text.contains("1 passed"), "{name} ran alone: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_state_is_the_reference_splitmix64() {
        // The reference implementation's first outputs for the state 1234567.
        let mut r = Rng::from_state(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            vec![
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn same_seed_same_draws_and_sane_moments() {
        let a = Rng::new(7, 0).normal_vec(10_000, 0.0, 2.0);
        let b = Rng::new(7, 0).normal_vec(10_000, 0.0, 2.0);
        assert_eq!(a, b);
        assert_ne!(a, Rng::new(7, 1).normal_vec(10_000, 0.0, 2.0));
        let mean: f64 = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var: f64 = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.1, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.1, "{var}");
        let mut v: Vec<u32> = (0..50).collect();
        Rng::new(1, 2).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
