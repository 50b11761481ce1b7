//! Running the programs in `examples/` as a user runs them.
//!
//! `cargo test` builds the examples before it runs any test, into
//! `target/<profile>/examples/`, beside the `deps/` folder that holds the
//! test's own binary: that is where they are found. (`cargo test --test
//! NAME` alone does not build them: run `cargo build --examples` first.)

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::GENEROUS;

/// The path of a built example.
pub fn example(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo test` builds the examples; with `--test NAME` alone, run `cargo build --examples` first",
        path.display()
    );
    path
}

/// A server example running as a child process, killed by its own PID on
/// drop.
pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Served {
    /// Starts `name` with `args` (which make it listen on `127.0.0.1:0`)
    /// and reads the address it prints as the last word of its first line.
    pub fn start(name: &str, args: &[&str]) -> Served {
        let mut child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut first = String::new();
            let _ = stdout.read_line(&mut first);
            let _ = tx.send(first);
            // Keep reading, so that the server never blocks on a full pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        // Owned by the guard before anything can fail: a panic kills it.
        let mut served = Served {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let first = rx
            .recv_timeout(GENEROUS)
            .unwrap_or_else(|_| panic!("{name} printed no address"));
        served.addr = first
            .split_whitespace()
            .last()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no address in {first:?}"));
        served
    }

    /// A connection to it, with generous read and write timeouts.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connecting to the example");
        stream.set_read_timeout(Some(GENEROUS)).unwrap();
        stream.set_write_timeout(Some(GENEROUS)).unwrap();
        stream
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
