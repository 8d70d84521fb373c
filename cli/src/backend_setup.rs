//! `lbctl backend-setup`: prepares (or, with `--undo`, un-prepares) the host lbctl runs on as a
//! DSR backend of a VIP, through `xdplb::backend_setup`. Local only: no lbd is involved.

use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;

use crate::highargs::Command;

/// The `--json` document: what was asked and one line per step.
#[derive(Debug, Serialize)]
struct BackendSetupJson<'a> {
    vip: String,
    mode: &'static str,
    dev: &'a str,
    undo: bool,
    steps: &'a [String],
}

/// Runs `cmd` (a [`Command::BackendSetup`]) and prints what it did.
pub async fn run(cmd: &Command, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let Command::BackendSetup {
        vip,
        mode,
        dev,
        undo,
    } = cmd
    else {
        anyhow::bail!("not a backend-setup command");
    };
    let steps = if *undo {
        xdplb::backend_setup::undo(*vip, *mode, dev)
            .await
            .with_context(|| format!("undoing the {mode} setup of {vip} on {dev}"))?
    } else {
        xdplb::backend_setup::setup(*vip, *mode, dev)
            .await
            .with_context(|| format!("preparing this host for {vip} by {mode} on {dev}"))?
    };
    let written = if json {
        crate::output::write_json(
            out,
            &BackendSetupJson {
                vip: vip.to_string(),
                mode: mode.as_str(),
                dev,
                undo: *undo,
                steps: &steps,
            },
        )
    } else {
        steps.iter().try_for_each(|line| writeln!(out, "{line}"))
    };
    written.context("cannot write to stdout")
}
