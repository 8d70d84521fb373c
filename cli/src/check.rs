//! `lbctl backend check --vip ADDR:PORT --proto P BACKEND:PORT`: lbd probes the backend from
//! the balancer through the path of the VIP's mode (the `CheckBackend` RPC) and lbctl prints one
//! line per check (name, ok/fail/warn/skipped, what was found) with the fix under each failure
//! or warning, or the reply as one JSON object with `--json`. lbctl exits 1 when a check failed.

use std::io::Write;
use std::net::SocketAddrV4;
use std::time::Duration;

use serde_json::json;

use crate::client::{call, Lbd};
use crate::highargs::{Globals, VipKey};
use crate::pb;

/// The probes take a few seconds (an MTU search on a lossy path the longest): lbctl waits at
/// least this long for the reply, whatever `--timeout` says.
const MIN_TIMEOUT: Duration = Duration::from_secs(20);

/// `lbctl backend check`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub vip: VipKey,
    pub backend: SocketAddrV4,
}

/// Some check failed: the report is printed, lbctl exits 1.
#[derive(Debug)]
pub struct ChecksFailed(pub Vec<String>);

impl std::fmt::Display for ChecksFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed checks: {}", self.0.join(", "))
    }
}

impl std::error::Error for ChecksFailed {}

/// The report: a header line, then one line per check, its fix indented below it.
pub fn report(r: &pb::CheckBackendReply) -> String {
    let mut lines = vec![format!(
        "backend {} of vip {} ({}), from {} on {}",
        r.backend,
        r.vip,
        r.mode,
        if r.source.is_empty() { "?" } else { &r.source },
        if r.egress.is_empty() { "?" } else { &r.egress },
    )];
    let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(4);
    for c in &r.checks {
        lines.push(format!(
            "  {:<7}  {:<width$}  {}",
            c.status, c.name, c.detail
        ));
        if !c.fix.is_empty() {
            lines.push(format!("  {:<7}  {:<width$}  fix: {}", "", "", c.fix));
        }
    }
    let failed = r.checks.iter().filter(|c| c.status == "fail").count();
    let warned = r.checks.iter().filter(|c| c.status == "warn").count();
    lines.push(match (failed, warned) {
        (0, 0) => format!("=> all {} checks passed or were skipped", r.checks.len()),
        (0, w) => format!("=> no check failed, {w} warning(s)"),
        (f, w) => format!("=> {f} of {} checks failed, {w} warning(s)", r.checks.len()),
    });
    lines.join("\n")
}

/// The reply as JSON.
pub fn to_json(r: &pb::CheckBackendReply) -> serde_json::Value {
    json!({
        "vip": r.vip,
        "mode": r.mode,
        "backend": r.backend,
        "egress": r.egress,
        "source": r.source,
        "checks": r.checks.iter().map(|c| json!({
            "name": c.name, "status": c.status, "detail": c.detail,
            "fix": (!c.fix.is_empty()).then_some(&c.fix),
        })).collect::<Vec<_>>(),
        "failed": r.checks.iter().filter(|c| c.status == "fail").map(|c| &c.name).collect::<Vec<_>>(),
    })
}

pub async fn run(cmd: &Check, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let request = pb::CheckBackendRequest {
        vip: Some(pb::VipKey::from(&cmd.vip)),
        backend_address: cmd.backend.ip().to_string(),
        backend_port: u32::from(cmd.backend.port()),
    };
    let reply = call(
        args.timeout.max(MIN_TIMEOUT),
        lbd.checks.check_backend(request),
    )
    .await?;
    if args.json {
        crate::output::write_json(out, &to_json(&reply))?;
    } else {
        writeln!(out, "{}", report(&reply))?;
    }
    let failed: Vec<String> = reply
        .checks
        .iter()
        .filter(|c| c.status == "fail")
        .map(|c| c.name.clone())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ChecksFailed(failed).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_one_line_per_check_and_the_fix_under_failures() {
        let r = pb::CheckBackendReply {
            vip: "10.0.0.10:80/tcp".into(),
            mode: "l2dsr".into(),
            backend: "10.0.2.1:80".into(),
            egress: "eth1".into(),
            source: "10.0.2.254".into(),
            checks: vec![
                pb::CheckResult {
                    name: "port".into(),
                    status: "ok".into(),
                    detail: "accepted".into(),
                    fix: String::new(),
                },
                pb::CheckResult {
                    name: "vip".into(),
                    status: "fail".into(),
                    detail: "no answer".into(),
                    fix: "lbctl backend-setup".into(),
                },
            ],
        };
        let text = report(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].contains("ok") && lines[1].contains("port"),
            "{text}"
        );
        assert!(
            lines[2].contains("fail") && lines[2].contains("vip"),
            "{text}"
        );
        assert!(
            lines[3]
                .trim_start()
                .starts_with("fix: lbctl backend-setup"),
            "{text}"
        );
        assert!(lines[4].contains("1 of 2 checks failed"), "{text}");
        assert_eq!(to_json(&r)["failed"], json!(["vip"]));
    }
}
