//! iomux: every classic network I/O model behind one sans-IO handler.
//!
//! The crate is the lesson of the seeds made runnable, one layer per module:
//!
//! | module | what it holds |
//! |---|---|
//! | [`budget`] | the latency budget: how long a loop may hold off its next wait to batch wake-ups, adapting to the load |
//! | [`selector`] | readiness multiplexing: select, poll and epoll behind one [`Selector`](selector::Selector) |
//! | [`protocol`] | the sans-IO [`Handler`](protocol::Handler) every model serves (`upper`, `echo`) |
//! | [`reactor`] | the event loop: I/O callbacks, timers, signals, posts from other threads, offload; coroutines on top |
//! | [`conn`] | the connection core: one connection's phase, parked input, bounded output, close decision |
//! | [`counters`] | what a server counts, defined once |
//! | [`push`] | server push: output queued for a connection from anywhere, bounded |
//! | [`server`] | one driver per I/O model, all serving the same handler |
//! | [`uring`] | completion-based I/O: io_uring probe and ring (Linux, `uring` feature) |
//! | [`sys`] | the raw syscalls, each turned into `io::Result` |
//!
//! # Which selector backend each OS gets
//!
//! | OS | backends | default |
//! |---|---|---|
//! | Linux, Android | select, poll, epoll | epoll |
//! | other Unix (macOS, BSDs) | select, poll | poll (kqueue is planned) |
//!
//! # The I/O models
//!
//! | model | who waits for data | who copies it | threads |
//! |---|---|---|---|
//! | blocking (iterative) | the one thread, in `recv` | the thread | 1, one client at a time |
//! | threaded | each connection's thread | that thread | one per connection, capped |
//! | pool | a worker, in `recv` | the worker | a fixed N |
//! | busy-poll | nobody: `recv` returns `EAGAIN` and the loop spins | the thread | 1, a full core |
//! | select / poll / epoll | the one thread, in the selector | the thread, after readiness | 1 |
//! | uring | the kernel | the kernel, into a provided buffer | 1 |
//!
//! # Serving in four lines
//!
//! Every model serves the same handler; a test, a bench or an application
//! starts one on a thread of its own and talks to it over loopback:
//!
//! ```
//! use std::io::{Read, Write};
//! use iomux::protocol::Protocol;
//! use iomux::server::{Config, Model, Server};
//!
//! let addr = "127.0.0.1:0".parse()?;
//! let server = Server::spawn(Model::auto(), addr, Config::default(), Protocol::Upper)?;
//! let mut client = std::net::TcpStream::connect(server.addr())?;
//! client.write_all(b"hello, iomux")?;
//! let mut reply = [0; 12];
//! client.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"HELLO, IOMUX");
//! drop(client);
//! server.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod budget;
pub mod conn;
pub mod counters;
pub mod protocol;
pub mod push;
pub mod reactor;
pub mod selector;
pub mod server;
pub mod sys;
pub mod uring;
