//! Finding the bytes JSON strings care about — `"`, `\` and control
//! characters — in a way the compiler vectorizes, since every message's
//! payload is scanned when encoded and when decoded.

fn special(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether `chunk` holds a special byte: no early exit and a byte-wide
/// accumulator, so the compiler turns it into SIMD compares.
pub(crate) fn any_special(chunk: &[u8]) -> bool {
    chunk.iter().fold(0u8, |acc, &b| {
        acc | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    }) != 0
}

/// The index of the first `"`, `\` or control byte, if any: 64 bytes at a
/// time, then byte by byte inside the chunk that has one.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 64;
    let mut offset = 0;
    for chunk in bytes.chunks(CHUNK) {
        if any_special(chunk) {
            return chunk.iter().position(|&b| special(b)).map(|i| offset + i);
        }
        offset += chunk.len();
    }
    None
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
