//! Completion-based I/O: io_uring.
//!
//! The seeds end with "true asynchronous I/O" (`aio_read`/`aio_write`): the
//! kernel does both phases of a read, waiting for the data *and* copying it,
//! and tells the process when it is done. On Linux that is io_uring. The
//! process writes requests (submissions) into a ring shared with the kernel
//! and reads results (completions) from another; one `io_uring_enter` call
//! both hands over every new submission and waits for completions. There is
//! no readiness: the [`Model::Uring`](crate::server::Model::Uring) driver
//! never asks "can I read?", it asks "read this, tell me when done".
//!
//! # What the driver uses, and which kernel brings it
//!
//! | feature | Linux | what it buys | without it |
//! |---|---|---|---|
//! | `IORING_OP_ACCEPT`, `RECV`, `SEND`, `POLL_ADD`, `TIMEOUT`, `ASYNC_CANCEL` | 5.6 | the operations themselves | model unavailable |
//! | provided-buffer rings (`IORING_REGISTER_PBUF_RING`) | 5.19 | a waiting recv holds no buffer: the kernel picks one from a shared pool when data arrives, so idle connections cost no user memory | model unavailable (`auto` uses epoll) |
//! | multishot accept (`IORING_ACCEPT_MULTISHOT`) | 5.19 | one submission accepts every connection | one accept submission per connection |
//! | multishot recv (`IORING_RECV_MULTISHOT`) | 6.0 | one submission receives until EOF, pause or cancel | one recv submission per message |
//! | `IORING_SETUP_COOP_TASKRUN` | 5.19 | no inter-processor interrupt to run completion work | plain setup |
//! | `IORING_SETUP_SINGLE_ISSUER` + `DEFER_TASKRUN` | 6.0 / 6.1 | completion work runs in batches when the loop waits | `COOP_TASKRUN` |
//! | `IORING_FEAT_FAST_POLL` | 5.7 | a recv/send that would block waits on the socket's wait queue instead of a kernel thread | (kernel decides) |
//! | `IORING_FEAT_EXT_ARG` | 5.11 | bounded waits while draining at shutdown | unbounded waits |
//! | `IORING_FEAT_MIN_TIMEOUT` | 6.12 | [`Config::uring_batch_wait`](crate::server::Config::uring_batch_wait): a wait that lasts a minimum time, to gather completions into bigger batches | that option is refused |
//!
//! Every feature is detected at run time by [`probe()`]: opcodes through
//! `IORING_REGISTER_PROBE`, buffer rings by registering one, setup flags by
//! trying them (best first), and the multishot flags, which the opcode probe
//! cannot see, from the kernel release. Where io_uring cannot be used at all
//! (a kernel before 5.19, `kernel.io_uring_disabled`, a seccomp filter, or a
//! build without the `uring` cargo feature), [`probe()`] returns the reason as
//! an [`Unavailable`], serving the model fails with that one line, and
//! [`Model::auto`](crate::server::Model::auto) never picks it.
//!
//! # Ownership of memory the kernel uses
//!
//! A submission names memory by address; the kernel may write into it (recv)
//! or read from it (send) until the completion arrives, whatever Rust thinks
//! of the borrow. So:
//!
//! * receive buffers belong to the provided-buffer ring (`ring.rs`),
//!   which lives as long as the ring;
//! * a connection's outgoing bytes are moved into a `sending` buffer that is
//!   not touched, moved or freed until its send completes;
//! * a connection's slot (and fd) is freed only when none of its operations
//!   is in flight: closing cancels them and waits for their completions;
//! * at stop the driver cancels everything and drains the ring before
//!   dropping anything; if the kernel never answered it would leak the
//!   buffers on purpose rather than free memory the kernel may still write.

pub mod probe;
#[cfg(all(target_os = "linux", feature = "uring"))]
pub(crate) mod ring;

pub use probe::{probe, Features, KernelVersion, Probe, Unavailable};
