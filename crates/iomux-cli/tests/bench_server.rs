//! `iomux bench --server NAME=CMD`: servers that are not iomux's, benched
//! beside a model, measured from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{bench_json, measured_row, IOMUX};

/// The Python asyncio echo server of the README's run.
fn py_echo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/bench/asyncio_echo.py")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iomux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// No process whose pid was written in `dir` (one per start of the Python
/// server) is still alive.
fn assert_all_stopped(dir: &Path) {
    let pids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<u32>().is_ok())
        .collect();
    assert!(!pids.is_empty(), "the Python server never started");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "server process {pid} outlived the bench"
        );
    }
}

#[test]
fn foreign_servers_are_benched_beside_epoll() {
    let dir = scratch("foreign");
    // sh writes its pid, which python3 then takes over (exec).
    let py = format!(
        "py=echo > {}/$$; exec python3 {} {{port}}",
        dir.display(),
        py_echo().display()
    );
    let mut args = vec![
        "--models",
        "epoll",
        "--protocol",
        "echo",
        "--server",
        &py,
        "--conns",
        "1,4",
        "--paced-conns",
        "4",
        "--rate",
        "1000",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--rounds",
        "1",
        "--idle-conns",
        "4",
        "--idle-secs",
        "0.2",
        "--mem-conns",
        "20",
    ];
    let socat_cmd = "socat=socat TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr EXEC:cat";
    let with_socat = common::installed("socat", "-V");
    if with_socat {
        args.extend(["--server", socat_cmd]);
    }
    let (report, out) = bench_json(&args);
    let runs = report["runs"].as_array().unwrap();
    let mut foreign = vec!["py"];
    if with_socat {
        foreign.push("socat");
    }
    assert_eq!(report["setup"]["protocol"], "echo");
    let listed: Vec<&str> = report["setup"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, foreign);
    for shape in ["closed", "paced"] {
        let ours = measured_row(runs, "epoll", shape);
        assert!(ours["syscalls_per_rt"].as_f64().unwrap() > 0.0);
        for name in &foreign {
            let row = measured_row(runs, name, shape);
            // Counters only iomux's servers keep are absent, not zero.
            for counter in ["waits_per_rt", "syscalls_per_rt", "sleeps_per_rt"] {
                assert!(row[counter].is_null(), "{name} {shape} {counter}: {row}");
            }
            assert!(row["peak_rss"].as_u64().unwrap() > 0, "{name}: {row}");
        }
    }
    // Serving 4 connections flat out for 0.3 s takes CPU, and it is read
    // from the server's process tree (socat forks a child per connection,
    // each running `cat`).
    for name in &foreign {
        let row = runs
            .iter()
            .find(|r| r["model"] == *name && r["shape"] == "closed" && r["conns"] == 4)
            .unwrap();
        assert!(row["cpu_s_per_mrt"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["server_cores"].as_f64().unwrap() > 0.0, "{row}");
        // Every held connection was seen accepted (its socket in the tree).
        for table in ["idle", "memory"] {
            let r = report[table]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["model"] == *name)
                .unwrap_or_else(|| panic!("no {table} row for {name}"));
            assert!(r["status"].is_null(), "{name} {table}: {r}");
        }
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("py"), "{table}");
    assert_all_stopped(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_server_specs_are_refused_in_one_line() {
    for (spec, needle) in [
        ("socat", "expected NAME=CMD"),
        ("x=cat", "{addr}"),
        (
            "epoll=socat TCP-LISTEN:{port} EXEC:cat",
            "a model's or peer's",
        ),
    ] {
        let out = Command::new(IOMUX)
            .args(["bench", "--models", "epoll", "--server", spec])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: {err}");
    }
}

#[test]
fn a_server_that_never_listens_is_a_failed_row_not_a_hang() {
    let (report, _) = bench_json(&[
        "--models",
        "epoll",
        "--server",
        "gone=exit 3 {port}",
        "--conns",
        "1",
        "--rate",
        "0",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--rounds",
        "1",
        "--idle-conns",
        "0",
        "--mem-conns",
        "0",
    ]);
    let row = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "gone")
        .unwrap();
    let status = row["status"].as_str().unwrap();
    assert!(status.contains("exited"), "{status}");
}
