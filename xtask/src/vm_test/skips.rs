//! What the suite does not run on a kernel series, and why: every list is
//! here, and nowhere else. The guest runs a binary with a `--skip` per
//! entry that names tests (libtest's filter: every test whose name
//! contains it) and does not run a binary an entry names whole. Before the
//! boot, each binary's `--list` on the machine counts what is left out for
//! the report, and an entry that leaves out nothing is an error (a renamed
//! test must not turn a skip into a silent no-op, nor a stale entry stay).
//! The filters are substrings, as libtest reads `--skip` unless `--exact`
//! is among the arguments after `--`.

use anyhow::{ensure, Context};

use super::{kernel::Series, machine::Accel, tests::Binary};
use crate::workspace;

/// Tests not run on a series: a whole test binary, or the tests whose name
/// contains `name`, in one binary or in every one.
#[derive(Clone, Copy, Debug)]
pub struct Skip {
    /// The test binary (cargo target name); `None`: every binary.
    binary: Option<&'static str>,
    /// libtest's `--skip` filter; `None`: the whole binary.
    name: Option<&'static str>,
}

impl Skip {
    /// The tests whose name contains `name`, in every binary.
    const fn everywhere(name: &'static str) -> Self {
        Self {
            binary: None,
            name: Some(name),
        }
    }

    /// The tests of `binary` whose name contains `name`.
    const fn tests(binary: &'static str, name: &'static str) -> Self {
        Self {
            binary: Some(binary),
            name: Some(name),
        }
    }

    /// Every test of `binary`: it does not run.
    const fn binary(binary: &'static str) -> Self {
        Self {
            binary: Some(binary),
            name: None,
        }
    }

    fn applies_to(&self, binary: &str) -> bool {
        self.binary.is_none_or(|b| b == binary)
    }

    /// Whether this entry leaves out `test` of `binary`.
    fn leaves_out(&self, binary: &str, test: &str) -> bool {
        self.applies_to(binary) && self.name.is_none_or(|name| test.contains(name))
    }
}

/// Linux 5.10 (Debian 11) lacks two things of Linux 5.14, and the tests of
/// what needs them are left out there, and only there:
/// - `sk_reuseport/migrate` programs, so the `Ebpf` backend cannot bind:
///   `bind` fails with `UnsupportedKernel`. `tests/listener.rs`'s
///   `ebpf_binds_from_linux_5_14_and_before_fails_naming_the_feature_or_falls_back`
///   proves that, and the opt-in fallback to `ReusePort`, on every kernel.
/// - migrating requests from a closing listener to another of its
///   `SO_REUSEPORT` group (`reuseport_migrate_sock`). Debian's 5.10 has the
///   `net.ipv4.tcp_migrate_req` sysctl (5.10.188 took the patch that adds
///   it, alone, for a data-race fix) but not the migration, so setting it
///   changes nothing: a handshake that completes on a closing socket is
///   reset, which the README's `tcp_migrate_req` rows say.
///
/// Everything else, every other backend included, runs.
const LINUX_5_10: &[Skip] = &[
    // Every case of a test over backends that binds `Ebpf` (rstest names
    // the case `..::backend_4_Backend__Ebpf`).
    Skip::everywhere("Backend__Ebpf"),
    // Binaries about the program itself: loading it and its verifier log,
    // its picks (steering), its maps healing (tamper), a successor joining
    // it (take_over).
    Skip::binary("steering"),
    Skip::binary("tamper"),
    Skip::binary("take_over"),
    // More than 64 slots and CPU locality: the program's alone.
    Skip::binary("scale"),
    // One test that walks every backend in one process (the fd limit it
    // lowers is per process), so its `Ebpf` part cannot be left out alone.
    Skip::binary("fd_exhaustion"),
    // Tests of `Ebpf` alone: its in-flight counts after half-open
    // handshakes and under a SYN flood, its maps not pinned, and the
    // dashboard's families (of an `Ebpf` set, the only one that has them
    // all).
    Skip::tests(
        "burst",
        "handshakes_that_never_complete_do_not_stay_counted",
    ),
    Skip::tests("listener", "ebpf_maps_are_not_pinned"),
    Skip::tests("syncookies", "a_syn_flood_loses_no_connection"),
    Skip::tests(
        "prometheus",
        "the_grafana_dashboard_queries_existing_families",
    ),
    // What needs `tcp_migrate_req` on the other backends: `ReusePort`
    // closing a worker's socket during a burst (`Shared` and `Exact` keep
    // theirs open), and a restart, where the old set's sockets close.
    Skip::tests(
        "burst",
        "a_worker_closed_during_a_burst_loses_no_connection::backend_2_Backend__ReusePort",
    ),
    Skip::tests(
        "restart",
        "a_new_listener_set_takes_over_without_refusing_a_connection",
    ),
];

/// Under QEMU's TCG (no hardware virtualisation) the guest runs tens of
/// times slower than the host, on two emulated CPUs. What the suite
/// measures in CPU time and scheduling then reads differently, by design:
/// workers that serve a burst use more than a quarter of a CPU and go
/// 50 ms without running, so the busy weight and the stall rule steer, as
/// they should. The tests whose claims are CPU-time claims are left out
/// there, as are the 256-worker ones and the 1,000 take-over generations
/// (minutes each under emulation); the host suite runs them all. With KVM they run in the guest too.
const UNDER_EMULATION: &[Skip] = &[
    // A busy, hung or frozen worker among light ones, by CPU time.
    Skip::binary("busy"),
    // Rebalancing by the workers' busy figures.
    Skip::tests("rebalance", "a_busy_workers_heavy_connection_moves"),
    Skip::tests("rebalance", "a_balanced_server_never_hints"),
    // 256 worker threads on two emulated CPUs.
    Skip::tests("scale", "a_burst_over_256_workers"),
    Skip::tests("scale", "a_take_over_at_256_slots"),
    // 1,000 take-over generations of 128 sockets each.
    Skip::tests("take_over", "a_thousand_generations_of_64_listeners_bind"),
];

/// The skips of `series` under `accel`.
pub fn of(series: Series, accel: Accel) -> Vec<Skip> {
    let emulated = match accel {
        Accel::Tcg => UNDER_EMULATION,
        Accel::Kvm => &[],
    };
    let kernel = match series {
        Series::Linux5_10 => LINUX_5_10,
        Series::Linux6_1 | Series::Linux6_12 => &[],
    };
    emulated.iter().chain(kernel).copied().collect()
}

/// How the suite runs on one series.
pub struct Plan<'a> {
    /// The binaries that run, each with the arguments of its skips.
    pub runs: Vec<(&'a Binary, Vec<String>)>,
    /// How many tests the skips leave out.
    pub skipped: usize,
}

/// The plan for `skips`: which binaries run with which `--skip`s, and how
/// many tests that leaves out (counted from each binary's `--list`).
pub fn plan<'a>(skips: &[Skip], binaries: &'a [Binary]) -> anyhow::Result<Plan<'a>> {
    let mut plan = Plan {
        runs: Vec::new(),
        skipped: 0,
    };
    if skips.is_empty() {
        plan.runs = binaries.iter().map(|b| (b, Vec::new())).collect();
        return Ok(plan);
    }
    let mut used = vec![false; skips.len()];
    for binary in binaries {
        let tests = list(binary)?;
        for (skip, used) in skips.iter().zip(&mut used) {
            *used |= tests.iter().any(|test| skip.leaves_out(&binary.name, test));
        }
        plan.skipped += (tests.iter())
            .filter(|test| skips.iter().any(|skip| skip.leaves_out(&binary.name, test)))
            .count();
        if let Some(args) = arguments(skips, &binary.name) {
            plan.runs.push((binary, args));
        }
    }
    let stale: Vec<&Skip> = (skips.iter().zip(used))
        .filter(|(_, used)| !used)
        .map(|(skip, _)| skip)
        .collect();
    ensure!(
        stale.is_empty(),
        "skips that leave out no test (renamed or gone? see xtask/src/vm_test/skips.rs): {stale:?}"
    );
    Ok(plan)
}

/// The `--skip` arguments of `binary`, or `None` if it does not run.
fn arguments(skips: &[Skip], binary: &str) -> Option<Vec<String>> {
    let mut args = Vec::new();
    for skip in skips.iter().filter(|skip| skip.applies_to(binary)) {
        let name = skip.name?;
        args.extend(["--skip".to_owned(), name.to_owned()]);
    }
    Some(args)
}

/// The tests of `binary` that run when not skipped: its `--list` (`name:
/// test` lines) less its `#[ignore]`d tests, which never run in the guest.
fn list(binary: &Binary) -> anyhow::Result<Vec<String>> {
    let names = |extra: &[&str]| -> anyhow::Result<Vec<String>> {
        let listing = workspace::output(
            std::process::Command::new(&binary.path)
                .args(["--list", "--format", "terse"])
                .args(extra)
                .current_dir(&binary.dir),
        )
        .with_context(|| format!("listing the tests of {}", binary.name))?;
        Ok((listing.lines())
            .filter_map(|line| line.strip_suffix(": test"))
            .map(str::to_owned)
            .collect())
    };
    let ignored = names(&["--ignored"])?;
    let mut tests = names(&[])?;
    tests.retain(|test| !ignored.contains(test));
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left_out(binary: &str, test: &str) -> bool {
        LINUX_5_10.iter().any(|skip| skip.leaves_out(binary, test))
    }

    #[test]
    fn on_5_10_what_needs_5_14_is_left_out_and_the_other_backends_run() {
        let case = "serves_every_connection_and_counts_return_to_zero::backend_4_Backend__Ebpf::workers_1_2";
        assert!(left_out("listener", case));
        assert!(left_out("burst", case));
        for other in ["Shared", "ReusePort", "Exact"] {
            let case = case.replace(
                "backend_4_Backend__Ebpf",
                &format!("backend_1_Backend__{other}"),
            );
            assert!(!left_out("listener", &case), "{case}");
        }
        assert!(left_out(
            "steering",
            "each_connection_goes_to_the_least_loaded_worker"
        ));
        assert!(left_out(
            "burst",
            "handshakes_that_never_complete_do_not_stay_counted"
        ));
        assert!(!left_out(
            "stop",
            "handshakes_that_never_complete_do_not_stay_counted"
        ));
        let close = "a_worker_closed_during_a_burst_loses_no_connection::backend_";
        assert!(left_out("burst", &format!("{close}2_Backend__ReusePort")));
        assert!(!left_out("burst", &format!("{close}1_Backend__Shared")));
        assert!(!left_out("burst", &format!("{close}3_Backend__Exact")));
    }

    #[test]
    fn on_5_10_the_tests_of_the_missing_feature_and_the_fallback_run() {
        for test in [
            "ebpf_binds_from_linux_5_14_and_before_fails_naming_the_feature_or_falls_back",
            "ebpf_fallback_is_explicit_and_reported",
            "ebpf_without_privilege_names_the_missing_capability",
        ] {
            assert!(!left_out("listener", test), "{test}");
        }
    }

    #[test]
    fn whole_binaries_do_not_run_and_the_others_get_one_skip_per_filter() {
        assert_eq!(arguments(LINUX_5_10, "steering"), None);
        assert_eq!(arguments(LINUX_5_10, "fd_exhaustion"), None);
        assert_eq!(
            arguments(LINUX_5_10, "listener").unwrap(),
            [
                "--skip",
                "Backend__Ebpf",
                "--skip",
                "ebpf_maps_are_not_pinned"
            ]
        );
        assert_eq!(
            arguments(LINUX_5_10, "stop").unwrap(),
            ["--skip", "Backend__Ebpf"]
        );
        for series in [Series::Linux6_1, Series::Linux6_12] {
            assert!(of(series, Accel::Kvm).is_empty());
            assert_eq!(of(series, Accel::Tcg).len(), UNDER_EMULATION.len());
        }
        let both = of(Series::Linux5_10, Accel::Tcg).len();
        assert_eq!(both, UNDER_EMULATION.len() + LINUX_5_10.len());
    }
}
