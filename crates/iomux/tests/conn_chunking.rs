//! A connection's output path reproduces the handler's one-shot output
//! whatever the chunk boundaries of the input and however many bytes each
//! send takes, and its buffer stays bounded: the property of
//! `tests/chunking/mod.rs`, replayed over fixed seeds so `cargo test` checks
//! it without cargo-fuzz (the fuzz target `fuzz/fuzz_targets/conn_chunking.rs`
//! explores the same property with the fuzzer's choices).

mod chunking;
mod util;

use chunking::{run, run_core, Case, Choices, Seen, Style};
use iomux::protocol::Protocol;
use util::Rng;

/// Seeded choices that run out after `budget` picks.
struct Seeded {
    rng: Rng,
    budget: usize,
    /// Bias towards small numbers half the time, so that sends of 0 or 1
    /// byte and one-byte chunks are common, not one in thousands.
    small: bool,
}

impl Choices for Seeded {
    fn upto(&mut self, max: usize) -> usize {
        self.budget -= 1;
        let cap = if self.small && self.rng.range(0, 1) == 0 {
            max.min(3)
        } else {
            max
        };
        self.rng.range(0, cap)
    }
    fn exhausted(&self) -> bool {
        self.budget == 0
    }
}

fn case_for(seed: u64) -> (Case, Seeded) {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let protocol = Protocol::ALL[rng.range(0, 1)];
    let max_output = [1, 2, 7, 64, 1000, 4096][rng.range(0, 5)];
    let max_chunk = [1, 3, 16, 512, 4096][rng.range(0, 4)];
    let len = [0, 1, 10, 1000, 20_000][rng.range(0, 4)];
    let len = rng.range(0, len);
    // Letters and other bytes, so upper-casing changes some of them.
    let input = (0..len)
        .map(|_| match rng.range(0, 3) {
            0 => b'a' + rng.range(0, 25) as u8,
            _ => rng.next_u64() as u8,
        })
        .collect();
    let choices = Seeded {
        budget: rng.range(0, 4 * len + 64),
        small: rng.range(0, 1) == 0,
        rng,
    };
    (
        Case {
            protocol,
            max_output,
            max_chunk,
            input,
        },
        choices,
    )
}

#[test]
fn output_equals_one_shot_output_for_seeded_chunkings() {
    let mut total = Seen::default();
    for seed in 1..=400 {
        let (case, mut choices) = case_for(seed);
        let seen =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&case, &mut choices)))
                .unwrap_or_else(|_| {
                    panic!(
                        "seed {seed}: {:?}, bound {}, chunk {}, {} input bytes",
                        case.protocol,
                        case.max_output,
                        case.max_chunk,
                        case.input.len()
                    )
                });
        total.steps += seen.steps;
        total.partial_sends += seen.partial_sends;
        total.paused += seen.paused;
    }
    // The seeds must exercise what the property is about.
    assert!(total.partial_sends > 100, "{total:?}");
    assert!(total.paused > 100, "{total:?}");
}

/// The connection core, driven as each kind of driver drives it: the
/// same output, the bound held, parked input at most one chunk, the EOF
/// last.
#[test]
fn core_output_equals_one_shot_output_for_both_driver_styles() {
    for style in [Style::Readiness, Style::Completion] {
        let mut total = Seen::default();
        for seed in 1..=400 {
            let (case, mut choices) = case_for(seed);
            let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_core(&case, style, &mut choices)
            }))
            .unwrap_or_else(|_| {
                panic!(
                    "{style:?} seed {seed}: {:?}, bound {}, chunk {}, {} input bytes",
                    case.protocol,
                    case.max_output,
                    case.max_chunk,
                    case.input.len()
                )
            });
            total.steps += seen.steps;
            total.partial_sends += seen.partial_sends;
            total.paused += seen.paused;
        }
        assert!(total.partial_sends > 100, "{style:?}: {total:?}");
        if style == Style::Completion {
            // Input parked because the output was full.
            assert!(total.paused > 100, "{style:?}: {total:?}");
        }
    }
}

#[test]
fn empty_input_sends_nothing_and_holds_nothing() {
    for protocol in Protocol::ALL {
        let case = Case {
            protocol,
            max_output: 1,
            max_chunk: 1,
            input: Vec::new(),
        };
        let seen = run(
            &case,
            &mut Seeded {
                rng: Rng::new(1),
                budget: 0,
                small: false,
            },
        );
        assert_eq!((seen.steps, seen.max_capacity), (1, 0));
    }
}
