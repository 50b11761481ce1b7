//! The coroutine layer (`reactor::task`) as a user builds on it: every
//! waiter woken, stop, join handles, time, offload, signals, and the
//! ecosystem's traits and channels (`futures-util`, `futures-channel`) on
//! this executor. Each test runs on every backend it concerns.

mod util;

use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use iomux::reactor::task::{self, Async, Runtime};
use iomux::reactor::Options;
use iomux::selector::Backend;
use util::{tcp_pair, GENEROUS};

fn runtime(backend: Backend) -> Runtime {
    Runtime::new(Options {
        backend,
        ..Options::default()
    })
    .unwrap()
}

/// Lets the tasks spawned so far run up to their first wait.
async fn let_others_wait() {
    for _ in 0..3 {
        task::yield_now().await;
    }
}

/// Waits on the loop (never blocking it) until `n` tasks counted
/// themselves in `woken`, or `GENEROUS` passes; returns the count.
async fn wait_for_count(woken: &Cell<usize>, n: usize) -> usize {
    let deadline = Instant::now() + GENEROUS;
    while woken.get() < n && Instant::now() < deadline {
        task::sleep(Duration::from_millis(1)).await.unwrap();
    }
    woken.get()
}

/// Several tasks wait for the same fd to become readable: the data wakes
/// every one of them. (With one waker slot per direction, each waiter
/// replaced the one before, and only the last was ever woken.)
#[test]
fn every_reader_of_an_async_is_woken() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let (client, server) = tcp_pair();
        let woken = rt
            .block_on(async move {
                let server = Rc::new(Async::new(server).unwrap());
                let woken = Rc::new(Cell::new(0));
                for _ in 0..3 {
                    let (server, woken) = (server.clone(), woken.clone());
                    task::spawn(async move {
                        server.readable().await;
                        woken.set(woken.get() + 1);
                    });
                }
                let_others_wait().await;
                (&client).write_all(b"x").unwrap();
                wait_for_count(&woken, 3).await
            })
            .unwrap();
        assert_eq!(woken, 3, "{backend}: readers woken");
    }
}

/// Several tasks wait for room in the same full socket: room wakes every
/// one of them.
#[test]
fn every_writer_of_an_async_is_woken() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let (client, server) = tcp_pair();
        let woken = rt
            .block_on(async move {
                let server = Rc::new(Async::new(server).unwrap());
                // Fill the socket until the kernel refuses more.
                let chunk = [7u8; 64 * 1024];
                let mut sent = 0usize;
                loop {
                    match server.get_ref().write(&chunk) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("filling the socket: {e}"),
                    }
                }
                server.clear_writable();
                let woken = Rc::new(Cell::new(0));
                for _ in 0..3 {
                    let (server, woken) = (server.clone(), woken.clone());
                    task::spawn(async move {
                        server.writable().await;
                        woken.set(woken.get() + 1);
                    });
                }
                let_others_wait().await;
                // The peer drains everything, on a thread of its own.
                let drain = std::thread::spawn(move || {
                    let mut client = client;
                    client.set_read_timeout(Some(GENEROUS)).unwrap();
                    let mut buf = vec![0; 64 * 1024];
                    let mut got = 0;
                    while got < sent {
                        got += client.read(&mut buf).unwrap();
                    }
                    client
                });
                let n = wait_for_count(&woken, 3).await;
                drop(drain.join().unwrap());
                n
            })
            .unwrap();
        assert_eq!(woken, 3, "{backend}: writers woken");
    }
}

/// Sets its flag when dropped: shows that a future was dropped.
struct DropFlag(Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// A future that never completes and says when it is dropped.
fn forever(dropped: &Rc<Cell<bool>>) -> impl std::future::Future<Output = ()> + 'static {
    let flag = DropFlag(dropped.clone());
    async move {
        let _flag = flag;
        std::future::pending::<()>().await
    }
}

/// Sends `signo` to this process; the thread that raises it runs the
/// handler, which only writes to the reactor's pipe.
fn raise(signo: i32) {
    // SAFETY: raise has no memory-safety preconditions; the signal is
    // watched by the test's reactor, so its handler runs, not the default.
    assert_eq!(unsafe { libc::raise(signo) }, 0);
}

#[test]
fn block_on_returns_when_a_callback_stops_the_loop() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        rt.reactor()
            .add_signal(libc::SIGUSR1, |r, _, _| r.stop())
            .unwrap();
        let dropped = Rc::new(Cell::new(false));
        let never = forever(&dropped);
        let err = rt
            .block_on(async move {
                raise(libc::SIGUSR1);
                never.await
            })
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "{backend}");
        assert!(task::is_stopped(&err), "{backend}: {err}");
        assert!(dropped.get(), "{backend}: the stopped future is dropped");
        // The stop was used up: the runtime runs the next future.
        assert_eq!(rt.block_on(async { 7 }).unwrap(), 7, "{backend}");
        rt.reactor().remove_signal(libc::SIGUSR1);
    }
}

#[test]
fn block_on_returns_when_another_thread_stops_the_loop() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let handle = rt.reactor().handle();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let stopper = std::thread::spawn(move || {
            started.recv().unwrap();
            handle.stop();
        });
        let dropped = Rc::new(Cell::new(false));
        let never = forever(&dropped);
        // A task beside it, not finished when the loop stops: it stays.
        let (tx, rx) = futures_channel::oneshot::channel::<u32>();
        let beside = rt.spawn(async move { rx.await.unwrap() + 1 });
        let err = rt
            .block_on(async move {
                started_tx.send(()).unwrap();
                never.await
            })
            .unwrap_err();
        stopper.join().unwrap();
        assert!(task::is_stopped(&err), "{backend}: {err}");
        assert!(dropped.get(), "{backend}: the stopped future is dropped");
        assert_eq!(rt.tasks(), 1, "{backend}: the other task stays");
        tx.send(41).unwrap();
        assert_eq!(rt.block_on(beside).unwrap(), Ok(42), "{backend}");
    }
}

#[test]
fn a_join_handle_gives_the_output_aborts_or_detaches() {
    let mut rt = runtime(Backend::recommended());
    let aborted = Rc::new(Cell::new(false));
    let detached_ran = Rc::new(Cell::new(0));
    let never = forever(&aborted);
    let ran = detached_ran.clone();
    let (output, cancelled, finished) = rt
        .block_on(async move {
            let output = task::spawn(async {
                task::yield_now().await;
                "done"
            })
            .await;
            let stuck = task::spawn(never);
            task::yield_now().await;
            assert!(!stuck.is_finished());
            stuck.abort();
            let finished = stuck.is_finished();
            let cancelled = stuck.await;
            // Dropped at once: the task runs on, detached; and the same
            // without a handle at all.
            let ran2 = ran.clone();
            drop(task::spawn(async move {
                task::yield_now().await;
                ran.set(ran.get() + 1);
            }));
            task::spawn_detached(async move {
                task::yield_now().await;
                ran2.set(ran2.get() + 1);
            });
            (output, cancelled, finished)
        })
        .unwrap();
    assert_eq!(output, Ok("done"));
    assert!(!finished, "abort takes effect at the executor's next turn");
    assert_eq!(cancelled, Err(task::Cancelled));
    assert!(aborted.get(), "the aborted task's future is dropped");
    // The detached task finishes on the runtime's next run.
    rt.block_on(async {
        for _ in 0..3 {
            task::yield_now().await;
        }
    })
    .unwrap();
    assert_eq!(detached_ran.get(), 2, "detached tasks run on");
    assert_eq!(rt.tasks(), 0);
}

#[test]
fn abort_after_completion_keeps_the_output() {
    let mut rt = runtime(Backend::recommended());
    let out = rt
        .block_on(async {
            let h = task::spawn(async { 5 });
            while !h.is_finished() {
                task::yield_now().await;
            }
            h.abort();
            h.await
        })
        .unwrap();
    assert_eq!(out, Ok(5));
}

#[test]
fn sleep_lasts_at_least_its_duration() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let d = Duration::from_millis(30);
        let start = Instant::now();
        rt.block_on(task::sleep(d)).unwrap().unwrap();
        assert!(start.elapsed() >= d, "{backend}: woke early");
        assert_eq!(rt.reactor().stats().timers, 0, "{backend}: fired and gone");
    }
}

#[test]
fn timeout_ends_what_never_completes_and_not_what_does() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let dropped = Rc::new(Cell::new(false));
        let never = forever(&dropped);
        let d = Duration::from_millis(20);
        let start = Instant::now();
        let err = rt.block_on(task::timeout(d, never)).unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{backend}");
        assert!(start.elapsed() >= d, "{backend}: timed out early");
        assert!(dropped.get(), "{backend}: the timed-out future is dropped");

        // Completes first (after a real wait on the loop): its output, and
        // the timer is taken off the heap at once, not left to fire.
        let out = rt
            .block_on(task::timeout(GENEROUS, async {
                task::sleep(Duration::from_millis(1)).await.unwrap();
                3
            }))
            .unwrap();
        assert_eq!(out.unwrap(), 3, "{backend}");
        assert_eq!(
            rt.reactor().stats().timers,
            0,
            "{backend}: timer left armed"
        );
    }
}

#[test]
fn an_interval_ticks_once_per_period_and_stops_when_dropped() {
    let mut rt = runtime(Backend::recommended());
    let period = Duration::from_millis(10);
    let start = Instant::now();
    rt.block_on(async move {
        let mut every = task::interval(period);
        for _ in 0..3 {
            every.tick().await.unwrap();
        }
    })
    .unwrap();
    assert!(start.elapsed() >= period * 3, "ticked early");
    assert_eq!(
        rt.reactor().stats().timers,
        0,
        "the dropped interval is disarmed"
    );
}

#[test]
fn time_outside_a_runtime_says_what_to_do() {
    let mut sleep = Box::pin(task::sleep(Duration::from_millis(1)));
    let waker = std::task::Waker::noop();
    let res = sleep
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    match res {
        std::task::Poll::Ready(Err(e)) => {
            assert!(e.to_string().contains("Runtime::block_on"), "{e}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn offload_runs_on_the_pool_while_the_loop_serves_others() {
    let mut rt = Runtime::new(Options {
        offload_threads: 2,
        ..Options::default()
    })
    .unwrap();
    let loop_thread = std::thread::current().id();
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let (job_thread, got) = rt
        .block_on(async move {
            // The job blocks until a task on the loop sends it a value: it
            // completes only if the loop keeps running while it waits.
            let job = task::offload(move || {
                let v = rx.recv_timeout(GENEROUS).expect("the loop ran on");
                (std::thread::current().id(), v * 2)
            });
            task::spawn(async move {
                task::yield_now().await;
                tx.send(21).unwrap();
            });
            job.await.unwrap()
        })
        .unwrap();
    assert_eq!(got, 42);
    assert_ne!(job_thread, loop_thread, "ran on a pool thread");
}

#[test]
fn an_offloaded_panic_is_an_error_and_the_loop_lives_on() {
    let mut rt = runtime(Backend::recommended());
    let (err, after) = rt
        .block_on(async {
            let err = task::offload(|| -> u8 { panic!("job failed on purpose") })
                .await
                .unwrap_err();
            let after = task::offload(|| 9u8).await.unwrap();
            (err, after)
        })
        .unwrap();
    assert_eq!(
        err,
        iomux::reactor::OffloadError::Panicked("job failed on purpose".into())
    );
    assert_eq!(after, 9);
}

#[test]
fn offload_waits_for_room_when_the_queue_is_full() {
    let mut rt = Runtime::new(Options {
        offload_threads: 1,
        offload_queue: 1,
        ..Options::default()
    })
    .unwrap();
    let results = rt
        .block_on(async {
            let jobs: Vec<_> = (0..8u64)
                .map(|i| task::spawn(task::offload(move || i * i)))
                .collect();
            let mut results = Vec::new();
            for job in jobs {
                results.push(job.await.unwrap().unwrap());
            }
            results
        })
        .unwrap();
    assert_eq!(results, (0..8u64).map(|i| i * i).collect::<Vec<_>>());
    assert_eq!(rt.reactor().stats().offload_rejected, 0);
}

#[test]
fn a_signal_is_a_stream_of_deliveries_on_the_loop() {
    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let (first, quiet, second) = rt
            .block_on(async {
                let mut usr2 = task::signal(libc::SIGUSR2).await.unwrap();
                raise(libc::SIGUSR2);
                let first = usr2.recv().await;
                // Nothing more was sent: nothing more arrives.
                let quiet = task::timeout(Duration::from_millis(20), usr2.recv()).await;
                raise(libc::SIGUSR2);
                let second = usr2.recv().await;
                (first, quiet.is_err(), second)
            })
            .unwrap();
        assert_eq!((first, quiet, second), (libc::SIGUSR2, true, libc::SIGUSR2));
        // Dropping `Signals` stopped the watch: the signal is free again.
        rt.reactor()
            .add_signal(libc::SIGUSR2, |_, _, _| {})
            .unwrap();
        assert!(rt.reactor().remove_signal(libc::SIGUSR2), "{backend}");
    }
}

#[test]
fn watching_a_signal_twice_is_refused() {
    let mut rt = runtime(Backend::recommended());
    let res = rt
        .block_on(async {
            let _a = task::signal(libc::SIGWINCH).await.unwrap();
            task::signal(libc::SIGWINCH).await.map(drop)
        })
        .unwrap();
    assert!(res.is_err(), "the second watch of one signal must fail");
}

/// `futures-util`'s line reader, `copy` and `split` on `Async<TcpStream>`
/// (the `futures` feature: this crate's tests build with it).
#[test]
fn futures_io_combinators_work_on_async_sockets() {
    use futures_util::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    for backend in Backend::supported() {
        let mut rt = runtime(backend);
        let (lines_client, lines_server) = tcp_pair();
        let (copy_client, copy_server) = tcp_pair();
        let payload = util::Rng::new(16).bytes(1 << 20);
        let client = {
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut c = lines_client;
                c.set_read_timeout(Some(GENEROUS)).unwrap();
                c.write_all(b"first line\nsecond, in two ").unwrap();
                c.write_all(b"writes\n").unwrap();
                let mut answer = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(&c), &mut answer).unwrap();
                // The echo: 1 MiB through copy, then EOF both ways.
                let mut e = copy_client;
                e.set_read_timeout(Some(GENEROUS)).unwrap();
                let writer = {
                    let mut e = e.try_clone().unwrap();
                    std::thread::spawn(move || {
                        e.write_all(&payload).unwrap();
                        e.shutdown(std::net::Shutdown::Write).unwrap();
                    })
                };
                let mut echoed = Vec::new();
                e.read_to_end(&mut echoed).unwrap();
                writer.join().unwrap();
                (answer, echoed)
            })
        };
        let copied = rt
            .block_on(async move {
                let s = Async::new(lines_server).unwrap();
                let mut reader = BufReader::new(&s);
                let (mut a, mut b) = (String::new(), String::new());
                reader.read_line(&mut a).await.unwrap();
                reader.read_line(&mut b).await.unwrap();
                // futures-util's write_all, not Async's own.
                AsyncWriteExt::write_all(&mut &s, format!("{}|{}", a.trim(), b).as_bytes())
                    .await
                    .unwrap();

                let e = Async::new(copy_server).unwrap();
                let (r, mut w) = e.split();
                let n = futures_util::io::copy(r, &mut w).await.unwrap();
                w.close().await.unwrap();
                n
            })
            .unwrap();
        let (answer, echoed) = client.join().unwrap();
        assert_eq!(answer, "first line|second, in two writes\n", "{backend}");
        assert_eq!(copied, payload.len() as u64, "{backend}");
        assert!(echoed == payload, "{backend}: the echo differs");
    }
}

/// `futures-channel`'s bounded mpsc and oneshot between tasks: senders
/// wait for room and are woken by the receiver, on this executor.
#[test]
fn futures_channels_work_between_tasks() {
    use futures_util::{SinkExt, StreamExt};

    let mut rt = runtime(Backend::recommended());
    let (total, order_kept) = rt
        .block_on(async {
            // Capacity 1 (plus one slot per sender): senders must wait.
            let (tx, mut rx) = futures_channel::mpsc::channel::<(u32, u32)>(1);
            let mut producers = Vec::new();
            for p in 0..4 {
                let mut tx = tx.clone();
                producers.push(task::spawn(async move {
                    for i in 0..100 {
                        tx.send((p, i)).await.unwrap();
                    }
                }));
            }
            drop(tx);
            let (done_tx, done_rx) = futures_channel::oneshot::channel();
            task::spawn(async move {
                let mut last = [None::<u32>; 4];
                let mut order_kept = true;
                let mut total = 0;
                while let Some((p, i)) = rx.next().await {
                    order_kept &= last[p as usize].map_or(i == 0, |l| i == l + 1);
                    last[p as usize] = Some(i);
                    total += 1;
                }
                done_tx.send((total, order_kept)).unwrap();
            });
            for p in producers {
                p.await.unwrap();
            }
            done_rx.await.unwrap()
        })
        .unwrap();
    assert_eq!(total, 400);
    assert!(order_kept, "each sender's items arrive in order");
}

/// `Interval` and `Signals` are `Stream`s with the feature.
#[test]
fn intervals_are_streams() {
    use futures_util::StreamExt;

    let mut rt = runtime(Backend::recommended());
    let ticks = rt
        .block_on(async {
            task::interval(Duration::from_millis(2))
                .take(3)
                .collect::<Vec<_>>()
                .await
        })
        .unwrap();
    assert_eq!(ticks.len(), 3);
    assert!(ticks.iter().all(Result::is_ok));
}

/// The same traits on a Unix socket pair, both ends on the loop.
#[test]
fn futures_io_works_on_unix_streams() {
    use futures_util::io::{AsyncReadExt, AsyncWriteExt};

    let mut rt = runtime(Backend::recommended());
    let got = rt
        .block_on(async {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let (a, mut b) = (Async::new(a).unwrap(), Async::new(b).unwrap());
            let writer = task::spawn(async move {
                let mut a = a;
                AsyncWriteExt::write_all(&mut a, b"over a unix socket")
                    .await
                    .unwrap();
                a.close().await.unwrap(); // shuts down the write side: EOF
            });
            let mut got = Vec::new();
            AsyncReadExt::read_to_end(&mut b, &mut got).await.unwrap();
            writer.await.unwrap();
            got
        })
        .unwrap();
    assert_eq!(got, b"over a unix socket");
}
