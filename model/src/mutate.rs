//! Input mutation for the decoders' fuzz tests, on stable Rust and bounded by count: from valid
//! seed inputs, each round flips, inserts, deletes, duplicates or splices bytes (the mutations
//! libFuzzer and AFL start from), deterministically for a seed, so a failure reproduces. Each
//! decoder's test (OTLP protobuf and JSON in the collector, the agent's config, the simulator's
//! scenarios) feeds the mutants to the real decoder and what comes after it, asserting only that
//! nothing panics and that errors are errors.

use crate::rng::SplitMix64;

/// Bytes that often matter to a parser: protobuf varint and length edges, JSON and YAML syntax.
const INTERESTING: &[u8] = b"\x00\x01\x7f\x80\xff{}[]\":,-0123456789.eE\\\n\t #&*!|>'";

/// A deterministic stream of mutants of `seeds`.
pub struct Mutator<'a> {
    rng: SplitMix64,
    seeds: &'a [Vec<u8>],
}

impl<'a> Mutator<'a> {
    /// Mutants of `seeds` (at least one), drawn with `seed`.
    pub fn new(seeds: &'a [Vec<u8>], seed: u64) -> Self {
        assert!(!seeds.is_empty(), "a mutator needs a seed input");
        Self { rng: SplitMix64::new(seed), seeds }
    }

    fn byte(&mut self) -> u8 {
        if self.rng.below(2) == 0 { INTERESTING[self.rng.below(INTERESTING.len())] } else { self.rng.next_u64() as u8 }
    }

    /// The next mutant: a seed with one to eight mutations.
    pub fn next_input(&mut self) -> Vec<u8> {
        let mut v = self.seeds[self.rng.below(self.seeds.len())].clone();
        for _ in 0..1 + self.rng.below(8) {
            let at = if v.is_empty() { 0 } else { self.rng.below(v.len()) };
            match self.rng.below(6) {
                0 if !v.is_empty() => v[at] ^= 1 << self.rng.below(8),
                1 => {
                    let b = self.byte();
                    v.insert(at, b);
                }
                2 if !v.is_empty() => {
                    let n = 1 + self.rng.below(16.min(v.len() - at));
                    v.drain(at..at + n);
                }
                3 if !v.is_empty() => {
                    let n = 1 + self.rng.below(32.min(v.len() - at));
                    let run: Vec<u8> = v[at..at + n].to_vec();
                    let to = self.rng.below(v.len() + 1);
                    v.splice(to..to, run);
                }
                4 => {
                    let other = &self.seeds[self.rng.below(self.seeds.len())];
                    let from = if other.is_empty() { 0 } else { self.rng.below(other.len()) };
                    v.truncate(at);
                    v.extend_from_slice(&other[from..]);
                }
                _ if !v.is_empty() => v[at] = self.byte(),
                _ => v.push(self.byte()),
            }
        }
        v
    }
}

/// Feeds `rounds` mutants of the text `seeds` (as text, invalid UTF-8 replaced) to `parses`, which
/// says whether one parsed; returns how many did. For the text formats' fuzz tests.
pub fn count_parsed(seeds: &[&str], seed: u64, rounds: usize, mut parses: impl FnMut(&str) -> bool) -> usize {
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut m = Mutator::new(&seeds, seed);
    (0..rounds).filter(|_| parses(&String::from_utf8_lossy(&m.next_input()))).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_differ_and_repeat_for_a_seed() {
        let seeds = vec![b"hello world".to_vec()];
        let a: Vec<Vec<u8>> = {
            let mut m = Mutator::new(&seeds, 7);
            (0..100).map(|_| m.next_input()).collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut m = Mutator::new(&seeds, 7);
            (0..100).map(|_| m.next_input()).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().filter(|m| m.as_slice() != b"hello world").count() > 90);
    }
}
