//! `lbctl stats`: one GetStats call, rendered through `output`.

use std::io::Write;

use anyhow::Context as _;

use crate::client::{call, Lbd};
use crate::highargs::Globals;
use crate::output::{self, StatsJson};
use crate::pb;

/// Asks lbd for its counters and renders them.
pub async fn run(args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let resp = call(args.timeout, lbd.stats.get_stats(pb::GetStatsRequest {})).await?;
    let written = if args.json {
        output::write_json(out, &StatsJson::from(&resp))
    } else {
        output::stats(out, &resp)
    };
    written.context("cannot write to stdout")
}
