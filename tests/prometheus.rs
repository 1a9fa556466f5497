//! The Prometheus rendering as Prometheus and Grafana read it: `promtool
//! check metrics` accepts it on every backend, with and without a prefix
//! and constant labels, and the example Grafana dashboard queries only
//! families the rendering has. Needs `promtool` (`scripts/setup` installs
//! it).

mod util;

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
};

use balancer::{
    stats::{PrometheusOptions, Snapshot},
    Backend,
};
use rstest_reuse::{self, apply};
use util::counts::expect_active;
use util::echo::{EchoServer, Guard};
use util::every_backend;

/// A snapshot of `backend` with 2 workers (at most 100 connections each)
/// serving 4 connections.
fn serving_snapshot(backend: Backend) -> Snapshot {
    let builder = (balancer::Builder::new(backend).workers(2))
        .max_connections(100)
        .listen("127.0.0.1:0");
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    let _clients = server.open_many(server.addr(0), 4);
    expect_active(&server.stats, 4, "serving 4");
    server.stats.snapshot()
}

/// Runs `promtool check metrics` on `text`; panics with its findings.
fn promtool_check(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running promtool ({e}): run scripts/setup to install it"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics on {what}: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[apply(every_backend)]
fn promtool_accepts_the_rendering(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let snap = serving_snapshot(backend);
    let text = snap.to_prometheus();
    let info =
        format!("balancer_backend_info{{requested=\"{backend}\",effective=\"{backend}\"}} 1\n");
    assert!(text.contains(&info), "{text}");
    assert!(
        text.contains("balancer_worker_max_connections{worker=\"1\"} 100\n"),
        "{text}"
    );
    promtool_check(&text, &format!("{backend}"));

    let options = (PrometheusOptions::new().prefix("edge").unwrap())
        .label("listener_set", "public \"a\"")
        .unwrap();
    let labelled = snap.to_prometheus_with(&options);
    assert!(
        labelled.contains(
            "edge_worker_downstream_cx_active{listener_set=\"public \\\"a\\\"\",worker=\"0\"}"
        ),
        "{labelled}"
    );
    promtool_check(&labelled, &format!("{backend} with a prefix and a label"));
}

/// Two listener sets in one process rendered into one scrape stay apart by
/// their constant labels: no sample line appears twice.
#[test]
fn two_listener_sets_render_distinct_samples() {
    let texts: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|set| {
            let options = PrometheusOptions::new().label("set", set).unwrap();
            let listener = util::bind_loopback(Backend::ReusePort, 2);
            listener.stats().snapshot().to_prometheus_with(&options)
        })
        .collect();
    let mut seen = BTreeSet::new();
    for text in &texts {
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let series = sample.rsplit_once(' ').unwrap().0;
            assert!(seen.insert(series.to_owned()), "{series} twice");
        }
    }
}

/// Every metric the example dashboard queries is a family of the rendering
/// (of `Ebpf`, which has them all).
#[test]
fn the_grafana_dashboard_queries_existing_families() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana/balancer.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    let mut queried = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        for target in targets {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queried.extend(metric_names(expr));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queried.extend(metric_names(query));
        }
    }
    assert!(queried.len() >= 4, "{queried:?}");
    if !util::runnable(Backend::Ebpf) {
        return;
    }
    let text = serving_snapshot(Backend::Ebpf).to_prometheus();
    let families: BTreeSet<_> = (text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &queried {
        assert!(
            families.contains(name.as_str()),
            "{name} is not rendered: {families:?}"
        );
    }
}

/// The `balancer_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("balancer_"))
        .map(str::to_owned)
        .collect()
}
