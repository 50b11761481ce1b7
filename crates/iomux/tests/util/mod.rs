//! Helpers shared by the integration tests. Each test file includes this
//! module with `mod util;`; not every file uses every helper.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

pub mod examples;

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

/// Deterministic pseudo-random bytes (xorshift64*), so a failing run can be
/// replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The socket inodes this process holds open, from /proc/self/fd.
#[cfg(target_os = "linux")]
fn own_socket_inodes() -> std::collections::HashSet<u64> {
    let mut set = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(link) = std::fs::read_link(entry.path()) {
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                set.insert(inode.parse().unwrap());
            }
        }
    }
    set
}

/// How many sockets this process holds open whose *local* port is `port`:
/// for a server in this process, its listener plus every accepted connection
/// it has not closed. Immune to other tests' sockets running in parallel.
#[cfg(target_os = "linux")]
pub fn sockets_on_local_port(port: u16) -> usize {
    let own = own_socket_inodes();
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols[1] = local "ADDR:PORT" in hex, cols[9] = inode
            let local_port = cols[1].rsplit(':').next().unwrap();
            let inode: u64 = cols[9].parse().unwrap();
            if u16::from_str_radix(local_port, 16).unwrap() == port && own.contains(&inode) {
                count += 1;
            }
        }
    }
    count
}

/// Polls `cond` until it holds or `GENEROUS` passes; returns whether it held.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + GENEROUS;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Makes the next close of `stream` send a reset (SO_LINGER 0).
pub fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid libc::linger and its size is passed with it.
    let res = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        res,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
}
