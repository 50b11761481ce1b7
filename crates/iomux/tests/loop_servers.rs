//! What the reactor gives the readiness servers: offload of a slow handler,
//! idle timeouts, and a graceful drain on stop.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use iomux::protocol::Protocol;
use iomux::server::{Config, Model, Server, ServerCounters};
use util::{any_local_address, wait_until, GENEROUS};

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GENEROUS)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Client A sends 10 lines (10 x 50 ms of handler work); once the server
/// has read them, client B sends one line. Returns whether A's reply had
/// arrived when B got its own: the loop sends in order, and on loopback a
/// `send` puts the bytes in the peer's queue before it returns.
fn first_reply_was_there_when_second_client_was_answered(
    model: Model,
    offload_threads: usize,
) -> bool {
    let config = Config {
        offload_threads,
        ..Config::default()
    };
    let slow = Protocol::SlowUpper(50);
    let server = Server::spawn(model, any_local_address(), config, slow).unwrap();
    let counters: ServerCounters = server.counters().clone();
    let a_msg = b"a\n".repeat(10);
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    a.write_all(&a_msg).unwrap();
    // A's input is read: its work has started (on the loop, or the pool).
    assert!(wait_until(
        || counters.snapshot().bytes_in >= a_msg.len() as u64
    ));
    b.write_all(b"ping\n").unwrap();
    let mut reply = [0; 5];
    b.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"PING\n");
    a.set_nonblocking(true).unwrap();
    let mut peek = [0; 1];
    let a_was_there = match a.peek(&mut peek) {
        Ok(n) => n > 0,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("{e}"),
    };
    a.set_nonblocking(false).unwrap();
    let mut a_reply = vec![0; a_msg.len()];
    a.read_exact(&mut a_reply).unwrap();
    assert_eq!(a_reply, a_msg.to_ascii_uppercase());
    a_was_there
}

#[test]
fn slow_handler_stalls_the_loop_without_offload() {
    for model in [Model::Epoll, Model::Poll, Model::Coroutine] {
        // The loop is inside A's handler: B's line is not even read until
        // A's reply is sent.
        assert!(
            first_reply_was_there_when_second_client_was_answered(model, 0),
            "{model}: B answered before A without offload?"
        );
    }
}

#[test]
fn offload_lets_the_loop_answer_others_while_slow_work_runs() {
    for model in [Model::Epoll, Model::Poll, Model::Coroutine] {
        // A's ten lines run on the pool (500 ms); B's one line (50 ms) runs
        // on another pool thread and its reply goes out first.
        assert!(
            !first_reply_was_there_when_second_client_was_answered(model, 2),
            "{model}: B had to wait for A's work"
        );
    }
}

#[test]
fn offload_keeps_each_connection_in_order_under_load() {
    let config = Config {
        offload_threads: 3,
        ..Config::default()
    };
    let server = Server::spawn(Model::Epoll, any_local_address(), config, Protocol::Upper).unwrap();
    let addr = server.addr();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            thread::spawn(move || {
                let mut rng = util::Rng::new(i);
                let input = rng.bytes(200_000);
                let mut s = connect(addr);
                let mut w = s.try_clone().unwrap();
                let data = input.clone();
                let writer = thread::spawn(move || {
                    for chunk in data.chunks(1000) {
                        w.write_all(chunk).unwrap();
                    }
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                writer.join().unwrap();
                assert!(
                    got == Protocol::Upper.expected(&input),
                    "client {i}: bytes lost or reordered"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(server.counters().snapshot().offloaded > 0);
}

#[test]
fn idle_connections_are_closed_and_active_ones_kept() {
    for model in [Model::Epoll, Model::Select] {
        let config = Config {
            idle_timeout: Some(Duration::from_millis(800)),
            ..Config::default()
        };
        let server = Server::spawn(model, any_local_address(), config, Protocol::Upper).unwrap();
        let mut idle = connect(server.addr());
        let mut active = connect(server.addr());
        // The active client talks every 50 ms for twice the timeout.
        for _ in 0..32 {
            active.write_all(b"x").unwrap();
            let mut b = [0; 1];
            active.read_exact(&mut b).unwrap();
            thread::sleep(Duration::from_millis(50));
        }
        // The idle one has been closed by now: EOF, not a timeout.
        let mut b = [0; 1];
        assert_eq!(
            idle.read(&mut b).unwrap(),
            0,
            "{model}: idle connection still open"
        );
        active.write_all(b"y").unwrap();
        active.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"Y", "{model}: active connection was closed");
        assert_eq!(server.counters().snapshot().idle_closed, 1);
    }
}

#[test]
fn stop_drains_produced_output_then_closes() {
    for model in [Model::Epoll, Model::Poll] {
        let config = Config {
            max_output: 1 << 20,
            drain_timeout: GENEROUS,
            ..Config::default()
        };
        let server = Server::spawn(model, any_local_address(), config, Protocol::Upper).unwrap();
        let counters = server.counters().clone();
        // A client that sends a lot and does not read yet: output piles up.
        let mut hog = connect(server.addr());
        let mut hog_writer = hog.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let chunk = vec![b'q'; 64 * 1024];
            // Ends when the server closes the connection (or at 256 MiB).
            for _ in 0..4096 {
                if hog_writer.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        assert!(wait_until(|| counters.snapshot().pending_output > 0));
        let idle = connect(server.addr());
        // Stop on another thread: it returns once drained.
        let stopper = thread::spawn(move || server.shutdown());
        // The idle client is closed at once; the hog gets every byte the
        // server read from it, upper-cased, then EOF.
        let mut idle = idle;
        let mut b = [0; 1];
        assert_eq!(idle.read(&mut b).unwrap(), 0);
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            match hog.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // The server closed with our unread input in its queue: the
                // kernel resets, after the data it had delivered.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{e}"),
            }
        }
        // Our close ends the server's lingering read, if the server has not
        // closed already (once nothing could be lost), and the writer.
        let _ = hog.shutdown(std::net::Shutdown::Both);
        stopper
            .join()
            .unwrap()
            .expect("serve returns Ok after draining");
        writer.join().unwrap();
        let read_by_server = counters.snapshot().bytes_in as usize;
        assert!(read_by_server > 0);
        assert_eq!(
            got.len(),
            read_by_server,
            "{model}: produced output lost in the drain"
        );
        assert!(got.iter().all(|&c| c == b'Q'));
        assert_eq!(counters.snapshot().pending_output, 0);
    }
}
