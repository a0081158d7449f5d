//! What load is generated; pure, no I/O: the operation mix, key choice (uniform or Zipfian), key
//! names, the value, and the random numbers behind them.

use anyhow::{bail, Context, Result};

/// Digits of a key number. The same as `redis-benchmark -r` (`key:000000001234`), so both tools
/// send byte-for-byte the same keys, and every key has the same length whatever `--keys` is.
pub const KEY_DIGITS: usize = 12;
pub const KEY_PREFIX: &[u8] = b"key:";
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_DIGITS;
/// Zipf exponents above this put all but a sliver of the load on key 0: nothing left to measure.
pub const MAX_THETA: f64 = 10.0;
/// Tries of the Zipf rejection step before taking the last candidate (each accepted with p > 0.98).
const MAX_REJECTIONS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get = 0,
    Put = 1,
}

/// The fraction of operations that are GETs (the rest are PUTs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    pub get: f64,
}

impl Mix {
    /// `"get=50,put=50"`: ratios at any scale; a missing op is 0.
    pub fn parse(text: &str) -> Result<Mix> {
        let (mut get, mut put) = (0.0f64, 0.0f64);
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (name, number) =
                item.split_once('=').with_context(|| format!("{item:?} is not op=ratio with op get or put"))?;
            let weight: f64 = number
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .with_context(|| format!("ratio {:?} of {} is not a number >= 0", number.trim(), name.trim()))?;
            match name.trim().to_ascii_lowercase().as_str() {
                "get" => get = weight,
                "put" | "set" => put = weight,
                other => bail!("unknown op {other:?} in the mix (get and put are supported)"),
            }
        }
        if get + put <= 0.0 {
            bail!("the mix needs at least one op with a ratio above 0");
        }
        Ok(Mix { get: get / (get + put) })
    }

    pub fn choose(&self, u: f64) -> Op {
        if u < self.get {
            Op::Get
        } else {
            Op::Put
        }
    }

    /// As `parse` reads it, in percent: `get=50,put=50`.
    pub fn describe(&self) -> String {
        format!("get={},put={}", percent(self.get), percent(1.0 - self.get))
    }
}

fn percent(fraction: f64) -> String {
    let value = (fraction * 100.0 * 1e4).round() / 1e4;
    format!("{value}")
}

/// A small, fast, seedable generator (SplitMix64): plenty for choosing keys and ops.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf-distributed ranks 0..n-1 (0 the most popular): P(k) = (k+1)^-theta / H(n, theta), by
/// rejection-inversion (Hormann and Derflinger 1996), exactly as `client/bench/workload.py` does.
/// theta = 0 is the uniform distribution.
#[derive(Clone, Debug)]
pub struct KeyChooser {
    n: u64,
    theta: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl KeyChooser {
    pub fn new(n: u64, theta: f64) -> Result<KeyChooser> {
        if n < 1 {
            bail!("--keys must be at least 1");
        }
        if !(0.0..=MAX_THETA).contains(&theta) {
            bail!("zipfian theta must be in [0, {MAX_THETA}], not {theta}");
        }
        let mut chooser = KeyChooser { n, theta, h_integral_x1: 0.0, h_integral_n: 0.0, s: 0.0 };
        chooser.h_integral_x1 = chooser.h_integral(1.5) - 1.0;
        chooser.h_integral_n = chooser.h_integral(n as f64 + 0.5);
        chooser.s = 2.0 - chooser.h_integral_inverse(chooser.h_integral(2.5) - chooser.h(2.0));
        Ok(chooser)
    }

    pub fn uniform(n: u64) -> Result<KeyChooser> {
        KeyChooser::new(n, 0.0)
    }

    pub fn index(&self, rng: &mut Rng) -> u64 {
        if self.n == 1 {
            return 0;
        }
        if self.theta == 0.0 {
            return ((rng.next_f64() * self.n as f64) as u64).min(self.n - 1);
        }
        let mut k = 1u64;
        for _ in 0..MAX_REJECTIONS {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            k = if x >= self.n as f64 { self.n } else { ((x + 0.5) as u64).max(1) };
            if k as f64 - x <= self.s || u >= self.h_integral(k as f64 + 0.5) - self.h(k as f64) {
                break;
            }
        }
        k - 1
    }

    fn h(&self, x: f64) -> f64 {
        (-self.theta * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.theta) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = x * (1.0 - self.theta);
        if t <= -1.0 {
            return if x > 0.0 { f64::INFINITY } else { 0.0 };
        }
        (log1p_over_x(t) * x).exp()
    }
}

fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// Writes key number `index` as `key:000000001234` into `out`.
pub fn key_name(index: u64, out: &mut [u8; KEY_LEN]) {
    out[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX);
    let mut n = index;
    for slot in out[KEY_PREFIX.len()..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The value every PUT sends: `size` deterministic bytes, a repeating printable pattern.
pub fn make_value(size: usize) -> Vec<u8> {
    const PATTERN: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..size).map(|i| PATTERN[i % PATTERN.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_ratios_at_any_scale() {
        assert_eq!(Mix::parse("get=50,put=50").unwrap().get, 0.5);
        assert_eq!(Mix::parse("get=9, put=1").unwrap().get, 0.9);
        assert_eq!(Mix::parse("put=100").unwrap().get, 0.0);
        assert_eq!(Mix::parse("get=1").unwrap().get, 1.0);
        assert_eq!(Mix::parse("get=3,set=1").unwrap().describe(), "get=75,put=25");
        assert!(Mix::parse("get=0,put=0").is_err());
        assert!(Mix::parse("delete=1").is_err());
        assert!(Mix::parse("get=x").is_err());
        assert!(Mix::parse("get=-1,put=1").is_err());
        assert!(Mix::parse("get").is_err());
    }

    #[test]
    fn mix_chooses_by_fraction() {
        let mix = Mix::parse("get=25,put=75").unwrap();
        assert_eq!(mix.choose(0.0), Op::Get);
        assert_eq!(mix.choose(0.2499), Op::Get);
        assert_eq!(mix.choose(0.25), Op::Put);
        assert_eq!(mix.choose(0.9999), Op::Put);
    }

    #[test]
    fn key_names_have_a_fixed_width() {
        let mut key = [0u8; KEY_LEN];
        key_name(1234, &mut key);
        assert_eq!(&key, b"key:000000001234");
        key_name(0, &mut key);
        assert_eq!(&key, b"key:000000000000");
        key_name(999_999_999_999, &mut key);
        assert_eq!(&key, b"key:999999999999");
    }

    #[test]
    fn values_are_deterministic_and_sized() {
        assert_eq!(make_value(0), b"");
        assert_eq!(make_value(12), b"0123456789ab");
        assert_eq!(make_value(100).len(), 100);
        assert_eq!(make_value(100), make_value(100));
    }

    #[test]
    fn rng_is_seeded_and_in_range() {
        let mut a = Rng::new(1, 0);
        let mut b = Rng::new(1, 0);
        let mut c = Rng::new(1, 1);
        let first: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..8).map(|_| c.next_u64()).collect::<Vec<_>>());
        for _ in 0..10_000 {
            let u = a.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }

    fn frequencies(chooser: &KeyChooser, n: usize, draws: usize) -> Vec<f64> {
        let mut rng = Rng::new(42, 7);
        let mut counts = vec![0usize; n];
        for _ in 0..draws {
            counts[chooser.index(&mut rng) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let freq = frequencies(&KeyChooser::uniform(10).unwrap(), 10, 200_000);
        for f in freq {
            assert!((f - 0.1).abs() < 0.005, "{f}");
        }
    }

    #[test]
    fn zipfian_matches_its_probabilities() {
        for theta in [0.5, 0.99, 1.0, 2.0] {
            let n = 20;
            let freq = frequencies(&KeyChooser::new(n, theta).unwrap(), n as usize, 400_000);
            let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-theta)).collect();
            let total: f64 = weights.iter().sum();
            for (k, (f, w)) in freq.iter().zip(&weights).enumerate() {
                let expected = w / total;
                assert!((f - expected).abs() < 0.006, "theta {theta} rank {k}: {f} vs {expected}");
            }
        }
    }

    #[test]
    fn zipfian_stays_in_range() {
        let mut rng = Rng::new(3, 3);
        for (n, theta) in [(1, 0.99), (2, 0.99), (1_000_000_000, 0.99), (5, 10.0), (7, 0.01)] {
            let chooser = KeyChooser::new(n, theta).unwrap();
            for _ in 0..10_000 {
                assert!(chooser.index(&mut rng) < n);
            }
        }
        assert!(KeyChooser::new(0, 0.5).is_err());
        assert!(KeyChooser::new(10, 11.0).is_err());
        assert!(KeyChooser::new(10, -0.1).is_err());
    }
}
