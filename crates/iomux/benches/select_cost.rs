//! The cost of one wait with one ready fd among N watched, per backend.
//!
//! The seeds claim that select and poll cost grows with the number of
//! watched fds (both copy and scan the whole set on every call) while epoll
//! does not (the kernel keeps the ready list). Each measurement registers N
//! eventfds (one fd each, so that 1,000 of them fit under select's
//! FD_SETSIZE), makes exactly one readable (and leaves it undrained, so the
//! level-triggered wait always finds it), and times one `select` with a zero
//! timeout.
//!
//! Run: `cargo bench -p iomux --bench select_cost`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use iomux::selector::{Backend, Events, Interest, Selector, Token};

const WATCHED: [usize; 3] = [10, 100, 1000];

/// The soft fd limit raised to the hard one, in case it is below 1,000.
fn raise_fd_limit() {
    let Ok((_, hard)) = iomux::sys::nofile_limit() else {
        return;
    };
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; raising the soft limit to the hard
    // one needs no privilege. A failure only leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

fn select_cost(c: &mut Criterion) {
    raise_fd_limit();
    let mut group = c.benchmark_group("select_cost");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for backend in Backend::supported() {
        for n in WATCHED {
            let fds: Vec<OwnedFd> = (0..n)
                .map(|_| iomux::sys::eventfd().expect("eventfd"))
                .collect();
            let mut selector = Selector::new(backend).expect("selector");
            let registered = fds.iter().enumerate().try_for_each(|(i, fd)| {
                selector.register(fd.as_raw_fd(), Token(i), Interest::READABLE)
            });
            if let Err(e) = registered {
                eprintln!("select_cost: {backend} with {n} fds skipped: {e}");
                continue;
            }
            // The one ready fd is in the middle of the set.
            iomux::sys::write(&fds[n / 2], &1u64.to_ne_bytes()).expect("write");
            let mut events = Events::with_capacity(64);
            group.bench_with_input(BenchmarkId::new(backend.name(), n), &n, |b, _| {
                b.iter(|| {
                    selector
                        .select(&mut events, Some(Duration::ZERO))
                        .expect("select");
                    assert_eq!(events.len(), 1);
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, select_cost);
criterion_main!(benches);
