//! Servers of several loops ([`Config::threads`]): who may run them, how
//! their listeners share one port, and what a failing loop does to the
//! others. The conformance suite (`models.rs`) serves with 2 and 4 loops.

mod util;

use std::io;
use std::net::TcpListener;
use std::sync::mpsc;

use iomux::protocol::Protocol;
use iomux::server::{self, Config, Model, Server, ServerCounters, Stop};
use util::{any_local_address, GENEROUS};

#[test]
fn only_the_loop_models_take_threads() {
    let config = Config {
        threads: 2,
        ..Config::default()
    };
    for model in Model::ALL {
        if model == Model::Uring && !model.is_supported() {
            eprintln!("uring skipped: {}", iomux::uring::probe().unwrap_err());
            continue;
        }
        match Server::spawn(model, any_local_address(), config, Protocol::Upper) {
            Ok(server) => {
                assert!(model.supports_threads(), "{model} took 2 threads");
                assert_eq!(server.counters().loops().len(), 2);
                server.shutdown().unwrap();
            }
            Err(e) => {
                assert!(!model.supports_threads(), "{model}: {e}");
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
                assert!(
                    e.to_string().contains("(--threads) does not work on model"),
                    "{e}"
                );
            }
        }
    }
    let zero = Config {
        threads: 0,
        ..Config::default()
    };
    assert_eq!(
        zero.validate().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn bind_loops_puts_every_listener_on_the_first_ones_port() {
    let listeners = server::bind_loops(any_local_address(), 3).unwrap();
    assert_eq!(listeners.len(), 3);
    let port = listeners[0].local_addr().unwrap().port();
    assert_ne!(port, 0);
    for l in &listeners {
        assert_eq!(l.local_addr().unwrap().port(), port);
    }
    assert_eq!(util::sockets_on_local_port(port), 3);
    // Binding the port without SO_REUSEPORT fails: the group is ours.
    let mut addr = any_local_address();
    addr.set_port(port);
    assert_eq!(
        TcpListener::bind(addr).unwrap_err().kind(),
        io::ErrorKind::AddrInUse
    );
    drop(listeners);
    assert_eq!(util::sockets_on_local_port(port), 0);
}

#[test]
fn serve_runs_one_loop_and_serve_loops_wants_one_listener_each() {
    let config = Config {
        threads: 2,
        ..Config::default()
    };
    let stop = Stop::new().unwrap();
    let listener = TcpListener::bind(any_local_address()).unwrap();
    let counters = ServerCounters::new(2);
    let err = server::serve(
        Model::Epoll,
        listener,
        &config,
        &stop,
        &counters.loops()[0],
        Protocol::Upper,
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("serve_loops"), "{err}");
    // Two threads, one listener.
    let one = server::bind_loops(any_local_address(), 1).unwrap();
    let err = server::serve_loops(
        Model::Epoll,
        one,
        &config,
        &stop,
        &counters,
        Protocol::Upper,
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

/// A loop that cannot start (its "listener" is /dev/null, which epoll
/// refuses) stops the loop that did start, and its error comes back.
#[test]
fn a_loop_that_fails_stops_the_others() {
    let config = Config {
        threads: 2,
        ..Config::default()
    };
    let good = TcpListener::bind(any_local_address()).unwrap();
    let port = good.local_addr().unwrap().port();
    let dev_null = std::fs::File::open("/dev/null").unwrap();
    let bad = TcpListener::from(std::os::fd::OwnedFd::from(dev_null));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stop = Stop::new().unwrap();
        let counters = ServerCounters::new(2);
        let res = server::serve_loops(
            Model::Epoll,
            vec![good, bad],
            &config,
            &stop,
            &counters,
            Protocol::Upper,
        );
        let _ = tx.send((res, stop.is_stopped()));
    });
    let (res, stopped) = rx
        .recv_timeout(GENEROUS)
        .expect("serve_loops returns once a loop fails");
    let err = res.unwrap_err();
    assert!(
        err.to_string().contains("cannot be watched by epoll"),
        "{err}"
    );
    assert!(stopped, "the failing loop gave the stop");
    assert_eq!(util::sockets_on_local_port(port), 0);
}
