//! The report rendered from synthetic rows: what each output says, and
//! that the charts and bench.json are written.

use super::*;
use crate::bench::{
    heavy_path, held,
    http2::{H2load, Http2Row},
    load::Open,
    rebalance::{CountingRow, CountingSample, SkewRow, SteadyRow},
    Spread, CHURN_CONCURRENCY, CONNECTIONS, HEAVY,
};

fn skew_row(backend: &str, rebalance: bool, worst_us: u64, cpu: Vec<u64>) -> SkewRow {
    SkewRow {
        backend: backend.into(),
        workers: 4,
        rebalance,
        warm_up_secs: 5.0,
        measured_secs: 10.0,
        split_start: vec![10, 10, 10, 10],
        split_end: vec![10, 10, 10, 10],
        heavy_start: vec![2, 0, 1, 1],
        heavy_end: if rebalance {
            vec![1, 1, 1, 1]
        } else {
            vec![2, 0, 1, 1]
        },
        light_requests_per_sec: 5000.0,
        light_p50_us: 300,
        light_p99_us: 4100,
        light_p999_us: 6000,
        worst_light_median_us: worst_us,
        cpu_max_over_min: crate::bench::worker_stats::max_over_min(&cpu),
        cpu_permille: cpu,
        hints_warm_up: u64::from(rebalance),
        hints_per_min: 0.0,
        reconnects: u64::from(rebalance),
        failed: 0,
    }
}

fn h2load(rps: f64) -> H2load {
    H2load {
        requests_per_sec: rps,
        succeeded: 1000,
        failed: 0,
        errored: 0,
        timeout: 0,
    }
}

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
        scale: churn.clone(),
        churn,
        program_cost: vec![ProgramCostRow {
            workers: 2,
            slots: 2,
            runs: 4000,
            ns_per_run: 85.0,
        }],
        skew: vec![
            skew_row("exact", false, 4100, vec![480, 120, 450, 470]),
            skew_row("exact", true, 1900, vec![430, 400, 410, 420]),
            skew_row("ebpf", false, 300, vec![400, 400, 400, 400]),
            skew_row("ebpf", true, 310, vec![400, 400, 400, 400]),
        ],
        steady: vec![SteadyRow {
            backend: "ebpf".into(),
            workers: 4,
            path: "/".into(),
            warm_up_secs: 2.0,
            measured_secs: 8.0,
            split_start: vec![10, 10, 10, 10],
            split_end: vec![10, 10, 10, 10],
            requests_per_sec: 30000.0,
            p50_us: 500,
            p99_us: 1200,
            cpu_permille: vec![300, 310, 290, 305],
            cpu_max_over_min: 310.0 / 290.0,
            hints: 0,
            hints_per_min: 0.0,
            reconnects: 0,
            failed: 0,
        }],
        request_counting: vec![{
            let sample = |rps: f64, cpu: f64| CountingSample {
                requests_per_sec: rps,
                cpu_us_per_request: cpu,
                server_cpus: 0.99,
                errors: 0,
            };
            CountingRow {
                backend: "ebpf".into(),
                workers: 1,
                connections: CONNECTIONS,
                secs_each: 2.0,
                without: vec![sample(30000.0, 20.0), sample(30100.0, 20.2)],
                with: vec![sample(29900.0, 20.3), sample(29950.0, 20.3)],
                without_rps_median: 30050.0,
                with_rps_median: 29925.0,
                without_cpu_us_median: 20.1,
                with_cpu_us_median: 20.3,
                rps_cost: 0.0042,
                cpu_cost: 0.01,
                rps_cost_range: (0.0033, 0.005),
                hints: 0,
                errors: 0,
            }
        }],
        http2: Some(crate::bench::http2::Http2 {
            client: "h2load -t1 (h2c): a test".into(),
            skipped: None,
            rows: vec![Http2Row {
                backend: "exact".into(),
                workers: 4,
                rebalance: true,
                measured_secs: 8.0,
                cpu_permille: vec![450, 200, 440, 210],
                cpu_max_over_min: 2.25,
                requests_per_sec: vec![90000, 2000, 88000, 2100],
                hints: 9,
                connections_end: vec![1, 10, 1, 10],
                light: h2load(1900.0),
                heavy: h2load(180000.0),
                light_p50_us: 300,
                light_p99_us: 900,
            }],
        }),
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
    assert!(t.contains("scale: churn at up to 64 workers on 2 cores: a new connection"));
    assert!(t.contains(&format!(
        "{HEAVY} of {CONNECTIONS} connections, all on one worker"
    )));
    assert!(t.contains(&format!("its first {HEAVY}), request {}", heavy_path())));
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
        "scale",
        "skew",
        "steady",
        "request_counting",
        "http2",
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

#[test]
fn the_skew_table_compares_each_backend_with_the_targets() {
    let t = sample().table();
    let skew = t.split("\nskew: ").nth(1).expect("a skew section");
    assert!(
        skew.starts_with("4 workers; 4 of 40 connections, all on one worker"),
        "{skew}"
    );
    assert!(skew.contains("warm-up 5 s, then measured 10 s"), "{skew}");
    let exact = skew
        .lines()
        .find(|l| l.trim_start().starts_with("exact      worst"));
    let exact = exact.expect("a target line for exact");
    assert!(exact.contains("on/off 0.46x (met)"), "{exact}");
    assert!(exact.contains("CPU max/min on 1.07 (met)"), "{exact}");
    let ebpf = skew
        .lines()
        .find(|l| l.trim_start().starts_with("ebpf       worst"));
    assert!(
        ebpf.expect("a target line for ebpf")
            .contains("1.03x (not met)"),
        "{skew}"
    );
    assert!(
        skew.contains("[1,1,1,1]") && skew.contains("[480,120,450,470]"),
        "{skew}"
    );
}

#[test]
fn the_rebalancing_tables_say_what_was_run_and_what_it_cost() {
    let t = sample().table();
    assert!(
        t.contains("\nsteady: 4 workers, 40 connections all asking the same path"),
        "{t}"
    );
    assert!(
        t.contains("wrk -t1 -c40, 2 rounds of 2 s per server"),
        "{t}"
    );
    assert!(t.contains("0.4% [0.3%, 0.5%]"), "{t}");
    assert!(t.contains("CPU per request: met (ebpf)"), "{t}");
    assert!(
        t.contains("http2: the axum example; h2load -t1 (h2c): a test"),
        "{t}"
    );
    assert!(t.contains("[90000,2000,88000,2100]"), "{t}");
    let mut skipped = sample();
    if let Some(h2) = skipped.http2.as_mut() {
        h2.skipped = Some("h2load not installed".into());
    }
    assert!(skipped.table().contains("skipped: h2load not installed"));
}
