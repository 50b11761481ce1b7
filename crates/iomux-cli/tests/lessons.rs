//! `iomux lessons`: every claim of the seed lessons, measured, with a
//! figure and a verdict.

mod common;
use common::run_json;

const CLAIMS: [&str; 9] = [
    "iterative-blocks",
    "thread-per-connection-cost",
    "pool-bounded-but-blocked",
    "busy-poll-burns-cpu",
    "select-fd-limit",
    "scan-cost-grows",
    "multiplexing-one-connection",
    "slow-handler-stalls-loop",
    "completion-vs-readiness",
];

#[test]
fn lessons_json_has_every_claim_with_a_figure_and_a_verdict() {
    let (report, out) = run_json(&["lessons"]);
    let claims = report["claims"].as_array().unwrap();
    let ids: Vec<&str> = claims.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, CLAIMS);
    let table = String::from_utf8_lossy(&out.stdout);
    for c in claims {
        let id = c["id"].as_str().unwrap();
        assert!(!c["seeds"].as_array().unwrap().is_empty(), "{id}");
        for seed in c["seeds"].as_array().unwrap() {
            let seed = seed.as_str().unwrap();
            assert!(
                ["000", "001", "002", "003", "004"].contains(&seed),
                "{id}: {seed}"
            );
        }
        assert!(!c["measurement"].as_str().unwrap().is_empty(), "{id}");
        let figure = c["figure"].as_str().unwrap();
        assert!(!figure.is_empty(), "{id}");
        assert!(table.contains(figure), "{id}: the table lacks {figure:?}");
        match c["verdict"].as_str().unwrap() {
            "holds" | "does_not_hold" => {
                // A verdict comes with the figures it was drawn from.
                let figures = c["figures"].as_object().unwrap();
                assert!(!figures.is_empty(), "{id}");
                for (name, v) in figures {
                    assert!(v.as_f64().unwrap().is_finite(), "{id}: {name}");
                }
            }
            // Only what this machine may lack: io_uring, or the fds for
            // 1,100 connections at each end.
            "not_measured" => assert!(
                id == "completion-vs-readiness" || id == "select-fd-limit",
                "{id} was not measured: {figure}"
            ),
            other => panic!("{id}: verdict {other:?}"),
        }
    }
    assert!(report["wall_s"].as_f64().unwrap() > 0.0);
}
