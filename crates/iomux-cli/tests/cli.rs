//! The `iomux` binary end to end: serve, client and bench as a user runs
//! them, on loopback ports the OS assigns.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{address_in, bench_json, measured_row, Server as Served, IOMUX};

fn iomux(args: &[&str]) -> Output {
    Command::new(IOMUX)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running iomux")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed run with exactly one `iomux: error:` line containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected, got: {err}");
    assert!(err.starts_with("iomux: error: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A server child, stopped by closing its stdin (`--control`) and killed
/// (by its own PID) only if a test fails before that.
/// Runs `iomux client` with `input` piped to its stdin.
fn client_piped(addr: SocketAddr, input: &[u8]) -> Output {
    let mut child = Command::new(IOMUX)
        .args(["client", "--addr", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

#[test]
fn bad_model_is_a_usage_error() {
    let out = iomux(&["serve", "--model", "kqueue-please"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown model"), "{err}");
    assert!(err.contains("epoll"), "the error lists the models: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn zero_workers_is_refused() {
    let out = iomux(&["serve", "--workers", "0", "--addr", "127.0.0.1:0"]);
    assert_one_line_error(&out, "workers must be at least 1");
}

#[test]
fn busy_port_says_what_to_do() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = iomux(&["serve", "--addr", &addr]);
    assert_one_line_error(&out, &format!("address {addr} is in use"));
    assert!(stderr(&out).contains("port 0"));
}

#[test]
fn client_without_server_says_what_to_do() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = iomux(&["client", "--addr", &addr]);
    assert_one_line_error(&out, "nothing is listening");
    assert!(stderr(&out).contains("iomux serve --addr"));
}

#[test]
fn every_model_serves_the_piped_client() {
    for model in [
        "auto",
        "blocking",
        "threaded",
        "pool",
        "busy-poll",
        "select",
        "poll",
        "epoll",
    ] {
        let server = Served::start(model, &[]);
        assert!(
            server
                .first_line
                .starts_with("iomux: serving upper with model "),
            "{}",
            server.first_line
        );
        let out = client_piped(server.addr, b"hello, World 42\nsecond line\n");
        assert!(out.status.success(), "{model}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "HELLO, WORLD 42\nSECOND LINE\n",
            "model {model}"
        );
        server.stop();
    }
}

#[test]
fn piped_client_carries_a_large_input_intact() {
    let server = Served::start("epoll", &["--protocol", "echo"]);
    let input: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let out = client_piped(server.addr, &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == input, "echoed bytes differ");
    server.stop();
}

#[test]
fn bulk_client_reports_its_rate() {
    let server = Served::start("poll", &[]);
    let out = iomux(&[
        "client",
        "--addr",
        &server.addr.to_string(),
        "--repeat",
        "500",
        "--message",
        "abc",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("500 round trips in "), "{text}");
    assert!(text.trim_end().ends_with("round trips/s"), "{text}");
    server.stop();
}

#[test]
fn bulk_client_catches_a_wrong_reply() {
    // An echo server does not upper-case; the client checks for upper.
    let server = Served::start("epoll", &["--protocol", "echo"]);
    let out = iomux(&[
        "client",
        "--addr",
        &server.addr.to_string(),
        "--repeat",
        "3",
        "--message",
        "abc",
    ]);
    assert_one_line_error(&out, "round trip 1 of 3: expected \"ABC\", got \"abc\"");
    server.stop();
}

/// Starts `iomux serve` on 127.0.0.1:0 with stdout piped; returns it and
/// the address from its first line.
fn spawn_serve(extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(IOMUX)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = address_in(&line);
    (child, addr)
}

/// Sends SIGTERM to our own child.
fn sigterm(child: &Child) {
    // SAFETY: kill with a valid signal number on the PID of our own child,
    // which has not been reaped yet, so the PID is still ours.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    for model in ["epoll", "threaded", "coroutine"] {
        let (child, _) = spawn_serve(&["--model", model]);
        sigterm(&child);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{model}: {:?}", out.status);
        assert!(
            stderr(&out).contains("stopped after 0 connections"),
            "{model}"
        );
    }
}

#[test]
fn bench_smoke_measures_every_requested_model() {
    let (report, out) = bench_json(&[
        "--models",
        "threaded,epoll,busy-poll,tokio",
        "--conns",
        "8",
        "--paced-conns",
        "8",
        "--rate",
        "2000",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--idle-conns",
        "10",
        "--idle-secs",
        "0.2",
        "--mem-conns",
        "50",
        "--server-threads",
        "1,2",
    ]);
    let runs = report["runs"].as_array().unwrap();
    // epoll also ran with two loops; the others, which run one, did not.
    for shape in ["closed", "paced"] {
        let row = runs
            .iter()
            .find(|r| r["model"] == "epoll" && r["threads"] == 2 && r["shape"] == shape)
            .unwrap_or_else(|| panic!("no {shape} row for epoll with 2 loops"));
        assert!(
            row["status"].is_null(),
            "epoll x2 {shape}: {}",
            row["status"]
        );
        assert!(row["rt_per_s"].as_f64().unwrap() > 0.0);
        let per_loop: Vec<u64> = row["loop_conns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(per_loop.len(), 2, "{per_loop:?}");
        assert_eq!(per_loop.iter().sum::<u64>(), 8, "{per_loop:?}");
        // Compared with the one-loop epoll of the same rounds.
        for ratio in ["rt_vs_one_loop", "cpu_vs_one_loop"] {
            assert!(row[ratio].as_f64().unwrap() > 0.0, "{ratio}: {row}");
        }
    }
    assert!(!runs
        .iter()
        .any(|r| r["threads"] != 1 && r["model"] != "epoll"));
    for model in ["threaded", "epoll", "busy-poll", "tokio"] {
        for shape in ["closed", "paced"] {
            let row = measured_row(runs, model, shape);
            assert!(row["p99_us"].as_f64().unwrap() > 0.0);
        }
        let idle = report["idle"].as_array().unwrap();
        assert!(idle
            .iter()
            .any(|r| r["model"] == model && r["status"].is_null()));
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("epoll") && table.contains("rt/s"), "{table}");
}

#[test]
fn sigterm_with_busy_clients_drains_and_exits_zero() {
    for threads in ["1", "2"] {
        sigterm_with_busy_clients(threads);
    }
}

fn sigterm_with_busy_clients(threads: &str) {
    let (child, addr) = spawn_serve(&[
        "--model",
        "epoll",
        "--drain-timeout",
        "3s",
        "--threads",
        threads,
    ]);
    // Busy clients: round trips back to back, every reply checked, until
    // the server ends the connection (bounded in count).
    let clients: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut trips = 0u32;
                let mut reply = [0; 5];
                for _ in 0..1_000_000 {
                    if s.write_all(b"busy\n").is_err() || s.read_exact(&mut reply).is_err() {
                        break;
                    }
                    assert_eq!(&reply, b"BUSY\n", "a reply was corrupted");
                    trips += 1;
                }
                trips
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{threads} threads: {:?}", out.status);
    let err = stderr(&out);
    assert!(err.contains("SIGTERM received: draining"), "{err}");
    for c in clients {
        assert!(c.join().unwrap() > 0, "a client made no round trip");
    }
}

#[test]
fn threads_serve_with_a_loop_each_and_stop_on_sigterm() {
    let mut models = vec!["epoll", "coroutine"];
    match iomux::uring::probe() {
        Ok(_) => models.push("uring"),
        Err(why) => eprintln!("uring skipped: {why}"),
    }
    for model in models {
        let (child, addr) = spawn_serve(&["--model", model, "--threads", "2"]);
        for i in 0..16 {
            let line = format!("client {i} of {model}\n");
            let out = client_piped(addr, line.as_bytes());
            assert!(out.status.success(), "{model}: {}", stderr(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout), line.to_uppercase());
        }
        sigterm(&child);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{model}: {:?}", out.status);
        let err = stderr(&out);
        assert!(
            err.contains("stopped after 16 connections"),
            "{model}: {err}"
        );
        // How the 16 spread is the kernel's hash: only the count of loops
        // is certain.
        let per_loop = err
            .split("accepted per loop: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{model}: no per-loop count in {err}"));
        assert_eq!(per_loop.trim().split(", ").count(), 2, "{model}: {err}");
    }
}

#[test]
fn threads_for_one_loop_models_are_refused() {
    use iomux::server::Model;
    for model in Model::ALL.into_iter().filter(|m| !m.supports_threads()) {
        let out = iomux(&[
            "serve",
            "--model",
            model.name(),
            "--threads",
            "2",
            "--addr",
            "127.0.0.1:0",
        ]);
        assert_one_line_error(
            &out,
            &format!("threads above 1 (--threads) does not work on model {model}; use --model epoll or coroutine or uring"),
        );
    }
    let out = iomux(&["serve", "--threads", "0", "--addr", "127.0.0.1:0"]);
    assert_one_line_error(&out, "threads must be at least 1");
    let out = iomux(&["bench", "--models", "select", "--server-threads", "2"]);
    assert_one_line_error(&out, "select runs one loop");
}

#[test]
fn flags_for_other_models_or_protocols_are_refused() {
    let out = iomux(&[
        "serve",
        "--model",
        "threaded",
        "--offload",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_one_line_error(&out, "offload_threads (--offload) does not work on model");
    let out = iomux(&["serve", "--work-ms", "5", "--addr", "127.0.0.1:0"]);
    assert_one_line_error(&out, "--work-ms is for --protocol slow-upper");
    let out = iomux(&[
        "serve",
        "--model",
        "epoll",
        "--uring-batch-wait",
        "100us",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_one_line_error(
        &out,
        "uring_batch_wait (--uring-batch-wait) does not work on model",
    );
    let out = iomux(&["bench", "--uring-batch-wait", "1s"]);
    assert_one_line_error(&out, "1us to 10ms");
    let out = iomux(&["bench", "--latency-budget", "0,1s"]);
    assert_one_line_error(&out, "1us to 100ms");
    let out = iomux(&[
        "serve",
        "--idle-timeout",
        "3 parsecs",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown unit"), "{}", stderr(&out));
}

#[test]
fn doctor_reports_the_machine_and_the_auto_choice() {
    let out = iomux(&["doctor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "kernel",
        "selector backends",
        "epoll",
        "kernel.io_uring_disabled",
        "seccomp",
        "io_uring",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "auto picks",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // Either the probed features or the one-line reason they are missing.
    assert!(
        text.contains("multishot recv") || text.contains("use --model epoll"),
        "{text}"
    );
}

#[test]
fn uring_serves_the_piped_client_or_says_why_not() {
    match iomux::uring::probe() {
        Ok(_) => {
            let served = Served::start("uring", &[]);
            assert!(
                served.first_line.contains("model uring"),
                "{}",
                served.first_line
            );
            let out = client_piped(served.addr, b"hello uring\n");
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO URING\n");
            served.stop();
        }
        Err(why) => {
            let out = iomux(&["serve", "--model", "uring", "--addr", "127.0.0.1:0"]);
            assert_one_line_error(&out, "use --model epoll");
            eprintln!("skipped serving: {why}");
        }
    }
}

/// The bench runs uring once per batch wait asked for, beside epoll, and
/// gives each uring row its CPU per round trip against epoll's.
#[test]
fn bench_runs_uring_beside_epoll_with_each_batch_wait() {
    if !common::uring_batch_wait_available() {
        return;
    }
    let (report, _) = bench_json(&[
        "--models",
        "epoll,uring",
        "--uring-batch-wait",
        "0,100us",
        "--conns",
        "4",
        "--paced-conns",
        "4",
        "--rate",
        "2000",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--idle-conns",
        "0",
        "--mem-conns",
        "0",
    ]);
    let runs = report["runs"].as_array().unwrap();
    for model in ["epoll", "uring", "uring+100us"] {
        for shape in ["closed", "paced"] {
            let row = measured_row(runs, model, shape);
            let vs_epoll = &row["cpu_vs_epoll"];
            if model == "epoll" {
                assert!(vs_epoll.is_null(), "{row}");
            } else {
                assert!(vs_epoll.as_f64().unwrap() > 0.0, "{model} {shape}: {row}");
            }
        }
    }
}

/// `bench --addr` measures a server it did not start: rows with latency
/// and throughput, its counters absent, its CPU from `/proc` when its PID
/// is named, and no idle or memory rows (not its process to load).
#[test]
fn bench_addr_measures_a_running_server() {
    let mut server = Served::start("epoll", &[]);
    let addr = server.addr.to_string();
    let with_pid = format!("{addr},pid={}", server.pid());
    let (report, out) = bench_json(&[
        "--addr",
        &with_pid,
        "--conns",
        "4",
        "--paced-conns",
        "4",
        "--rate",
        "1000",
        "--duration",
        "0.3",
        "--warmup",
        "0.05",
        "--rounds",
        "1",
    ]);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "one closed and one paced row: {runs:?}");
    for shape in ["closed", "paced"] {
        let row = measured_row(runs, &addr, shape);
        assert!(row["p99_us"].as_f64().unwrap() > 0.0, "{row}");
        for counter in [
            "waits_per_rt",
            "syscalls_per_rt",
            "sleeps_per_rt",
            "rss_per_conn",
        ] {
            assert!(
                row[counter].is_null(),
                "{counter} of a running server: {row}"
            );
        }
        assert!(row["cpu_s_per_mrt"].as_f64().is_some(), "{row}");
    }
    assert!(report["idle"].as_array().unwrap().is_empty());
    assert!(report["memory"].as_array().unwrap().is_empty());
    // The load went to that server: 4 connections per run, 2 runs.
    assert!(server.stat("accepted") >= 8, "{:?}", server.stats());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&addr), "{table}");
    server.stop();
}

#[test]
fn bench_addr_refuses_an_address_off_this_machine() {
    let out = iomux(&["bench", "--addr", "192.0.2.1:1688"]);
    assert_one_line_error(&out, "192.0.2.1:1688 is not a loopback address");
}

/// Runs `iomux FLAGS serve` on epoll with a handler that holds the loop for
/// 150 ms per line (which the library reports as a stall, once), sends it
/// one line, stops it, and returns what it wrote to stderr.
fn stall_report(flags: &[&str], rust_log: Option<&str>) -> String {
    let mut cmd = Command::new(IOMUX);
    cmd.args(flags)
        .args([
            "serve",
            "--model",
            "epoll",
            "--protocol",
            "slow-upper",
            "--work-ms",
            "150",
            "--addr",
            "127.0.0.1:0",
            "--control",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(spec) = rust_log {
        cmd.env("RUST_LOG", spec);
    }
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let mut conn = std::net::TcpStream::connect(address_in(&first)).unwrap();
    conn.write_all(b"x\n").unwrap();
    let mut reply = [0u8; 2];
    std::io::Read::read_exact(&mut conn, &mut reply).unwrap();
    assert_eq!(&reply, b"X\n");
    drop(conn);
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn the_library_logs_through_the_cli_logger_as_v_q_and_rust_log_say() {
    let stall = "held the event loop";
    // Warnings show by default, as `iomux: ...` lines.
    let default = stall_report(&[], None);
    assert!(
        default
            .lines()
            .any(|l| l.starts_with("iomux: ") && l.contains(stall)),
        "{default}"
    );
    // -q leaves errors only; RUST_LOG=off silences everything.
    for (flags, rust_log) in [(&["-q"][..], None), (&[][..], Some("off"))] {
        let quiet = stall_report(flags, rust_log);
        assert!(!quiet.contains(stall), "{flags:?} {rust_log:?}: {quiet}");
    }
    // -v and -q together are refused.
    let both = iomux(&["-v", "-q", "doctor"]);
    assert!(!both.status.success());
}

/// A latency budget works on the models that wait for events and is refused,
/// in one line naming those, on the others; on uring it and the fixed batch
/// wait exclude each other.
#[test]
fn latency_budget_is_refused_where_no_loop_waits() {
    for model in ["blocking", "threaded", "pool", "busy-poll"] {
        let out = iomux(&[
            "serve",
            "--model",
            model,
            "--latency-budget",
            "1ms",
            "--addr",
            "127.0.0.1:0",
        ]);
        assert_one_line_error(
            &out,
            "use --model select or poll or epoll or coroutine or uring",
        );
    }
    let out = iomux(&[
        "serve",
        "--model",
        "uring",
        "--latency-budget",
        "1ms",
        "--uring-batch-wait",
        "100us",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_one_line_error(&out, "use one");
    let out = iomux(&["serve", "--latency-budget", "1s", "--addr", "127.0.0.1:0"]);
    assert_one_line_error(&out, "at most 100 ms");
}

/// The bench runs each model that takes a budget once per budget asked
/// for, and gives each row with one its ratios against the same model
/// without; the other models run once, without.
#[test]
fn bench_runs_each_event_model_with_each_latency_budget() {
    let (report, _) = bench_json(&[
        "--models",
        "epoll,coroutine,threaded",
        "--latency-budget",
        "0,1ms",
        "--conns",
        "4",
        "--paced-conns",
        "4",
        "--rate",
        "2000",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--rounds",
        "1",
        "--idle-conns",
        "0",
        "--mem-conns",
        "0",
    ]);
    let runs = report["runs"].as_array().unwrap();
    for model in ["epoll", "coroutine", "threaded"] {
        for shape in ["closed", "paced"] {
            let row = measured_row(runs, model, shape);
            assert!(row["vs_no_budget"].is_null(), "{row}");
            let budgeted = format!("{model}+budget1ms");
            let with = runs.iter().find(|r| r["model"] == budgeted.as_str());
            if model == "threaded" {
                assert!(with.is_none(), "threaded ran with a budget");
                continue;
            }
            let row = measured_row(runs, &budgeted, shape);
            let vs = &row["vs_no_budget"];
            for k in ["cpu", "p99", "rt"] {
                assert!(vs[k].as_f64().unwrap() > 0.0, "{budgeted} {shape}: {row}");
            }
        }
    }
}
