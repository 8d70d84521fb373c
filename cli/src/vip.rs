//! `lbctl vip add|remove|set-mode|list`: the checked [`Vip`] command, its request to lbd's
//! Vips service, and the reply through `output`.

use std::io::Write;

use anyhow::Context as _;

use crate::client::{call, Lbd};
use crate::highargs::Globals;
use crate::highargs::{Mode, VipKey};
use crate::output::{self, VipJson, VipListJson};
use crate::pb;

/// A checked `vip` command (`vip set-health` is a health command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vip {
    Add {
        vip: VipKey,
        mode: Mode,
        /// Kind none unless `--health` was given.
        health: xdplb_model::health::HealthCheck,
    },
    Remove {
        vip: VipKey,
    },
    SetMode {
        vip: VipKey,
        mode: Mode,
    },
    List,
}

/// The VIP in lbd's reply, or the requested one when the reply carries none.
fn or_requested(reply: Option<pb::Vip>, vip: &VipKey, mode: Mode) -> pb::Vip {
    reply.unwrap_or_else(|| pb::Vip {
        key: Some(pb::VipKey::from(vip)),
        mode: pb::ForwardingMode::from(mode) as i32,
        ..Default::default()
    })
}

/// `10.0.0.10:80/tcp` of the VIP in a reply (the requested key if the reply has none).
fn label(reply: &pb::Vip, vip: &VipKey) -> String {
    output::vip_label(&reply.key.clone().unwrap_or_else(|| pb::VipKey::from(vip)))
}

/// Sends `cmd` to lbd and renders the reply.
pub async fn run(cmd: &Vip, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let json = args.json;
    let t = args.timeout;
    let written = match cmd {
        Vip::Add { vip, mode, health } => {
            let req = pb::AddVipRequest {
                vip: Some(pb::VipKey::from(vip)),
                mode: pb::ForwardingMode::from(*mode) as i32,
                health: health.is_checked().then(|| pb::HealthCheck::from(health)),
            };
            let added = call(t, lbd.vips.add_vip(req)).await?;
            let added = or_requested(added.vip, vip, *mode);
            if json {
                output::write_json(out, &VipJson::from(&added))
            } else {
                let checked = if health.is_checked() {
                    format!(", health {}", output::health_label(added.health.as_ref()))
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "added vip {} (mode {}, id {}{checked})",
                    label(&added, vip),
                    output::mode_name(added.mode),
                    added.id
                )
            }
        }
        Vip::Remove { vip } => {
            let req = pb::RemoveVipRequest {
                vip: Some(pb::VipKey::from(vip)),
            };
            call(t, lbd.vips.remove_vip(req)).await?;
            if json {
                output::write_json(out, &serde_json::json!({}))
            } else {
                writeln!(out, "removed vip {vip}")
            }
        }
        Vip::SetMode { vip, mode } => {
            let req = pb::SetVipModeRequest {
                vip: Some(pb::VipKey::from(vip)),
                mode: pb::ForwardingMode::from(*mode) as i32,
            };
            let resp = call(t, lbd.vips.set_vip_mode(req)).await?;
            let set = or_requested(resp.vip, vip, *mode);
            if json {
                output::write_json(out, &VipJson::from(&set))
            } else {
                writeln!(
                    out,
                    "vip {} now uses {} for new flows (tracked flows keep their mode)",
                    label(&set, vip),
                    output::mode_name(set.mode)
                )
            }
        }
        Vip::List => {
            let resp = call(t, lbd.vips.list_vips(pb::ListVipsRequest {})).await?;
            if json {
                let vips = resp.vips.iter().map(VipJson::from).collect();
                output::write_json(out, &VipListJson { vips })
            } else {
                output::vip_list(out, &resp.vips)
            }
        }
    };
    written.context("cannot write to stdout")
}
