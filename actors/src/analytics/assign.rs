//! Experiments' traffic split: which agent variant a call gets. The choice is a hash of the
//! experiment and the subject (the customer, else the number called or calling), so a
//! customer meets the same variant on every call of the experiment, on any node, and the
//! shares follow the weights.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Variants of an experiment at least.
pub const MIN_VARIANTS: usize = 2;
/// Variants of an experiment at most.
pub const MAX_VARIANTS: usize = 10;
/// Largest weight of a variant.
pub const MAX_WEIGHT: u32 = 10_000;

/// Checks the weights: 2 to 10 variants, each weighing 1 to 10,000.
pub fn validate_weights(weights: &[u32]) -> Result<(), String> {
    if !(MIN_VARIANTS..=MAX_VARIANTS).contains(&weights.len()) {
        return Err(format!(
            "an experiment has {MIN_VARIANTS} to {MAX_VARIANTS} variants, not {}",
            weights.len()
        ));
    }
    if let Some(w) = weights.iter().find(|w| !(1..=MAX_WEIGHT).contains(*w)) {
        return Err(format!("a variant's weight is 1 to {MAX_WEIGHT}, not {w}"));
    }
    Ok(())
}

/// The index of the variant `subject` gets in `experiment`, by `weights` (which
/// [`validate_weights`] accepted).
pub fn assign(experiment: Uuid, subject: &str, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return 0;
    }
    let mut h = Sha256::new();
    h.update(experiment.as_bytes());
    h.update(subject.as_bytes());
    let digest = h.finalize();
    let x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    // Multiply-shift maps the hash onto [0, total) without modulo bias worth measuring.
    let point = ((u128::from(x) * u128::from(total)) >> 64) as u64;
    let mut cumulative = 0u64;
    for (i, w) in weights.iter().enumerate() {
        cumulative += u64::from(*w);
        if point < cumulative {
            return i;
        }
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_keeps_its_variant_and_shares_follow_the_weights() {
        let e = Uuid::from_u128(7);
        let weights = [70, 20, 10];
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let subject = format!("customer-{i}");
            let v = assign(e, &subject, &weights);
            assert_eq!(assign(e, &subject, &weights), v, "sticky");
            counts[v] += 1;
        }
        // Within 2 points of 70/20/10 (each share is binomial with sd < 0.3 points here).
        for (got, want) in counts.iter().zip([0.7, 0.2, 0.1]) {
            let share = *got as f64 / 30_000.0;
            assert!((share - want).abs() < 0.02, "{counts:?}");
        }
        // Another experiment splits the same subjects independently.
        let other = Uuid::from_u128(8);
        let same = (0..1000)
            .filter(|i| {
                let s = format!("customer-{i}");
                assign(e, &s, &[1, 1]) == assign(other, &s, &[1, 1])
            })
            .count();
        assert!((400..600).contains(&same), "{same}");
    }

    #[test]
    fn weights_are_bounded() {
        assert!(validate_weights(&[1, 1]).is_ok());
        assert!(validate_weights(&[1]).is_err());
        assert!(validate_weights(&[1; 11]).is_err());
        assert!(validate_weights(&[0, 1]).is_err());
        assert!(validate_weights(&[10_001, 1]).is_err());
    }
}
