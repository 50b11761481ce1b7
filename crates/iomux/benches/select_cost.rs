//! The cost of one wait with one ready fd among N watched, per backend.
//!
//! The seeds claim that select and poll cost grows with the number of
//! watched fds (both copy and scan the whole set on every call) while epoll
//! does not (the kernel keeps the ready list). Each measurement registers the
//! read ends of N `UnixStream` pairs, makes exactly one readable (and leaves
//! it undrained, so the level-triggered wait always finds it), and times one
//! `select` with a zero timeout.
//!
//! Every write end is moved to an fd at or above `FD_SETSIZE` (with
//! `F_DUPFD`), so the N read ends take the N lowest free fds: the layout is
//! the same for every backend, and select can watch 1,000 of them. Where the
//! fd limit does not allow that, the write ends stay low and select skips the
//! sizes whose read ends would reach `FD_SETSIZE` (it says so on stderr).
//!
//! Run: `cargo bench -p iomux --bench select_cost`; ids are
//! `select_cost/<backend>/<N>`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use iomux::selector::{Backend, Events, Interest, Selector, Token};

const WATCHED: [usize; 3] = [10, 100, 1000];

/// select's bitmap size; write ends are moved at or above it.
const FD_SETSIZE: libc::c_int = libc::FD_SETSIZE as libc::c_int;

/// A socket pair whose write end sits at or above `FD_SETSIZE` if the fd
/// limit allows, so that the read end takes the lowest free fd.
fn pair() -> (UnixStream, UnixStream) {
    let (write, read) = UnixStream::pair().expect("socketpair");
    // SAFETY: F_DUPFD_CLOEXEC on an open fd takes an integer argument and
    // returns a new fd >= FD_SETSIZE, or -1.
    let high = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FD_SETSIZE) };
    if high < 0 {
        return (write, read);
    }
    // SAFETY: `high` was just returned by fcntl: open and owned by nobody
    // else. Dropping `write` then frees its low fd number.
    let moved = UnixStream::from(unsafe { OwnedFd::from_raw_fd(high) });
    (moved, read)
}

fn select_cost(c: &mut Criterion) {
    // 1,000 pairs need 2,000 fds; a failure leaves the limit as it was and
    // the sizes that do not fit are skipped.
    let _ = iomux::sys::raise_nofile_limit(None);
    let mut group = c.benchmark_group("select_cost");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for backend in Backend::supported() {
        for n in WATCHED {
            let pairs: Vec<(UnixStream, UnixStream)> = (0..n).map(|_| pair()).collect();
            let mut selector = Selector::new(backend).expect("selector");
            let registered = pairs.iter().enumerate().try_for_each(|(i, (_, read))| {
                selector.register(read.as_raw_fd(), Token(i), Interest::READABLE)
            });
            if let Err(e) = registered {
                eprintln!("select_cost: {backend}/{n} skipped: {e}");
                continue;
            }
            // The one ready fd is in the middle of the set.
            iomux::sys::write(&pairs[n / 2].0, b"!").expect("write");
            let mut events = Events::with_capacity(64);
            group.bench_with_input(BenchmarkId::new(backend.name(), n), &n, |b, _| {
                b.iter(|| {
                    selector
                        .select(&mut events, Some(Duration::ZERO))
                        .expect("select");
                    debug_assert_eq!(events.len(), 1);
                });
            });
            // A check outside the timed loop: exactly the one fd was ready.
            assert_eq!(events.len(), 1, "{backend}/{n}");
            assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(n / 2)));
        }
    }
    group.finish();
}

criterion_group!(benches, select_cost);
criterion_main!(benches);
