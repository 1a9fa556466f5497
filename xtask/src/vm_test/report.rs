//! Reading a guest's results back and the table printed at the end.

use std::{fs, path::Path, time::Duration};

use anyhow::{bail, Context};

use super::{machine::Accel, tests::Binary};

/// One kernel's run.
pub struct KernelRun {
    pub release: String,
    pub accel: Accel,
    pub elapsed: Duration,
    /// The results, or why there are none (the VM did not boot, finish, ...).
    pub outcome: anyhow::Result<Results>,
}

/// What the test binaries reported in one guest.
#[derive(Default)]
pub struct Results {
    pub passed: u64,
    pub failed: u64,
    /// Tests the series' skips left out (`skips.rs`).
    pub skipped: usize,
    /// Binaries that exited non-zero, with their log.
    pub failing: Vec<String>,
    /// The end of each failing binary's log (libtest's `failures:`
    /// section), printed so that a CI log names the test and its panic.
    pub failure_excerpts: Vec<(String, String)>,
    /// The `Ebpf` burst splits the burst tests print (`util::burst::report`).
    pub ebpf_bursts: Vec<String>,
}

/// Reads `out` after the guest stopped: every binary must have run.
pub fn read(out: &Path, binaries: &[&Binary]) -> anyhow::Result<Results> {
    if !out.join("finished").exists() {
        bail!("the guest stopped before running every test (see its console above)");
    }
    let statuses = fs::read_to_string(out.join("results")).context("the guest's results")?;
    let mut results = Results::default();
    for binary in binaries {
        let file = binary.file_name();
        let status = (statuses.lines())
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.get(1) == Some(&file.as_str()))
            .and_then(|fields| fields.get(2).map(|s| s.to_string()))
            .with_context(|| format!("{}: no exit status from the guest", binary.name))?;
        let log_path = out.join(format!("{file}.log"));
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let (passed, failed) = counts(&log);
        results.passed += passed;
        results.failed += failed;
        if status != "0" {
            results.failing.push(format!(
                "{} (exit {status}, {})",
                binary.name,
                log_path.display()
            ));
            results
                .failure_excerpts
                .push((binary.name.clone(), failure_excerpt(&log)));
        }
        results.ebpf_bursts.extend(
            (log.lines())
                .filter_map(|line| line.strip_prefix("burst-split backend=ebpf "))
                .map(str::to_owned),
        );
    }
    Ok(results)
}

/// Lines printed of a failing binary's log, at most.
const EXCERPT_LINES: usize = 80;

/// What to show of a failing binary's log: from libtest's first
/// `failures:` heading on (the captured output and panic of each failed
/// test), or the log's last lines when there is none (a crash, a timeout);
/// at most [`EXCERPT_LINES`] lines either way.
fn failure_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = (lines.iter().position(|line| *line == "failures:"))
        .unwrap_or(lines.len().saturating_sub(EXCERPT_LINES));
    let shown = &lines[from..];
    let mut excerpt = shown[..shown.len().min(EXCERPT_LINES)].join("\n");
    if shown.len() > EXCERPT_LINES {
        excerpt.push_str(&format!("\n[{} more lines]", shown.len() - EXCERPT_LINES));
    }
    excerpt
}

/// Passed and failed counts from libtest's `test result:` lines.
fn counts(log: &str) -> (u64, u64) {
    let number_before = |line: &str, word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.windows(2))
            .find(|pair| pair[1].trim_end_matches([';', ',']) == word)
            .and_then(|pair| pair[0].parse().ok())
            .unwrap_or(0)
    };
    (log.lines().filter(|line| line.starts_with("test result:")))
        .map(|line| (number_before(line, "passed"), number_before(line, "failed")))
        .fold((0, 0), |(p, f), (lp, lf)| (p + lp, f + lf))
}

/// Prints the per-kernel table and the `Ebpf` burst splits.
pub fn print(runs: &[KernelRun]) {
    println!("\n== vm-test results");
    println!(
        "{:<24} {:<5} {:>7} {:>7} {:>7} {:>8}  note",
        "kernel", "accel", "passed", "failed", "skipped", "time"
    );
    for run in runs {
        let time = format!(
            "{}m{:02}s",
            run.elapsed.as_secs() / 60,
            run.elapsed.as_secs() % 60
        );
        match &run.outcome {
            Ok(r) => println!(
                "{:<24} {:<5} {:>7} {:>7} {:>7} {:>8}  {}",
                run.release,
                run.accel,
                r.passed,
                r.failed,
                r.skipped,
                time,
                r.failing.join("; ")
            ),
            Err(e) => println!(
                "{:<24} {:<5} {:>7} {:>7} {:>7} {:>8}  NOT RUN: {e:#}",
                run.release, run.accel, "-", "-", "-", time
            ),
        }
    }
    for run in runs {
        if let Ok(Results { skipped: 1.., .. }) = &run.outcome {
            println!(
                "skipped on {}: see xtask/src/vm_test/skips.rs for which and why",
                run.release
            );
        }
    }
    for run in runs {
        for (binary, excerpt) in (run.outcome.iter()).flat_map(|r| &r.failure_excerpts) {
            println!("\n{binary} failed on {}:\n{excerpt}", run.release);
        }
    }
    for run in runs {
        if let Ok(results) = &run.outcome {
            println!("\nEbpf burst splits on {}:", run.release);
            for line in &results.ebpf_bursts {
                println!("  {line}");
            }
        }
    }
}

/// Success only if every kernel ran every binary and none failed.
pub fn verdict(runs: &[KernelRun]) -> anyhow::Result<()> {
    let bad: Vec<&str> = (runs.iter())
        .filter(|run| {
            (run.outcome.as_ref()).map_or(true, |r| r.failed > 0 || !r.failing.is_empty())
        })
        .map(|run| run.release.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        bail!(
            "the suite failed or did not run on Linux {}",
            bad.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_starts_at_the_failures_heading() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n\
                   ---- b stdout ----\npanicked at tests/b.rs:3:5\n\nfailures:\n    b\n\n\
                   test result: FAILED. 1 passed; 1 failed";
        let excerpt = failure_excerpt(log);
        assert!(excerpt.starts_with("failures:\n\n---- b stdout ----\npanicked"));
        assert!(excerpt.ends_with("1 failed"), "{excerpt}");
    }

    #[test]
    fn without_a_heading_the_excerpt_is_the_last_lines_capped() {
        let log: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let excerpt = failure_excerpt(&log);
        assert_eq!(excerpt.lines().count(), EXCERPT_LINES);
        assert!(excerpt.starts_with("line 120\n") && excerpt.ends_with("line 199"));
        let long = format!("failures:\n{log}");
        let excerpt = failure_excerpt(&long);
        assert!(excerpt.ends_with("[121 more lines]"), "{excerpt}");
    }
}
