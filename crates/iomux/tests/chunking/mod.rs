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

use iomux::conn::{Core, Outbox, Phase};
use iomux::counters::Counters;
use iomux::protocol::{Action, CloseReason, Handler, Protocol};

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

/// How [`run_core`] drives the [`Core`]: as a readiness driver does
/// (reads only while the core wants input; sends are synchronous and take
/// what the kernel takes), or as the completion driver does (a recv, once
/// armed, delivers its chunk whatever happened since, so input may have to
/// be parked; sends are submitted whole and complete later, in any number
/// of bytes).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Style {
    /// `Conn` over a non-blocking socket (readiness, coroutine, busy-poll).
    Readiness,
    /// io_uring: armed recvs, asynchronous sends.
    Completion,
}

/// The connection core's property, for either driver [`Style`]: the bytes
/// sent are the handler's one-shot output, in order, whatever the chunking
/// and however the sends go; the output (queued plus in flight) never
/// passes the bound by more than one reply; parked input never exceeds one
/// chunk; the EOF reaches the handler after every byte; the connection ends
/// once everything is sent, with the peer's EOF as its reason.
pub fn run_core(case: &Case, style: Style, choices: &mut impl Choices) -> Seen {
    assert!(case.max_output >= 1 && case.max_chunk >= 1);
    let expected = case.protocol.expected(&case.input);
    let counters = Counters::default();
    let mut core = Core::new(case.protocol.handler());
    let mut scratch = Vec::new();
    let mut wire: Vec<u8> = Vec::with_capacity(expected.len());
    let mut seen = Seen::default();
    let mut fed = 0;
    // Completion style: a recv armed (it delivers one chunk, or the EOF),
    // and the buffer of the send in flight with how much of it went.
    let mut armed = false;
    let mut cancelling = false;
    let mut sending: Vec<u8> = Vec::new();
    let mut sending_at = 0;
    let take = |wire: &mut Vec<u8>, seen: &mut Seen, choices: &mut _, bytes: &[u8]| {
        let n = pick(choices, bytes.len(), bytes.len());
        if n > 0 && n < bytes.len() {
            seen.partial_sends += 1;
        }
        let at = wire.len();
        assert!(
            at + n <= expected.len(),
            "more bytes sent than the one-shot output has"
        );
        assert!(
            bytes[..n] == expected[at..at + n],
            "bytes sent at offset {at} differ"
        );
        wire.extend_from_slice(&bytes[..n]);
        n
    };
    let max_reply = case.max_chunk;
    for _ in 0..10_000_000 {
        if core.done().is_some() {
            break;
        }
        seen.steps += 1;
        let more_input = fed <= case.input.len() && core.phase() == Phase::Open;
        match style {
            Style::Readiness => {
                let read = core.wants_read(case.max_output) && more_input;
                let write = core.pending() > 0;
                let do_read = match (read, write) {
                    (false, false) => panic!("stuck: nothing to read or write, not done"),
                    (true, false) => true,
                    (false, true) => false,
                    (true, true) => pick(choices, 1, 1) == 0,
                };
                let n = if do_read && fed < case.input.len() {
                    let most = case.max_chunk.min(case.input.len() - fed);
                    1 + pick(choices, most - 1, most - 1)
                } else {
                    0
                };
                let mut send = |b: &[u8]| Ok(take(&mut wire, &mut seen, &mut *choices, b));
                if do_read {
                    if fed == case.input.len() {
                        fed += 1; // the EOF
                        core.eof(&mut scratch, &counters, &mut send).unwrap();
                    } else {
                        let chunk = &case.input[fed..fed + n];
                        fed += n;
                        core.input(chunk, case.max_output, &mut scratch, &counters, &mut send)
                            .unwrap();
                    }
                    assert_eq!(core.parked(), 0, "a readiness driver never parks");
                } else {
                    core.flush(&counters, &mut send).unwrap();
                }
            }
            Style::Completion => {
                // Arm a recv when the core wants input (the driver's pump).
                // A multishot recv stays armed after it delivers; once
                // the core wants no more input the driver cancels it, and
                // the cancel may come after one more delivery.
                if core.wants_read(case.max_output) && more_input {
                    armed = true;
                    cancelling = false;
                } else if armed && !cancelling {
                    cancelling = true;
                }
                let can_deliver = armed && fed <= case.input.len();
                let can_submit = sending_at == sending.len() && core.queued() > 0;
                let can_complete = sending_at < sending.len();
                let options = [can_deliver, can_submit, can_complete];
                let n_opts = options.iter().filter(|&&o| o).count();
                assert!(n_opts > 0 || core.parked() > 0, "stuck: nothing can happen");
                if n_opts == 0 {
                    panic!("parked input with room never resumed");
                }
                let pick_i = pick(choices, n_opts - 1, 0);
                let which = options
                    .iter()
                    .enumerate()
                    .filter(|(_, &o)| o)
                    .nth(pick_i)
                    .map(|(i, _)| i)
                    .unwrap();
                let mut nosend = |_: &[u8]| Ok(0);
                match which {
                    0 => {
                        // Single-shot, or the last delivery before the cancel.
                        armed = !cancelling && pick(choices, 1, 0) == 1;
                        if fed == case.input.len() {
                            fed += 1;
                            core.eof(&mut scratch, &counters, nosend).unwrap();
                        } else {
                            let most = case.max_chunk.min(case.input.len() - fed);
                            let n = 1 + pick(choices, most - 1, most - 1);
                            let chunk = &case.input[fed..fed + n];
                            fed += n;
                            core.input(chunk, case.max_output, &mut scratch, &counters, nosend)
                                .unwrap();
                            if core.parked() > 0 {
                                seen.paused += 1;
                            }
                        }
                    }
                    1 => {
                        sending.clear();
                        sending_at = 0;
                        core.take_output(&mut sending);
                        assert_eq!(core.in_flight(), sending.len());
                    }
                    _ => {
                        let rest = sending[sending_at..].to_vec();
                        let n = take(&mut wire, &mut seen, &mut *choices, &rest);
                        sending_at += n;
                        core.sent(n, &counters);
                        // The pump: parked input while there is room.
                        core.resume(
                            case.max_output,
                            case.max_chunk,
                            &mut scratch,
                            &counters,
                            &mut nosend,
                        )
                        .unwrap();
                    }
                }
                assert!(
                    core.parked() <= case.max_chunk,
                    "parked input past one chunk"
                );
            }
        }
        assert!(
            core.pending() < case.max_output + max_reply,
            "output {} past the bound {} plus one reply {max_reply}",
            core.pending(),
            case.max_output
        );
        seen.max_pending = seen.max_pending.max(core.pending());
        seen.max_capacity = seen.max_capacity.max(core.buffer_capacity());
    }
    assert_eq!(
        core.done(),
        Some(CloseReason::PeerClosed),
        "ends after the peer's EOF"
    );
    assert!(
        wire == expected,
        "the output differs from the one-shot output"
    );
    assert_eq!(
        counters
            .pending_output
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let _ = Action::Continue;
    seen
}
