//! The seeds' protocol: `data.upper()`, byte for byte.

use super::{Action, Handler};

/// Sends every byte back with ASCII letters upper-cased; all other bytes
/// (including non-ASCII and NUL) unchanged, in order, until the peer closes.
#[derive(Copy, Clone, Debug, Default)]
pub struct Upper;

impl Handler for Upper {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        out.extend(input.iter().map(u8::to_ascii_uppercase));
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;

    #[test]
    fn upper_cases_ascii_letters_only() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        Upper.on_data(&all, &mut out);
        for (i, (&a, &b)) in all.iter().zip(&out).enumerate() {
            let want = if a.is_ascii_lowercase() { a - 32 } else { a };
            assert_eq!(b, want, "byte {i}");
        }
        assert_eq!(out.len(), 256);
    }

    #[test]
    fn chunking_does_not_change_output() {
        let input: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = Protocol::Upper.expected(&input);
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let mut h = Upper;
            let mut out = Vec::new();
            for c in input.chunks(chunk) {
                assert_eq!(h.on_data(c, &mut out), Action::Continue);
            }
            h.on_eof(&mut out);
            assert_eq!(out, want, "chunk size {chunk}");
        }
    }
}
