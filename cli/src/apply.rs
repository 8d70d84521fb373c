//! `lbctl apply -f FILE [--dry-run]`: sends the text of a desired-configuration file (lbd.toml's
//! `[[vip]]`, `[firewall]` rules and `[ratelimit]` policies) to lbd's `Apply` RPC, which parses
//! it with lbd's own parser, and prints the difference like a diff (`+ vip ...`, `- backend ...`,
//! `~ weight ... 100 -> 50`), then what was done; `--json` prints the reply as one object.

use std::io::{Read as _, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;

use crate::client::{call, Lbd};
use crate::highargs::Globals;
use crate::lowargs::ApplyArgs;
use crate::pb;

/// Largest file sent (lbd takes requests up to this size: a million firewall prefixes fit).
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// `lbctl apply`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    /// `-` is standard input.
    pub file: PathBuf,
    pub dry_run: bool,
}

impl From<ApplyArgs> for Apply {
    fn from(low: ApplyArgs) -> Self {
        Apply {
            file: low.file,
            dry_run: low.dry_run,
        }
    }
}

impl Apply {
    fn is_stdin(&self) -> bool {
        self.file.as_os_str() == "-"
    }

    /// The name lbd's errors give the file.
    fn name(&self) -> String {
        if self.is_stdin() {
            "<stdin>".into()
        } else {
            self.file.display().to_string()
        }
    }

    /// The file's text, refused when it is not UTF-8 or larger than [`MAX_FILE_BYTES`].
    fn read(&self) -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        let limit = MAX_FILE_BYTES as u64 + 1;
        if self.is_stdin() {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut bytes)
                .context("cannot read standard input")?;
        } else {
            std::fs::File::open(&self.file)
                .and_then(|f| f.take(limit).read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", self.file.display()))?;
        }
        if bytes.len() > MAX_FILE_BYTES {
            anyhow::bail!(
                "{}: larger than {} MiB, the most lbd takes",
                self.name(),
                MAX_FILE_BYTES >> 20
            );
        }
        String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not UTF-8 text (invalid byte at offset {})",
                self.name(),
                e.utf8_error().valid_up_to()
            )
        })
    }
}

fn op_name(op: i32) -> &'static str {
    match pb::ApplyOp::try_from(op) {
        Ok(pb::ApplyOp::Add) => "add",
        Ok(pb::ApplyOp::Remove) => "remove",
        Ok(pb::ApplyOp::Change) => "change",
        _ => "unknown",
    }
}

/// The reply as `--json` prints it.
pub fn to_json(cmd: &Apply, r: &pb::ApplyReply) -> serde_json::Value {
    json!({
        "dry_run": cmd.dry_run,
        "applied": r.applied,
        "changed": r.total > 0,
        "total": r.total,
        "changes": r.changes.iter().map(|c| json!({
            "op": op_name(c.op),
            "kind": c.kind,
            "vip": c.vip,
            "target": c.target,
            "from": c.from,
            "to": c.to,
            "line": c.line,
        })).collect::<Vec<_>>(),
    })
}

/// The diff lines, then one line saying what was done.
pub fn report(cmd: &Apply, r: &pb::ApplyReply) -> String {
    let mut lines: Vec<String> = r.changes.iter().map(|c| c.line.clone()).collect();
    let listed = r.changes.len() as u64;
    if r.total > listed {
        lines.push(format!("... and {} more", r.total - listed));
    }
    let n = r.total;
    let s = if n == 1 { "" } else { "s" };
    lines.push(match (n, cmd.dry_run, r.applied) {
        (0, _, _) => "no changes".into(),
        (_, true, _) => format!("{n} change{s} (dry run: nothing changed)"),
        (_, false, true) => format!("applied {n} change{s}"),
        (_, false, false) => format!("{n} change{s} not applied"),
    });
    lines.join("\n")
}

pub async fn run(cmd: &Apply, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = cmd.read()?;
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let request = pb::ApplyRequest {
        config,
        dry_run: cmd.dry_run,
        name: cmd.name(),
    };
    let reply = call(args.timeout, lbd.apply.apply(request)).await?;
    if args.json {
        crate::output::write_json(out, &to_json(cmd, &reply))?;
    } else {
        writeln!(out, "{}", report(cmd, &reply))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: pb::ApplyOp, line: &str) -> pb::ApplyChange {
        pb::ApplyChange {
            op: op as i32,
            line: line.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reports_say_what_was_done() {
        let dry = Apply {
            file: "x.toml".into(),
            dry_run: true,
        };
        let real = Apply {
            dry_run: false,
            ..dry.clone()
        };
        let none = pb::ApplyReply::default();
        assert_eq!(report(&dry, &none), "no changes");
        assert_eq!(report(&real, &none), "no changes");
        let two = pb::ApplyReply {
            changes: vec![
                change(pb::ApplyOp::Add, "+ vip 10.0.0.1:80/tcp nat"),
                change(
                    pb::ApplyOp::Change,
                    "~ weight 10.0.0.1:80/tcp 10.0.2.1:80 100 -> 50",
                ),
            ],
            total: 3,
            applied: true,
        };
        assert_eq!(
            report(&real, &two),
            "+ vip 10.0.0.1:80/tcp nat\n~ weight 10.0.0.1:80/tcp 10.0.2.1:80 100 -> 50\n... and 1 more\napplied 3 changes"
        );
        let dry_reply = pb::ApplyReply {
            applied: false,
            total: 1,
            changes: vec![change(pb::ApplyOp::Remove, "- block 10.0.0.0/8")],
        };
        assert_eq!(
            report(&dry, &dry_reply),
            "- block 10.0.0.0/8\n1 change (dry run: nothing changed)"
        );
        let j = to_json(&dry, &dry_reply);
        assert_eq!(j["changed"], true);
        assert_eq!(j["applied"], false);
        assert_eq!(j["changes"][0]["op"], "remove");
    }
}
