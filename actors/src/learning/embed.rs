//! The local deterministic embedder and the vector helpers. The embedding port
//! ([`Embedder`]) is in `crate::ports::learning`.

use async_trait::async_trait;

use crate::ports::learning::{EmbedError, EmbedTask, Embedder, EMBEDDING_DIMS};

/// A deterministic embedder that needs no vendor: hashed word unigrams and bigrams plus
/// character trigrams, signed feature hashing into [`EMBEDDING_DIMS`] buckets, L2-normalised.
/// Texts that share words and spellings land close together; the same text always gives the
/// same vector, on every machine. Used when no embedding key is configured (the feature keeps
/// working offline) and by the simulations.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalEmbedder;

/// The model id of [`LocalEmbedder`] vectors.
pub const LOCAL_MODEL: &str = "local-ngram-v1";

impl LocalEmbedder {
    /// The vector of one text (the task does not change it).
    pub fn vector(text: &str) -> Vec<f32> {
        let mut v = vec![0f32; EMBEDDING_DIMS];
        let lowered = text.to_lowercase();
        let words: Vec<&str> = lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut add = |feature: &[u8], weight: f32| {
            let h = fnv1a(feature);
            let bucket = (h % EMBEDDING_DIMS as u64) as usize;
            let sign = if (h >> 63) & 1 == 0 { 1.0 } else { -1.0 };
            v[bucket] += sign * weight;
        };
        for w in &words {
            add(format!("w:{w}").as_bytes(), 1.0);
            let padded: Vec<char> = format!("^{w}$").chars().collect();
            for tri in padded.windows(3) {
                add(
                    format!("c:{}", tri.iter().collect::<String>()).as_bytes(),
                    0.5,
                );
            }
        }
        for pair in words.windows(2) {
            add(format!("b:{} {}", pair[0], pair[1]).as_bytes(), 0.7);
        }
        normalize(&mut v);
        v
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        LOCAL_MODEL
    }

    async fn embed(&self, texts: &[String], _task: EmbedTask) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| LocalEmbedder::vector(t)).collect())
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// 64-bit FNV-1a: stable across processes and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [(usize, i32); 3] = [(1, 996), (23, -996), (58, -996)];

    #[test]
    fn local_vectors_are_unit_length_deterministic_and_meaningful() {
        let a = LocalEmbedder::vector("The caller wants to cancel the subscription");
        assert_eq!(a.len(), EMBEDDING_DIMS);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(
            a,
            LocalEmbedder::vector("The caller wants to cancel the subscription")
        );
        // Pinned: the same text gives the same vector on every machine and every build
        // (stored vectors stay comparable with new ones).
        let nonzero: Vec<(usize, i32)> = a
            .iter()
            .enumerate()
            .filter(|(_, x)| **x != 0.0)
            .take(3)
            .map(|(i, x)| (i, (x * 1e4).round() as i32))
            .collect();
        assert_eq!(nonzero, PINNED);
        let near = LocalEmbedder::vector("caller wants to cancel their subscription");
        let far = LocalEmbedder::vector("Deliver the package to the new address on Friday");
        assert!(
            cosine(&a, &near) > cosine(&a, &far) + 0.3,
            "near {} far {}",
            cosine(&a, &near),
            cosine(&a, &far)
        );
        assert!(LocalEmbedder::vector("").iter().all(|x| *x == 0.0));
    }
}
