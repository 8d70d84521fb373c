//! `xdplb-backend-setup`: prepares (or, with `--undo`, un-prepares) the host it runs on as a DSR
//! backend of a VIP. `lbctl backend-setup` runs this binary with the same flags (and `lbctl` as
//! its argv[0], so that messages read as lbctl's); it needs no lbd.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ipnet::Ipv4Net;
use serde::Serialize;
use xdplb_backend::Mode;

/// Exit status of a failed setup (usage errors are 2, as with clap).
const EXIT_FAILURE: u8 = 1;

/// Prepare this host as a DSR backend of a VIP (VIP on lo, ARP sysctls, IPIP decap); no lbd.
#[derive(Debug, Parser)]
#[command(name = "xdplb-backend-setup", version)]
struct Args {
    /// The VIP this host serves (an address, no port), e.g. 10.0.0.10
    #[arg(long, value_name = "ADDR")]
    vip: Ipv4Addr,

    /// How the load balancer reaches this host: l2dsr or ipip
    #[arg(long, value_name = "MODE")]
    mode: Mode,

    /// The interface the VIP's traffic arrives on (ipip: where the decap program goes)
    #[arg(long, value_name = "IF")]
    dev: String,

    /// ipip: an outer source prefix the load balancers encapsulate from (their [ipip] source,
    /// e.g. 10.0.1.1 or 10.0.1.0/28); repeatable, at least one. IPIP to the VIP from any other
    /// source is dropped. A setup sets the VIP's prefixes to exactly these; --undo removes them
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    lb_source: Vec<Ipv4Net>,

    /// Reverse a previous backend-setup for this VIP
    #[arg(long)]
    undo: bool,

    /// Print one JSON document instead of human-readable text
    #[arg(long)]
    json: bool,
}

/// An IPv4 prefix or address (a /32), without host bits.
fn parse_prefix(s: &str) -> Result<Ipv4Net, String> {
    xdplb_model::cidr::parse_cidr(s).map_err(|e| e.to_string())
}

/// The `--json` document: what was asked, one line per step, and (ipip) the outer sources the
/// decap program now accepts for the VIP.
#[derive(Debug, Serialize)]
struct BackendSetupJson<'a> {
    vip: String,
    mode: &'static str,
    dev: &'a str,
    undo: bool,
    steps: &'a [String],
    lb_sources: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Named as invoked: `lbctl` when lbctl runs us, so errors read as they always did.
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "xdplb-backend-setup".into());
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(&args, &mut out)))
        .and_then(|()| out.flush().context("cannot write to stdout"));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `... | head` must not turn into an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Runs the setup (or its undo) and prints what it did.
async fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let Args {
        vip,
        mode,
        dev,
        lb_source,
        undo,
        json,
    } = args;
    let steps = if *undo {
        xdplb_backend::undo(*vip, *mode, dev)
            .await
            .with_context(|| format!("undoing the {mode} setup of {vip} on {dev}"))?
    } else {
        xdplb_backend::setup(*vip, *mode, dev, lb_source)
            .await
            .with_context(|| format!("preparing this host for {vip} by {mode} on {dev}"))?
    };
    let written = if *json {
        let lb_sources = match mode {
            Mode::Ipip => xdplb_backend::lb_sources(*vip, dev)
                .context("reading the decap program's outer sources")?,
            Mode::L2dsr => Vec::new(),
        };
        let doc = BackendSetupJson {
            vip: vip.to_string(),
            mode: mode.as_str(),
            dev,
            undo: *undo,
            steps: &steps,
            lb_sources: lb_sources.iter().map(Ipv4Net::to_string).collect(),
        };
        serde_json::to_writer(&mut *out, &doc)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        steps.iter().try_for_each(|line| writeln!(out, "{line}"))
    };
    written.context("cannot write to stdout")
}
