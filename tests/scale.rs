//! Scale: ten thousand disabled units and two thousand running ones on one corral; every
//! read answer (status whole and filtered, logs, metrics) comes back complete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::time::Instant;

use common::{Corral, msg, require_cgroup_v1, unit_of};
use serde_json::Value;

const IDLE: usize = 10_000;
/// Running units, as many as the issue asks for. Beside 10,000 disabled units a debug build
/// starts them in about 14 s on 2 busy cores (7 ms a unit: an input costs what it touches,
/// bench/analysis.md, "Scale"); the waits below take them STEP at a time.
const BUSY: usize = 2000;
/// Progress the waits below expect within one harness deadline.
const STEP: usize = 50;

fn idle(i: usize) -> String {
    format!("idle-{i:05}")
}

fn busy(i: usize) -> String {
    format!("busy-{i:04}")
}

/// One request on a raw connection; the whole answer line, parsed.
fn ask(c: &Corral, request: &str) -> Value {
    let mut stream = c.connect();
    stream
        .write_all(format!("{request}\n").as_bytes())
        .expect("sending the request");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("reading the answer");
    serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "{request}: the answer is not one JSON line ({e}): {} bytes",
            line.len()
        )
    })
}

/// The names in an answer's `units`, each once.
fn names(answer: &Value) -> HashSet<String> {
    let units = answer["units"].as_array().unwrap_or_else(|| {
        panic!(
            "no units in {}",
            &answer.to_string()[..300.min(answer.to_string().len())]
        )
    });
    let set: HashSet<String> = units
        .iter()
        .map(|u| u["name"].as_str().expect("a name").to_owned())
        .collect();
    assert_eq!(set.len(), units.len(), "a unit listed twice");
    set
}

#[test]
fn ten_thousand_units_answer_status_logs_and_metrics_completely() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("pool", "kind = \"slice\"\n");
    for i in 0..IDLE {
        c.unit(
            &idle(i),
            "enabled = false\n[exec]\ncommand = [\"sleep\", \"86400\"]\n",
        );
    }
    // Each says one line, then sleeps: in the logs answer, one line per unit.
    for i in 0..BUSY {
        c.unit(
            &busy(i),
            "slice = \"pool\"\n[exec]\ncommand = [\"sh\", \"-c\", \"echo up; exec sleep 86400\"]\n",
        );
    }
    let t0 = Instant::now();
    c.launch(&[]);
    let loaded = t0.elapsed();
    // Each wait is for the next STEP units, each bounded by the harness's deadline: in all they
    // take longer than one. (The loop starts them all in one turn, so their output is read
    // only after the last has started.)
    for n in (STEP..=BUSY).step_by(STEP) {
        c.wait_count("the busy units' starts", n, |l| {
            l["target"] != "unit" && unit_of(l).starts_with("busy-") && msg(l) == "started"
        });
    }
    let started = t0.elapsed();
    for n in (STEP..=BUSY).step_by(STEP) {
        c.wait_count("the busy units' lines", n, |l| {
            l["target"] == "unit" && unit_of(l).starts_with("busy-") && msg(l) == "up"
        });
    }
    eprintln!(
        "loaded in {loaded:?}, {BUSY} started after {started:?}, their lines read after {:?}",
        t0.elapsed()
    );

    // status, whole: every unit, through the CLI that renders as it reads.
    let whole = c.ok(&["status", "--json"]).json();
    let all = names(&whole);
    assert_eq!(all.len(), IDLE + BUSY + 1, "status lists every unit once");
    assert!(all.contains(&idle(IDLE - 1)) && all.contains(&busy(BUSY - 1)) && all.contains("pool"));
    // The table: a header and a row per unit.
    let table = c.ok(&["status"]);
    assert_eq!(table.stdout.lines().count(), IDLE + BUSY + 2, "table rows");

    // status, filtered in the daemon: by state, by slice, by pattern, and all three.
    let running = names(&ask(&c, r#"{"verb":"status","states":["running"]}"#));
    assert_eq!(running, (0..BUSY).map(busy).collect::<HashSet<_>>());
    let inactive = c
        .ok(&["status", "--json", "--state", "inactive,failed"])
        .json();
    assert_eq!(
        names(&inactive),
        (0..IDLE).map(idle).collect::<HashSet<_>>()
    );
    let in_pool = names(&ask(&c, r#"{"verb":"status","slices":["pool"]}"#));
    assert_eq!(in_pool.len(), BUSY, "the slice holds the busy units");
    let pattern = c.ok(&["status", "--json", "idle-0999?"]).json();
    assert_eq!(
        names(&pattern),
        (9990..10_000).map(idle).collect::<HashSet<_>>()
    );
    let none = c.ok(&[
        "status", "--json", "--state", "failed", "--slice", "pool", "busy-*",
    ]);
    assert!(names(&none.json()).is_empty(), "{none:?}");

    // logs of every busy unit (at most the 1000 lines one answer holds), one line each.
    let some: Vec<String> = (0..BUSY.min(1000)).map(busy).collect();
    let mut args = vec!["logs", "-n", "1000", "--json"];
    args.extend(some.iter().map(String::as_str));
    let logs = c.ok(&args);
    let from: HashSet<String> = logs
        .stdout
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).expect("a LogLine per line");
            assert_eq!(line["text"], "up");
            line["unit"].as_str().expect("a unit").to_owned()
        })
        .collect();
    assert_eq!(from, some.iter().cloned().collect::<HashSet<_>>());

    // metrics: one corral_unit_info sample per unit, streamed and whole.
    let metrics = c.ok(&["metrics"]);
    let info: HashSet<&str> = metrics
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("corral_unit_info{unit=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(info.len(), IDLE + BUSY + 1, "metrics has every unit");
    let families = metrics
        .stdout
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .count();
    assert_eq!(families, corral::metrics::SERIES.len(), "every family once");
    let states: usize = metrics
        .stdout
        .lines()
        .filter(|l| l.starts_with("corral_unit_state{") && l.ends_with("state=\"running\"} 1"))
        .count();
    assert_eq!(states, BUSY, "running units in corral_unit_state");
    // metrics takes the same filters.
    let failed = ask(
        &c,
        r#"{"verb":"metrics","states":["running"],"units":["busy-000?"]}"#,
    );
    let text = failed["metrics"].as_str().expect("metrics text");
    let units: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("corral_unit_info{unit=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(units.len(), 10, "{text}");

    // An orderly end, timed for the report (the harness would SIGTERM corral too).
    let t1 = Instant::now();
    c.ok(&["shutdown"]);
    assert!(c.wait_exit().success());
    eprintln!("shut down in {:?}", t1.elapsed());
}
