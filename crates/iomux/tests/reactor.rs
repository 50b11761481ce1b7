//! The event loop: watchers, timers, signals, posts, offload, stalls, and
//! coroutines on top. Each test runs a loop to completion and then asserts
//! counts and order; time is only ever asserted as a lower bound.

mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use iomux::reactor::task::{self, Async, Runtime};
use iomux::reactor::{OffloadError, Options, Reactor, StallSource};
use iomux::selector::{Backend, Interest, Mode};
use util::{tcp_pair, GENEROUS};

fn reactor<C>(backend: Backend) -> Reactor<C> {
    Reactor::new(Options {
        backend,
        ..Options::default()
    })
    .expect("reactor")
}

/// Runs turns until `done` or the generous deadline (then fails).
fn run_until<C>(r: &mut Reactor<C>, ctx: &mut C, mut done: impl FnMut(&C) -> bool) {
    let deadline = Instant::now() + GENEROUS;
    while !done(ctx) {
        assert!(
            Instant::now() < deadline,
            "the loop did not get there in time"
        );
        r.run_once(ctx, Some(Duration::from_millis(100))).unwrap();
    }
}

#[test]
fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
    let mut r: Reactor<Vec<u32>> = reactor(Backend::recommended());
    let start = Instant::now();
    // Added out of order; two share a deadline (first in, first out).
    for (ms, tag) in [(60, 6), (20, 2), (40, 4), (20, 3), (10, 1), (50, 5)] {
        r.add_timer(Duration::from_millis(ms), move |_, log: &mut Vec<u32>| {
            log.push(tag)
        });
    }
    let cancelled = r.add_timer(Duration::from_millis(30), |_, log: &mut Vec<u32>| {
        log.push(99)
    });
    let cancelled_late = r.add_timer(Duration::from_millis(55), |_, log: &mut Vec<u32>| {
        log.push(98)
    });
    assert!(r.cancel_timer(cancelled));
    assert!(
        !r.cancel_timer(cancelled),
        "cancelling twice reports not armed"
    );
    // Cancelled by an earlier timer's callback while the loop runs.
    r.add_timer(Duration::from_millis(45), move |r, _| {
        assert!(r.cancel_timer(cancelled_late));
    });
    let mut log = Vec::new();
    run_until(&mut r, &mut log, |l| l.len() == 6);
    // Let the cancelled deadlines pass too.
    r.run_once(&mut log, Some(Duration::from_millis(30)))
        .unwrap();
    assert_eq!(log, vec![1, 2, 3, 4, 5, 6]);
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert_eq!(r.stats().timers, 0);
}

#[test]
fn timer_sleeps_instead_of_spinning() {
    let mut r: Reactor<bool> = reactor(Backend::recommended());
    let start = Instant::now();
    r.add_timer(Duration::from_millis(50), |_, fired| *fired = true);
    let mut fired = false;
    run_until(&mut r, &mut fired, |f| *f);
    assert!(start.elapsed() >= Duration::from_millis(50), "fired early");
    // One wait to the deadline, maybe a second for rounding: never a loop
    // of zero-timeout polls.
    assert!(
        r.stats().turns <= 3,
        "{} turns for one timer",
        r.stats().turns
    );
}

#[test]
fn repeating_timer_repeats_until_cancelled_from_its_own_callback() {
    let mut r: Reactor<u32> = reactor(Backend::recommended());
    let id = Rc::new(RefCell::new(None));
    let me = id.clone();
    let t = r.add_repeating(Duration::from_millis(5), move |r, n: &mut u32| {
        *n += 1;
        if *n == 3 {
            let id = me.borrow().expect("set before run");
            assert!(r.cancel_timer(id));
        }
    });
    *id.borrow_mut() = Some(t);
    let mut n = 0;
    run_until(&mut r, &mut n, |n| *n == 3);
    r.run_once(&mut n, Some(Duration::from_millis(30))).unwrap();
    assert_eq!(n, 3, "a cancelled repeating timer fired again");
    assert!(!r.is_timer_armed(t));
}

#[test]
fn signal_reaches_its_callback_on_the_loop_thread() {
    let mut r: Reactor<Vec<(i32, thread::ThreadId)>> = reactor(Backend::recommended());
    r.add_signal(libc::SIGUSR1, |_, got, signo| {
        got.push((signo, thread::current().id()))
    })
    .unwrap();
    // A second watch of the same signal in this process is refused.
    let mut other: Reactor<()> = reactor(Backend::recommended());
    let err = other.add_signal(libc::SIGUSR1, |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("already watched"), "{err}");
    // Uncatchable signals are refused with the reason.
    let err = other.add_signal(libc::SIGKILL, |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("cannot be caught"), "{err}");

    // Process-directed, from another thread: the kernel may deliver it to
    // any thread of this test binary.
    thread::spawn(|| {
        // SAFETY: kill with our own pid and a signal the reactor handles.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) }, 0);
    })
    .join()
    .unwrap();
    let mut got = Vec::new();
    run_until(&mut r, &mut got, |g| !g.is_empty());
    assert_eq!(got[0], (libc::SIGUSR1, thread::current().id()));
    assert!(r.remove_signal(libc::SIGUSR1));
    // Once removed, another loop may watch it.
    other.add_signal(libc::SIGUSR1, |_, _, _| {}).unwrap();
}

#[test]
fn post_from_another_thread_runs_on_the_loop_thread() {
    let mut r: Reactor<Vec<(u32, thread::ThreadId)>> = reactor(Backend::recommended());
    let handle = r.handle();
    let poster = thread::spawn(move || {
        for i in 0..100 {
            handle
                .post(move |_, log: &mut Vec<(u32, thread::ThreadId)>| {
                    log.push((i, thread::current().id()))
                })
                .unwrap();
        }
        handle.stop();
    });
    let mut log = Vec::new();
    r.run(&mut log).unwrap();
    poster.join().unwrap();
    // `stop` comes after the last post; posts may still be on their way
    // only if they were queued after the turn that saw the stop.
    run_until(&mut r, &mut log, |l| l.len() == 100);
    let me = thread::current().id();
    assert!(log.iter().all(|&(_, t)| t == me));
    let order: Vec<u32> = log.iter().map(|&(i, _)| i).collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>(), "posts run in order");
    // A handle outliving its loop says so.
    let handle = r.handle();
    drop(r);
    assert!(handle.post(|_, _| {}).is_err());
}

#[test]
fn offloaded_result_arrives_on_the_loop_thread() {
    let mut r: Reactor<Vec<(u64, thread::ThreadId, thread::ThreadId)>> =
        reactor(Backend::recommended());
    for i in 0..8u64 {
        r.offload(
            move || (i * i, thread::current().id()),
            move |_, got: &mut Vec<_>, res| {
                let (sq, worker) = res.expect("no panic");
                got.push((sq, worker, thread::current().id()));
            },
        )
        .unwrap();
    }
    let mut got = Vec::new();
    run_until(&mut r, &mut got, |g| g.len() == 8);
    let me = thread::current().id();
    let mut squares: Vec<u64> = got.iter().map(|g| g.0).collect();
    squares.sort();
    assert_eq!(squares, vec![0, 1, 4, 9, 16, 25, 36, 49]);
    assert!(got.iter().all(|g| g.1 != me), "work ran on the loop thread");
    assert!(
        got.iter().all(|g| g.2 == me),
        "result delivered off the loop thread"
    );
    assert_eq!(r.stats().offload_completed, 8);
    assert_eq!(r.offload_in_flight(), 0);
}

#[test]
fn offload_panic_is_delivered_as_an_error() {
    let mut r: Reactor<Option<bool>> = reactor(Backend::recommended());
    r.offload(
        || -> u32 { panic!("job fails (expected in this test)") },
        |_, got: &mut Option<bool>, res| *got = Some(res.is_err()),
    )
    .unwrap();
    let mut got = None;
    run_until(&mut r, &mut got, |g| g.is_some());
    assert_eq!(got, Some(true));
}

#[test]
fn full_offload_queue_is_refused_not_queued() {
    let mut r: Reactor<u32> = Reactor::new(Options {
        offload_threads: 1,
        offload_queue: 2,
        ..Options::default()
    })
    .unwrap();
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    // The one thread blocks on the barrier: the next two jobs queue.
    r.offload(move || g.wait(), |_, n: &mut u32, _| *n += 1)
        .unwrap();
    // Wait until the worker has taken the first job off the queue.
    let deadline = Instant::now() + GENEROUS;
    while r.offload_queued() != 0 {
        assert!(Instant::now() < deadline);
        thread::yield_now();
    }
    r.offload(|| (), |_, n: &mut u32, _| *n += 1).unwrap();
    r.offload(|| (), |_, n: &mut u32, _| *n += 1).unwrap();
    assert_eq!(r.offload_room().unwrap(), 0);
    let err = r.offload(|| (), |_, n: &mut u32, _| *n += 100).unwrap_err();
    assert_eq!(err, OffloadError::Full { capacity: 2 });
    assert!(err.to_string().contains("queue full"));
    assert_eq!(r.stats().offload_rejected, 1);
    gate.wait();
    let mut n = 0;
    run_until(&mut r, &mut n, |n| *n == 3);
    r.run_once(&mut n, Some(Duration::from_millis(20))).unwrap();
    assert_eq!(n, 3, "the refused job must never run");
}

/// Two watchers ready in the same turn; whichever runs first removes the
/// other, which must not be called for its event already in the batch.
fn removed_inside_a_callback_gets_no_further_events(backend: Backend) {
    let (mut a_peer, a) = tcp_pair();
    let (mut b_peer, b) = tcp_pair();
    let mut r: Reactor<Vec<&'static str>> = reactor(backend);
    let ids: Rc<RefCell<Vec<iomux::reactor::IoId>>> = Rc::default();
    for (name, stream) in [("a", &a), ("b", &b)] {
        let ids2 = ids.clone();
        let id = r
            .add_io(
                stream.as_raw_fd(),
                Interest::READABLE,
                Mode::Level,
                move |r, log, _| {
                    log.push(name);
                    for &id in ids2.borrow().iter() {
                        let _ = r.remove_io(id); // itself and the other
                    }
                },
            )
            .unwrap();
        ids.borrow_mut().push(id);
    }
    a_peer.write_all(b"x").unwrap();
    b_peer.write_all(b"y").unwrap();
    // Both readable before the loop looks: one wait reports both.
    thread::sleep(Duration::from_millis(20));
    let mut log = Vec::new();
    run_until(&mut r, &mut log, |l| !l.is_empty());
    for _ in 0..3 {
        r.run_once(&mut log, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(log.len(), 1, "a removed watcher was called: {log:?}");
    assert_eq!(r.stats().watchers, 0);
    // The slots are reused by new watchers without confusion.
    let id = r
        .add_io(
            a.as_raw_fd(),
            Interest::READABLE,
            Mode::Level,
            |r, log, _| {
                log.push("again");
                r.stop();
            },
        )
        .unwrap();
    r.run(&mut log).unwrap();
    assert_eq!(log.last(), Some(&"again"));
    r.remove_io(id).unwrap();
}

#[test]
fn removed_inside_a_callback_select() {
    removed_inside_a_callback_gets_no_further_events(Backend::Select);
}

#[test]
fn removed_inside_a_callback_poll() {
    removed_inside_a_callback_gets_no_further_events(Backend::Poll);
}

#[cfg(target_os = "linux")]
#[test]
fn removed_inside_a_callback_epoll() {
    removed_inside_a_callback_gets_no_further_events(Backend::Epoll);
}

#[test]
fn paused_watcher_is_silent_until_resumed() {
    let (mut peer, s) = tcp_pair();
    let mut r: Reactor<u32> = reactor(Backend::Poll);
    let id = r
        .add_io(s.as_raw_fd(), Interest::READABLE, Mode::Level, |_, n, _| {
            *n += 1
        })
        .unwrap();
    r.pause_io(id).unwrap();
    peer.write_all(b"x").unwrap();
    let mut n = 0;
    for _ in 0..3 {
        r.run_once(&mut n, Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(n, 0, "a paused watcher was called");
    r.resume_io(id).unwrap();
    run_until(&mut r, &mut n, |n| *n > 0);
}

#[test]
fn stall_is_reported_with_its_watcher() {
    let (mut peer, s) = tcp_pair();
    let mut r: Reactor<()> = Reactor::new(Options {
        stall_threshold: Some(Duration::from_millis(50)),
        ..Options::default()
    })
    .unwrap();
    let stalls = Rc::new(RefCell::new(Vec::new()));
    let log = stalls.clone();
    r.on_stall(move |s| log.borrow_mut().push(s.clone()));
    let fd = s.as_raw_fd();
    let id = r
        .add_io(fd, Interest::READABLE, Mode::Level, |r, _, _| {
            thread::sleep(Duration::from_millis(80)); // at least 80 ms
            r.stop();
        })
        .unwrap();
    r.set_label(id, "slow");
    peer.write_all(b"x").unwrap();
    r.run(&mut ()).unwrap();
    let stalls = stalls.borrow();
    assert_eq!(stalls.len(), 1);
    assert_eq!(stalls[0].source, StallSource::Io { fd, label: "slow" });
    assert!(stalls[0].held >= Duration::from_millis(80));
    assert!(stalls[0].to_string().contains("offload"));
    assert_eq!(r.stats().stalls, 1);
}

#[test]
fn handle_stop_ends_run_from_another_thread() {
    let mut r: Reactor<()> = reactor(Backend::recommended());
    let h = r.handle();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        h.stop();
    });
    r.run(&mut ()).unwrap(); // blocks with nothing registered until stopped
    t.join().unwrap();
}

#[test]
fn coroutines_echo_and_sleep_on_the_reactor() {
    for backend in Backend::supported() {
        let mut rt = Runtime::new(Options {
            backend,
            ..Options::default()
        })
        .unwrap();
        let listener = TcpListener::bind(util::any_local_address()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Clients on plain threads; the server is one task per connection.
        let clients: Vec<_> = (0..20)
            .map(|i| {
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(GENEROUS)).unwrap();
                    let msg = format!("client {i} says hi");
                    s.write_all(msg.as_bytes()).unwrap();
                    let mut got = vec![0; msg.len()];
                    s.read_exact(&mut got).unwrap();
                    assert_eq!(got, msg.to_ascii_uppercase().as_bytes());
                })
            })
            .collect();
        let served = rt
            .block_on(async move {
                let listener = Async::new(listener).unwrap();
                let done = Rc::new(RefCell::new(0));
                for _ in 0..20 {
                    let (stream, _) = listener.accept().await.unwrap();
                    let done = done.clone();
                    task::spawn(async move {
                        let s = Async::new(stream).unwrap();
                        let mut buf = [0; 64];
                        let n = s.read(&mut buf).await.unwrap();
                        task::sleep(Duration::from_millis(5)).await.unwrap();
                        s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                        *done.borrow_mut() += 1;
                    });
                }
                while *done.borrow() < 20 {
                    task::sleep(Duration::from_millis(2)).await.unwrap();
                }
                let n = *done.borrow();
                n
            })
            .unwrap();
        assert_eq!(served, 20, "{backend}");
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(rt.tasks(), 0, "{backend}: finished tasks are freed");
    }
}

#[test]
fn async_outside_a_runtime_says_what_to_do() {
    let (a, _b) = tcp_pair();
    let err = Async::new(a).unwrap_err();
    assert!(err.to_string().contains("Runtime::block_on"), "{err}");
}

/// With a latency budget, a turn sleeps before its wait only after turns
/// that had several events to batch, never longer than the budget allows,
/// and stops sleeping once turns have one event each again.
#[test]
fn latency_budget_delays_only_while_there_is_a_batch() {
    let budget = Duration::from_millis(2);
    let mut r: Reactor<u32> = Reactor::new(Options {
        backend: Backend::Epoll,
        latency_budget: Some(budget),
        ..Options::default()
    })
    .unwrap();
    // Level-triggered and never read: each readable socket is an event in
    // every turn, and no turn blocks.
    let pairs: Vec<_> = (0..4).map(|_| tcp_pair()).collect();
    let mut ids = Vec::new();
    for (peer, s) in &pairs {
        (&*peer).write_all(b"x").unwrap();
        let id = r
            .add_io(s.as_raw_fd(), Interest::READABLE, Mode::Level, |_, n, _| {
                *n += 1
            })
            .unwrap();
        ids.push(id);
    }
    let mut n = 0;
    let turns = |r: &mut Reactor<u32>, n: &mut u32, k: usize| {
        for _ in 0..k {
            r.run_once(n, Some(GENEROUS)).unwrap();
        }
    };
    // One watcher: one event per turn, nothing to batch.
    for &id in &ids[1..] {
        r.pause_io(id).unwrap();
    }
    turns(&mut r, &mut n, 20);
    assert_eq!(r.stats().delayed_turns, 0, "{:?}", r.stats());
    // Four events per turn: the loop sleeps before its waits, each time
    // within half the budget.
    for &id in &ids[1..] {
        r.resume_io(id).unwrap();
    }
    turns(&mut r, &mut n, 20);
    let s = r.stats();
    assert!(s.delayed_turns > 0, "{s:?}");
    assert!(s.delayed <= budget / 2 * s.delayed_turns as u32, "{s:?}");
    // Back to one event per turn: the delay halves down to nothing.
    for &id in &ids[1..] {
        r.pause_io(id).unwrap();
    }
    turns(&mut r, &mut n, 10);
    let before = r.stats().delayed_turns;
    turns(&mut r, &mut n, 20);
    assert_eq!(r.stats().delayed_turns, before, "{:?}", r.stats());
}
