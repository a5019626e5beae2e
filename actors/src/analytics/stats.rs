//! The statistics of experiment results: a rate's 95% interval (Wilson score), the interval of
//! the difference of two rates (Newcombe's hybrid score method, built on the Wilson
//! intervals), and whether two rates differ: the pooled two-proportion z-test, or Fisher's
//! exact test when a cell of the 2x2 table is expected to hold fewer than 5 (where the normal
//! approximation is poor).
//!
//! The tests compare with SciPy 1.17 (`scipy.stats.fisher_exact`, `binomtest(...).
//! proportion_ci(method="wilson")`, `norm`): an independent implementation.

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A rate and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// successes / trials (0 with no trials).
    pub value: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// The Wilson score interval of `successes` of `trials` (`None` with no trials).
pub fn wilson(successes: u64, trials: u64) -> Option<Rate> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Rate {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    })
}

/// Which test a comparison used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// Pooled two-proportion z-test.
    ZTest,
    /// Fisher's exact test (two-sided).
    FisherExact,
}

impl Test {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Test::ZTest => "two_proportion_z",
            Test::FisherExact => "fisher_exact",
        }
    }
}

/// Two rates compared: `a - b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The difference of the rates.
    pub difference: f64,
    /// Its 95% interval (Newcombe).
    pub low: f64,
    /// Its 95% interval (Newcombe).
    pub high: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// How the p-value was found.
    pub test: Test,
}

/// Compares `a_successes` of `a_trials` with `b_successes` of `b_trials` (`None` when either
/// has no trials).
pub fn compare(
    a_successes: u64,
    a_trials: u64,
    b_successes: u64,
    b_trials: u64,
) -> Option<Comparison> {
    let a = wilson(a_successes, a_trials)?;
    let b = wilson(b_successes, b_trials)?;
    let difference = a.value - b.value;
    let low = difference - ((a.value - a.low).powi(2) + (b.high - b.value).powi(2)).sqrt();
    let high = difference + ((a.high - a.value).powi(2) + (b.value - b.low).powi(2)).sqrt();
    let (s1, n1, s2, n2) = (
        a_successes.min(a_trials),
        a_trials,
        b_successes.min(b_trials),
        b_trials,
    );
    let total = (n1 + n2) as f64;
    let successes = (s1 + s2) as f64;
    let failures = total - successes;
    let expected_min = [
        n1 as f64 * successes / total,
        n1 as f64 * failures / total,
        n2 as f64 * successes / total,
        n2 as f64 * failures / total,
    ]
    .into_iter()
    .fold(f64::INFINITY, f64::min);
    let (p_value, test) = if expected_min < 5.0 {
        (fisher_exact(s1, n1 - s1, s2, n2 - s2), Test::FisherExact)
    } else {
        let pooled = successes / total;
        let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
        let p = if se == 0.0 {
            1.0
        } else {
            2.0 * normal_sf((difference / se).abs())
        };
        (p, Test::ZTest)
    };
    Some(Comparison {
        difference,
        low: low.max(-1.0),
        high: high.min(1.0),
        p_value: p_value.clamp(0.0, 1.0),
        test,
    })
}

/// The upper tail of the standard normal distribution, `P(Z > x)`.
pub fn normal_sf(x: f64) -> f64 {
    0.5 * erfc(x / std::f64::consts::SQRT_2)
}

/// The complementary error function (W. J. Cody's rational Chebyshev approximations as in
/// Numerical Recipes' `erfcc`, fractional error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, nine coefficients: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Fisher's exact test, two-sided, of the table `[[a, b], [c, d]]`: the probability of every
/// table with the same margins that is no more likely than the one seen.
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let row1 = a + b;
    let row2 = c + d;
    let col1 = a + c;
    let n = row1 + row2;
    if n == 0 {
        return 1.0;
    }
    let ln_p = |x: u64| ln_choose(row1, x) + ln_choose(row2, col1 - x) - ln_choose(n, col1);
    let low = col1.saturating_sub(row2);
    let high = col1.min(row1);
    let seen = ln_p(a);
    // Tables as likely as the one seen, within rounding, count as well (as SciPy does).
    let tolerance = 1e-7;
    let mut p = 0.0;
    for x in low..=high {
        let l = ln_p(x);
        if l <= seen + tolerance {
            p += l.exp();
        }
    }
    p.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tolerance: f64) {
        assert!((got - want).abs() <= tolerance, "{got} against {want}");
    }

    #[test]
    fn wilson_intervals_match_scipy() {
        // scipy.stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        let r = wilson(42, 100).unwrap();
        close(r.value, 0.42, 1e-12);
        close(r.low, 0.327_983_826_747_354, 1e-9);
        close(r.high, 0.517_935_132_969_570, 1e-9);
        let r = wilson(0, 20).unwrap();
        close(r.low, 0.0, 1e-12);
        close(r.high, 0.161_125_158_052_819, 1e-9);
        let r = wilson(20, 20).unwrap();
        close(r.low, 0.838_874_841_947_181, 1e-9);
        close(r.high, 1.0, 1e-12);
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn the_normal_tail_matches_scipy() {
        // scipy.stats.norm.sf
        close(normal_sf(1.96), 1.0 - 0.975_002_104_851_780, 2e-8);
        close(normal_sf(3.5), 0.000_232_629_079_035_525, 1e-9);
        close(normal_sf(0.0), 0.5, 1e-7);
        close(normal_sf(-1.0), 0.841_344_746_068_543, 1e-7);
    }

    #[test]
    fn fishers_exact_test_matches_scipy() {
        // scipy.stats.fisher_exact(table).pvalue
        close(fisher_exact(8, 2, 1, 5), 0.034_965_034_965_035, 1e-9);
        close(fisher_exact(3, 7, 9, 1), 0.019_766_611_097_880, 1e-9);
        close(fisher_exact(0, 10, 0, 10), 1.0, 1e-12);
    }

    #[test]
    fn two_rates_are_compared_with_the_test_their_counts_allow() {
        // Large counts: the pooled z-test (z = 2.4106, p = 0.015925 by scipy's norm.sf).
        let c = compare(120, 400, 90, 400).unwrap();
        assert_eq!(c.test, Test::ZTest);
        close(c.difference, 0.075, 1e-12);
        close(c.p_value, 0.015_924_985_627_567, 1e-7);
        assert!(c.low > 0.0 && c.high > c.difference, "{c:?}");
        let c = compare(520, 1000, 480, 1000).unwrap();
        close(c.p_value, 0.073_638_270_120_302, 1e-7);
        assert!(c.low < 0.0 && c.high > 0.0, "not significant: {c:?}");
        // Small counts: Fisher's exact test.
        let c = compare(8, 10, 1, 6).unwrap();
        assert_eq!(c.test, Test::FisherExact);
        close(c.p_value, 0.034_965_034_965_035, 1e-9);
        // Identical rates of all or nothing.
        let c = compare(0, 50, 0, 50).unwrap();
        close(c.p_value, 1.0, 1e-12);
        assert_eq!(compare(1, 0, 1, 10), None);
    }
}
