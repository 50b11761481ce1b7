//! The chunking property of a connection's output path, without a socket.
//!
//! A [`Handler`] and an [`Outbox`] are driven the way the non-blocking
//! drivers drive a [`Conn`](iomux::conn::Conn): input arrives in chunks of
//! any size, each reply is offered to a "kernel" that takes any number of
//! bytes per send (0 included: `WouldBlock`), no input is read while the
//! unsent output has reached the bound (the driver drains instead), and the
//! peer's EOF comes after the last chunk. Whatever the choices, the bytes the
//! kernel took must be the handler's one-shot output
//! ([`Protocol::expected`]) and the buffer must stay bounded.
//!
//! Written once, used twice: by `tests/conn_chunking.rs` with seeded random
//! choices (so `cargo test` checks it), and by the cargo-fuzz target
//! `fuzz/fuzz_targets/conn_chunking.rs` with the fuzzer's bytes, which
//! includes this file by path.
#![allow(dead_code)]

use iomux::conn::Outbox;
use iomux::protocol::{Action, Handler, Protocol};

/// Where the driver's choices come from.
pub trait Choices {
    /// A number in `0..=max`.
    fn upto(&mut self, max: usize) -> usize;
    /// Whether the choices are used up. The driver then makes progress on
    /// its own (whole chunks, full sends), so every run ends.
    fn exhausted(&self) -> bool;
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Case {
    /// The protocol whose handler is driven.
    pub protocol: Protocol,
    /// The driver's bound on unsent output (at least 1).
    pub max_output: usize,
    /// The largest chunk one read delivers (the driver's scratch size, at
    /// least 1); also the largest reply of the built-in protocols.
    pub max_chunk: usize,
    /// Everything the peer sends before its EOF.
    pub input: Vec<u8>,
}

/// What a run saw, for reports and for tests that want coverage.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Reads (chunks and the EOF) and flushes.
    pub steps: usize,
    /// Sends that took part of what they were given (neither 0 nor all).
    pub partial_sends: usize,
    /// Reads skipped because the unsent output had reached the bound.
    pub paused: usize,
    /// The most unsent output at once.
    pub max_pending: usize,
    /// The most buffer memory at once.
    pub max_capacity: usize,
}

/// Picks `choices.upto(max)`, or `default` once the choices are used up.
fn pick(choices: &mut impl Choices, max: usize, default: usize) -> usize {
    if choices.exhausted() {
        default
    } else {
        choices.upto(max).min(max)
    }
}

/// Runs `case` with `choices`; panics if the property fails.
pub fn run(case: &Case, choices: &mut impl Choices) -> Seen {
    assert!(case.max_output >= 1 && case.max_chunk >= 1);
    let expected = case.protocol.expected(&case.input);
    let max_reply = case.max_chunk;
    // The buffer's length stays within twice the unsent output before a
    // reply (below the bound) plus that reply; a Vec's capacity within
    // twice the longest length it had (or the smallest allocation).
    let capacity_bound = (2 * (2 * case.max_output + max_reply)).max(8);

    let mut handler = case.protocol.handler();
    let mut outbox = Outbox::new();
    let mut reply = Vec::new();
    // What the kernel took, in order: checked against `expected` as it goes.
    let mut wire: Vec<u8> = Vec::with_capacity(expected.len());
    let mut fed = 0;
    let mut eof = false;
    let mut seen = Seen::default();

    // The "kernel": takes a chosen number of the bytes it is given.
    let kernel = |wire: &mut Vec<u8>, seen: &mut Seen, choices: &mut _, bytes: &[u8]| {
        let n = pick(choices, bytes.len(), bytes.len());
        if n > 0 && n < bytes.len() {
            seen.partial_sends += 1;
        }
        let at = wire.len();
        assert!(
            at + n <= expected.len(),
            "more bytes sent ({}) than the one-shot output has ({})",
            at + n,
            expected.len()
        );
        assert!(
            bytes[..n] == expected[at..at + n],
            "bytes sent at offset {at} differ from the one-shot output"
        );
        wire.extend_from_slice(&bytes[..n]);
        n
    };

    loop {
        let pending = outbox.pending();
        // `Conn::wants_read` and `Conn::wants_write`.
        let can_read = !eof && pending < case.max_output;
        let can_write = pending > 0;
        if !eof && !can_read {
            seen.paused += 1;
        }
        let read = match (can_read, can_write) {
            (false, false) => break,
            (true, false) => true,
            (false, true) => false,
            (true, true) => pick(choices, 1, 1) == 0,
        };
        seen.steps += 1;
        if read {
            reply.clear();
            if fed == case.input.len() {
                handler.on_eof(&mut reply);
                eof = true;
            } else {
                let most = case.max_chunk.min(case.input.len() - fed);
                let n = 1 + pick(choices, most - 1, most - 1);
                let action = handler.on_data(&case.input[fed..fed + n], &mut reply);
                assert_eq!(action, Action::Continue, "built-in handlers never close");
                fed += n;
            }
            assert!(reply.len() <= max_reply, "a reply longer than its chunk");
            let queued = outbox
                .offer(&reply, |b| {
                    Ok(kernel(&mut wire, &mut seen, &mut *choices, b))
                })
                .unwrap();
            assert!(queued <= reply.len());
            assert_eq!(outbox.pending(), pending + queued, "queued bytes lost");
            if pending > 0 {
                assert_eq!(queued, reply.len(), "a reply sent past queued output");
            }
            assert!(
                outbox.pending() < case.max_output + reply.len(),
                "unsent output {} past the bound {} plus one reply {}",
                outbox.pending(),
                case.max_output,
                reply.len()
            );
        } else {
            let sent = outbox
                .flush(|b| {
                    assert_eq!(b.len(), pending, "flush offers all the unsent output");
                    Ok(kernel(&mut wire, &mut seen, &mut *choices, b))
                })
                .unwrap();
            assert_eq!(outbox.pending(), pending - sent);
        }
        // What was sent plus what waits is exactly the output so far.
        assert_eq!(
            wire.len() + outbox.pending(),
            expected_len_so_far(case, fed),
            "bytes lost or duplicated"
        );
        assert!(
            expected[wire.len()..].starts_with(outbox.unsent()),
            "queued bytes differ from the one-shot output"
        );
        if outbox.pending() == 0 {
            assert_eq!(outbox.capacity(), 0, "an empty outbox holds memory");
        }
        assert!(
            outbox.capacity() <= capacity_bound,
            "buffer capacity {} past {capacity_bound} (bound {}, reply {max_reply})",
            outbox.capacity(),
            case.max_output
        );
        seen.max_pending = seen.max_pending.max(outbox.pending());
        seen.max_capacity = seen.max_capacity.max(outbox.capacity());
    }
    assert!(eof && fed == case.input.len());
    assert_eq!(outbox.pending(), 0);
    assert_eq!(outbox.capacity(), 0);
    assert!(
        wire == expected,
        "the output differs from the one-shot output"
    );
    seen
}

/// The length of the output for the first `fed` input bytes: the built-in
/// protocols map each byte to one byte.
fn expected_len_so_far(case: &Case, fed: usize) -> usize {
    match case.protocol {
        Protocol::Upper | Protocol::Echo | Protocol::SlowUpper(_) => fed,
    }
}
