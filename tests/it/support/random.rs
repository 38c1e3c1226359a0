//! Seeded randomness: the seed (printed, overridable with
//! `HOLDFAST_TEST_SEED`) and random payloads.

use rand::Rng;
use rand::rngs::StdRng;

use super::wire::Payload;

/// The environment variable that replays a run.
pub const SEED_VAR: &str = "HOLDFAST_TEST_SEED";

/// The seed for `test`: `HOLDFAST_TEST_SEED` if set, random otherwise.
/// Printed either way (shown when the test fails).
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={value:?} is not a u64")),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (replay with {SEED_VAR}={seed})");
    seed
}

/// Characters that stress JSON and SSE encodings: quotes, backslashes,
/// control characters, line separators, a BOM, multi-byte and astral
/// characters.
const SPICY: &[char] = &[
    '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{1}', '\u{1f}', '\u{7f}', '<', '>', '&', '\'',
    '\u{2028}', '\u{2029}', '\u{feff}', 'é', 'ß', '€', '中', '𝄞', '😀', '\u{fffd}', ':',
];

/// A random text of at most `max_bytes` UTF-8 bytes, close to it.
pub fn text(rng: &mut StdRng, max_bytes: usize) -> String {
    let mut out = String::with_capacity(max_bytes);
    loop {
        let c = if rng.random_bool(0.7) {
            rng.random_range(b' '..=b'~') as char
        } else {
            SPICY[rng.random_range(0..SPICY.len())]
        };
        if out.len() + c.len_utf8() > max_bytes {
            // Pad with ASCII to land exactly on the size.
            while out.len() < max_bytes {
                out.push('x');
            }
            return out;
        }
        out.push(c);
    }
}

/// A random payload size up to `max`: mostly small, some medium, a few
/// large, and now and then exactly `max`.
pub fn size(rng: &mut StdRng, max: usize) -> usize {
    match rng.random_range(0..100) {
        0 => max,
        1..=4 => rng.random_range(4000.min(max)..=max),
        5..=29 => rng.random_range(200.min(max)..=4000.min(max)),
        _ => rng.random_range(0..=200.min(max)),
    }
}

/// `n` random payloads, text or binary, of at most `max` bytes. Contents
/// are random slices of a random pool (fast in debug builds), so any two
/// non-tiny payloads differ.
pub fn payloads(rng: &mut StdRng, n: usize, max: usize) -> Vec<Payload> {
    let pool_text = text(rng, 2 * max + 4096);
    let mut pool_bytes = vec![0u8; 2 * max + 4096];
    rng.fill(&mut pool_bytes[..]);
    (0..n)
        .map(|_| {
            let len = size(rng, max);
            if rng.random_bool(0.5) {
                let mut start = rng.random_range(0..=pool_text.len() - len);
                while !pool_text.is_char_boundary(start) {
                    start -= 1;
                }
                let mut end = start + len;
                while !pool_text.is_char_boundary(end) {
                    end -= 1;
                }
                Payload::Text(pool_text[start..end].to_owned())
            } else {
                let start = rng.random_range(0..=pool_bytes.len() - len);
                Payload::Binary(pool_bytes[start..start + len].to_vec())
            }
        })
        .collect()
}
