//! The coroutine layer (`reactor::task`) as a user builds on it: every
//! waiter woken, stop, join handles, time, offload, signals, and the
//! ecosystem's traits and channels (`futures-util`, `futures-channel`) on
//! this executor. Each test runs on every backend it concerns.

mod util;

use std::cell::Cell;
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
