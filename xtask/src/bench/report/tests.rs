//! The report rendered from synthetic rows: what each output says, and
//! that the charts and bench.json are written.

use super::*;
use crate::bench::{heavy_path, held, load::Open, Spread, CHURN_CONCURRENCY, CONNECTIONS};

/// A report with a few synthetic rows in every section.
fn sample() -> Report {
    use crate::bench::{
        cgroup::Mechanism,
        costs::CostRow,
        seed::{Calibration, Row, Settings},
    };
    let keep_alive = |backend: &str, workers: usize, open: Open, split: Vec<u64>| KeepAliveRow {
        backend: backend.into(),
        workers,
        open,
        spread: Spread::of(&split),
        split,
        requests_per_sec: 12345.6,
        p50_us: 120,
        p99_us: 900,
        p999_us: 2100,
    };
    let held_row = |backend: &str, burst_after_ms: u64| HeldRow {
        backend: backend.into(),
        workers: 4,
        burst_after_ms,
        worker: 2,
        light: CONNECTIONS,
        placed_on_worker: 1,
        waited_long: 0,
        long_wait_ms: 1000,
        p50_us: 1500,
        p99_us: 72_000,
        max_us: 72_000,
        busy_permille: 990,
        stalls: 1,
        rescued_out: 3,
        rescued_in: 0,
    };
    let mut churn = vec![
        ChurnRow::new("reuseport", 2, 20000.0),
        ChurnRow::new("ebpf", 2, 18000.0),
    ];
    ChurnRow::relate_to_reuseport(&mut churn);
    let seed_row = |server: &str, workers: usize, rps: f64, p99: u64| Row {
        server: server.into(),
        kind: "balancer".into(),
        workers,
        split: vec![20, 20],
        requests_per_sec: rps,
        cap_used: 0.95,
        limit_per_sec: 15000.0,
        efficiency: rps / 15000.0,
        offered_per_sec: 10500.0,
        achieved_per_sec: 10400.0,
        p50_us: 300,
        p99_us: p99,
        p999_us: p99 * 2,
        throttled: 3,
    };
    Report {
        quick: true,
        cores: 2,
        kernel: "6.1.0-test".into(),
        keep_alive: vec![
            keep_alive("shared", 2, Open::Burst, vec![30, 10]),
            keep_alive("ebpf", 2, Open::Burst, vec![20, 20]),
            keep_alive("shared", 4, Open::Burst, vec![25, 5, 5, 5]),
            keep_alive("ebpf", 4, Open::Burst, vec![10, 10, 10, 10]),
            keep_alive("shared", 2, Open::OneByOne, vec![21, 19]),
            keep_alive("ebpf", 4, Open::OneByOne, vec![10, 10, 10, 10]),
        ],
        churn,
        program_cost: vec![ProgramCostRow {
            workers: 2,
            slots: 2,
            runs: 4000,
            ns_per_run: 85.0,
        }],
        skew: vec![SkewRow {
            backend: "ebpf".into(),
            workers: 2,
            split: vec![20, 20],
            light_requests_per_sec: 5000.0,
            light_p99_us: 3000,
            light_p999_us: 6000,
        }],
        held: Some(held::Settings::new()),
        busy: vec![held_row("shared", 300), held_row("ebpf", 300)],
        hung: vec![held_row("ebpf", 500), held_row("ebpf", 0)],
        handoff: vec![HandoffRow {
            backend: "ebpf".into(),
            counter: "handoff-safe".into(),
            split: vec![20, 20],
            counted: vec![20, 20],
            requests_per_sec: 9000.0,
        }],
        anchors: vec![AnchorRow {
            server: "nginx".into(),
            workers: 2,
            requests_per_sec: 30000.0,
            p50_us: 100,
            p99_us: 800,
            p999_us: 1500,
            errors: 0,
            split: vec![600, 400],
            rps_vs_nginx: 1.0,
            p99_vs_nginx: 1.0,
        }],
        seed: Some(Seed {
            settings: Settings {
                workers: vec![2, 4],
                total_cpus: 0.8,
                cost_us: 50,
                connections: 40,
                load_fraction: 0.7,
                closed_secs: 2.0,
                open_secs: 3.0,
                mechanism: Mechanism {
                    controller: "cgroup v1 cpu".into(),
                    hierarchy: "/sys/fs/cgroup/cpu".into(),
                },
                bandwidth: vec![(1, 80000, 100000), (2, 40000, 100000)],
                client: "a test client".into(),
            },
            calibration: vec![Calibration {
                server: "balancer".into(),
                requests_per_sec: 14000.0,
                cap_used: 0.97,
                cpu_us_per_request: 55.0,
                limit_per_sec: 14545.0,
            }],
            rows: vec![
                seed_row("ebpf", 4, 13000.0, 2000),
                seed_row("shared", 4, 9000.0, 40000),
                seed_row("reuseport", 4, 10000.0, 30000),
                seed_row("exact", 4, 12500.0, 2500),
                seed_row("nginx", 2, 11000.0, 9000),
            ],
        }),
        costs: vec![CostRow {
            backend: "ebpf".into(),
            workers: 4,
            syscalls_per_connection: 7.5,
            by_call: [("accept4".to_owned(), 1.0), ("read".to_owned(), 0.05)].into(),
            connections: 2000,
            bind_to_accept_ms: 12.5,
            exec_to_accept_ms: 30.1,
            bpf_ms: 8.2,
        }],
    }
}

#[test]
fn markdown_says_how_the_charted_connections_were_opened() {
    let m = sample().markdown();
    let burst = format!("at 4 workers: {CONNECTIONS} keep-alive connections opened in one burst");
    assert!(m.contains(&burst), "{m}");
    assert!(!m.contains("one after another"));
}

#[test]
fn seed_prose_states_the_configured_load_fraction() {
    let mut report = sample();
    let seed = report.seed.as_mut().expect("the sample has a seed section");
    seed.settings.load_fraction = 0.55;
    let m = report.markdown();
    assert!(
        m.contains("open loop 3 s at 55% of the capped capacity"),
        "{m}"
    );
    assert!(m.contains("55% of the capacity in total"), "{m}");
    assert!(!m.contains("70%"), "{m}");
}

#[test]
fn table_headings_state_the_scenario_constants() {
    let t = sample().table();
    assert!(t.contains(&format!("keep-alive: {CONNECTIONS} connections")));
    assert!(t.contains(&format!("{CHURN_CONCURRENCY} concurrent")));
    assert!(t.contains(&format!("of {CONNECTIONS} request {}", heavy_path())));
    assert!(t.contains("At 4 workers, ebpf against shared"));
    let s = held::Settings::new();
    assert!(t.contains(&format!(
        "busy: one worker of {} answers {} pipelined GET {}",
        s.workers,
        s.busy_requests,
        s.busy_path()
    )));
    assert!(t.contains(&format!("frozen for {} s", s.hang_ms as f64 / 1000.0)));
}

#[test]
fn the_hung_table_has_a_line_per_burst_saying_when_it_came() {
    let t = sample().table();
    let hung = t.split("\nhung: ").nth(1).expect("a hung section");
    let lines: Vec<&str> = hung.lines().skip(2).take_while(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{hung}");
    assert!(
        lines[0].contains("+500ms") && lines[1].contains("at freeze"),
        "{hung}"
    );
    assert!(
        lines[1].contains("72.0") && lines[1].contains("3/0"),
        "{hung}"
    );
}

#[test]
fn finish_writes_bench_json_the_charts_and_report_md() {
    let out = std::env::temp_dir().join(format!("xtask-report-test-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    sample().finish(&out).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected = [
        "quick",
        "cores",
        "kernel",
        "keep_alive",
        "churn",
        "program_cost",
        "skew",
        "held",
        "busy",
        "hung",
        "handoff",
        "anchors",
        "seed",
        "costs",
    ];
    assert_eq!(keys.len(), expected.len(), "{keys:?}");
    assert!(expected.iter().all(|k| keys.contains(k)), "{keys:?}");
    assert_eq!(json["keep_alive"][0]["open"], "burst");
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    for chart in ["split.svg", "rps.svg", "seed_rps.svg", "seed_p99.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
        assert!(markdown.contains(&format!("]({chart})")), "{chart}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
