//! Fuzzes the connection core ([`Core`](iomux::conn::Core), driven as a
//! readiness or a completion driver drives it) and its output path alone: a
//! built-in handler plus the [`Outbox`](iomux::conn::Outbox) that keeps its unsent output,
//! fed the fuzzer's input in the fuzzer's chunk boundaries, with the fuzzer
//! choosing how many bytes each send takes and when the driver reads or
//! flushes. The property (in `crates/iomux/tests/chunking/mod.rs`, shared
//! with the seeded test `conn_chunking` of `cargo test`): the bytes sent are
//! the handler's one-shot output, unsent output stays under the bound plus
//! one reply, and the buffer stays bounded and is freed when empty.
#![no_main]

use arbitrary::{Result, Unstructured};
use iomux::protocol::Protocol;
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/iomux/tests/chunking/mod.rs"]
mod chunking;

use chunking::{run, run_core, Case, Choices, Style};

/// The fuzzer's remaining bytes, as choices.
struct Fuzzed<'a>(Unstructured<'a>);

impl Choices for Fuzzed<'_> {
    fn upto(&mut self, max: usize) -> usize {
        self.0.int_in_range(0..=max).unwrap_or(max)
    }
    fn exhausted(&self) -> bool {
        self.0.is_empty()
    }
}

/// The case: protocol, bound, chunk size and input come first; every byte
/// after them steers the run.
fn case(u: &mut Unstructured<'_>) -> Result<Case> {
    let protocol = if u.arbitrary::<bool>()? {
        Protocol::Echo
    } else {
        Protocol::Upper
    };
    let max_output = u.int_in_range(1..=4096)?;
    let max_chunk = u.int_in_range(1..=4096)?;
    let len = u.int_in_range(0..=u.len())?;
    let input = u.bytes(len)?.to_vec();
    Ok(Case {
        protocol,
        max_output,
        max_chunk,
        input,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(which) = u.int_in_range(0..=2u8) else {
        return;
    };
    let Ok(case) = case(&mut u) else {
        return;
    };
    // The output path alone, or the whole connection core as a readiness
    // or a completion driver drives it.
    match which {
        0 => drop(run(&case, &mut Fuzzed(u))),
        1 => drop(run_core(&case, Style::Readiness, &mut Fuzzed(u))),
        _ => drop(run_core(&case, Style::Completion, &mut Fuzzed(u))),
    }
});
