//! Helpers shared by the integration tests. Each test file includes this
//! module with `mod util;`; not every file uses every helper.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// 127.0.0.1 on a port the OS picks: tests never collide.
pub fn any_local_address() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A connected pair of TCP sockets on loopback: (client, server side).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(any_local_address()).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// A deadline long enough that a correct run never reaches it on a loaded
/// two-core machine; used only where an event is expected.
pub const GENEROUS: Duration = Duration::from_secs(10);
