//! `slow-upper`: the seeds' protocol with a CPU-bound handler, to show a
//! slow handler stalling an event loop, and offload curing it.

use std::time::{Duration, Instant};

use super::{Action, Handler, Upper};

/// Like [`Upper`], but holds its thread busy for `work` per line ending
/// (`\n`) it receives, the way a handler that parses, compresses or hashes
/// would. The reply is the same as `upper`'s.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlowUpper {
    /// CPU time burnt per `\n` received.
    pub work: Duration,
}

impl Handler for SlowUpper {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        let lines = input.iter().filter(|&&b| b == b'\n').count() as u32;
        burn(self.work * lines);
        Upper.on_data(input, out)
    }
}

/// Spins for `d` of wall time: CPU work that no event loop can interleave.
fn burn(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_like_upper_and_burns_per_line() {
        let mut h = SlowUpper {
            work: Duration::from_millis(5),
        };
        let mut out = Vec::new();
        let t = Instant::now();
        assert_eq!(h.on_data(b"ab\ncd\n", &mut out), Action::Continue);
        assert_eq!(out, b"AB\nCD\n");
        // A lower bound only: two lines, at least twice the work.
        assert!(t.elapsed() >= Duration::from_millis(10));
    }
}
