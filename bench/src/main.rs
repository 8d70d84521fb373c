//! `xdplb-bench`, run by `make bench`: measures every path of the data plane
//! against baselines taken in the same run and writes `bench/results/latest.md`
//! plus PNG plots. Needs root (BPF, network namespaces); bounded in time.
//!
//! Sections: 1 per-path cost (`paths`; 1c the trace hook, `trace`), 2 scaling (`scaling`), 3 end to end in namespaces
//! (`e2e`), 4 connections (`conn`), 5 control plane (`control`), 6 SYN flood against
//! established flows (`flood`).

#[path = "../../tests/common/mod.rs"]
mod common;
mod conn;
mod control;
mod e2e;
mod flood;
mod paths;
mod plot;
mod probes;
mod report;
mod scaling;
mod setup;
mod testrun;
mod tracecost;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Every section, in report order, as `--only` names them.
const SECTIONS: [&str; 7] = [
    "paths", "trace", "scaling", "e2e", "conn", "control", "flood",
];

#[derive(Parser, Debug)]
#[command(about = "xdplb benchmarks (root; bounded; writes bench/results/latest.md)")]
struct Args {
    /// Directory for latest.md and the plots.
    #[arg(long, default_value = "bench/results")]
    out: std::path::PathBuf,
    /// Sections to run (default: all): paths, trace, scaling, e2e, conn, control, flood.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Shorter runs (fewer trials and packets, smaller tables), for a quick look.
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // lbd and lbctl of the same build sit next to this binary (target/release).
    if std::env::var_os("XDPLB_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe()?.parent() {
            std::env::set_var("XDPLB_BIN_DIR", dir);
        }
    }
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!(
                "--only: unknown section '{s}' (one of {})",
                SECTIONS.join(", ")
            );
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads BPF programs and creates network namespaces: run it as root");
    }
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut report = report::Report {
        preamble: preamble(args.quick),
        ..Default::default()
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut section = |name: &str, f: &mut dyn FnMut(&mut report::Report) -> Result<()>| {
        if !wanted(name) {
            return;
        }
        let t = Instant::now();
        eprintln!("xdplb-bench: section {name} ...");
        match f(&mut report) {
            Ok(()) => eprintln!(
                "xdplb-bench: section {name} done in {:.1} s",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("xdplb-bench: section {name} FAILED: {e:#}");
                report
                    .closing
                    .push(format!("Section `{name}` failed: {e:#}"));
                failures.push(name.to_string());
            }
        }
    };
    let quick = args.quick;
    let mut s1 = None;
    section("paths", &mut |r| {
        s1 = Some(paths::run(r, quick)?);
        Ok(())
    });
    section("trace", &mut |r| tracecost::run(r, quick));
    section("scaling", &mut |r| scaling::run(r, quick));
    section("e2e", &mut |r| e2e_section(r, quick));
    section("conn", &mut |r| conn_section(r, quick));
    section("control", &mut |r| control::run(r, quick));
    section("flood", &mut |r| flood::run(r, quick));
    if let Some(s1) = &s1 {
        paths::analysis(&mut report, s1);
    }
    report.closing.extend(report::missed_targets(&report));
    report.preamble.push(format!(
        "Total run time: {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    let md = report.write(&args.out).context("writing the report")?;
    print!("{md}");
    eprintln!(
        "xdplb-bench: wrote {} and {} plot(s)",
        args.out.join("latest.md").display(),
        report.plots.len()
    );
    if !failures.is_empty() {
        bail!("sections failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Section 3: end to end in namespaces (`e2e.rs`).
fn e2e_section(report: &mut report::Report, quick: bool) -> Result<()> {
    e2e::run(report, quick)
}

/// Section 4: connections (`conn.rs`).
fn conn_section(report: &mut report::Report, quick: bool) -> Result<()> {
    conn::run(report, quick)
}

/// Machine, kernel and run parameters, for the top of the report.
fn preamble(quick: bool) -> Vec<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    vec![
        format!(
            "Run: {date}, commit {commit} (plus uncommitted changes, if any){}.",
            if quick { ", --quick" } else { "" }
        ),
        format!("Machine: {cpu}, {cpus} CPUs, Linux {kernel}."),
        "Every figure is compared with a baseline measured in the same run (the floor program \
         for per-packet costs); targets are from issue 8."
            .into(),
    ]
}
