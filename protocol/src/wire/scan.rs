//! Finding the bytes JSON strings care about — `"`, `\` and control
//! characters — eight bytes at a time (SWAR), since every message's payload
//! is scanned once when encoded and once when decoded.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `word` that is below 0x20 (or, above a true
/// match, possibly spurious: only the lowest flagged byte is reliable).
fn below_space(word: u64) -> u64 {
    word.wrapping_sub(LO * 0x20) & !word & HI
}

/// High bit set in each byte of `word` equal to `byte` (lowest reliable).
fn equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (LO * u64::from(byte));
    x.wrapping_sub(LO) & !x & HI
}

fn special(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// The index of the first `"`, `\` or control byte, if any.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let hits = below_space(word) | equal(word, b'"') | equal(word, b'\\');
        if hits != 0 {
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| special(b))
        .map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_special_byte_anywhere() {
        for len in 0..40 {
            for at in 0..len {
                for special_byte in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = vec![b'a'; len];
                    // Bytes that are close to the special ones but are not.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = [b'a', 0x20, b'!', b'#', b'[', b']', 0x7f, 0xff][i % 8];
                    }
                    bytes[at] = special_byte;
                    if at + 1 < len {
                        bytes[at + 1] = b'"';
                    }
                    assert_eq!(first_special(&bytes), Some(at), "{bytes:?}");
                }
            }
            let plain: Vec<u8> = (0..len).map(|i| [b'a', 0x20, 0xff, 0x7f][i % 4]).collect();
            assert_eq!(first_special(&plain), None);
        }
    }
}
