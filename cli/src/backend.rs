//! `lbctl backend add|remove|set-weight|list` (and `add-backend`, `remove-backend`): the checked
//! [`Backend`] command, its request to lbd's Backends service, and the reply through `output`.

use std::io;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::Context as _;

use crate::client::{call, Lbd};
use crate::highargs::Globals;
use crate::highargs::{self, VipKey};
use crate::output::{self, BackendJson, BackendListJson, VipKeyJson};
use crate::pb;

/// A checked `backend` command (`drain`/`undrain` are health commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Add {
        vip: VipKey,
        backend: SocketAddrV4,
        weight: u32,
    },
    /// Several backends (or a list file) in one all-or-nothing AddBackends call.
    AddMany {
        vip: VipKey,
        /// From the command line, each with `weight`.
        backends: Vec<SocketAddrV4>,
        /// A list to read and check before the call (`-`: standard input).
        file: Option<PathBuf>,
        weight: u32,
    },
    Remove {
        vip: VipKey,
        backend: SocketAddrV4,
    },
    SetWeight {
        vip: VipKey,
        backend: SocketAddrV4,
        weight: u32,
    },
    List {
        vip: VipKey,
    },
}

/// Reads and checks a backend list (`-`: standard input) before anything is sent.
fn read_backend_list(file: &Path, weight: u32) -> anyhow::Result<Vec<(SocketAddrV4, u32)>> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        io::Read::read_to_string(&mut io::stdin(), &mut s)
            .context("cannot read the backend list from standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    highargs::parse_backend_list(&text, weight)
        .map_err(|(line, e)| anyhow::anyhow!("{}:{line}: {e}; nothing was added", file.display()))
}

/// The message of a backend as a request names it (lbd assigns the id).
fn requested(addr: &SocketAddrV4, weight: u32) -> pb::Backend {
    pb::Backend {
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
        weight: Some(weight),
        ..Default::default()
    }
}

/// Sends `cmd` to lbd and renders the reply.
pub async fn run(cmd: &Backend, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let json = args.json;
    let t = args.timeout;
    let written = match cmd {
        Backend::Add {
            vip,
            backend,
            weight,
        } => {
            let requested = requested(backend, *weight);
            let req = pb::AddBackendRequest {
                vip: Some(pb::VipKey::from(vip)),
                backend: Some(requested.clone()),
            };
            let resp = call(t, lbd.backends.add_backend(req)).await?;
            let added = resp.backend.unwrap_or(requested);
            if json {
                output::write_json(out, &BackendJson::from(&added))
            } else {
                writeln!(
                    out,
                    "added backend {}:{} (weight {}) to {vip}",
                    added.address,
                    added.port,
                    added.weight.unwrap_or_default()
                )
            }
        }
        Backend::AddMany {
            vip,
            backends,
            file,
            weight,
        } => {
            let mut all: Vec<(std::net::SocketAddrV4, u32)> =
                backends.iter().map(|b| (*b, *weight)).collect();
            if let Some(file) = file {
                all.extend(read_backend_list(file, *weight)?);
            }
            let addrs: Vec<_> = all.iter().map(|(a, _)| *a).collect();
            if let Some(dup) = highargs::first_repeat(&addrs) {
                anyhow::bail!("backend {dup} is listed twice; nothing was added");
            }
            let req = pb::AddBackendsRequest {
                vip: Some(pb::VipKey::from(vip)),
                backends: all.iter().map(|(a, w)| requested(a, *w)).collect(),
            };
            // About 10 us a backend on lbd's side; allow for big lists on a slow link.
            let timeout = t + std::time::Duration::from_millis(all.len() as u64);
            let resp = call(timeout, lbd.backends.add_backends(req)).await?;
            if json {
                output::write_json(
                    out,
                    &BackendListJson {
                        vip: VipKeyJson::from(&pb::VipKey::from(vip)),
                        backends: resp.backends.iter().map(BackendJson::from).collect(),
                    },
                )
            } else {
                writeln!(out, "added {} backends to {vip}", resp.backends.len())
            }
        }
        Backend::Remove { vip, backend } => {
            let req = pb::RemoveBackendRequest {
                vip: Some(pb::VipKey::from(vip)),
                address: backend.ip().to_string(),
                port: u32::from(backend.port()),
            };
            call(t, lbd.backends.remove_backend(req)).await?;
            if json {
                output::write_json(out, &serde_json::json!({}))
            } else {
                writeln!(out, "removed backend {backend} from {vip}")
            }
        }
        Backend::SetWeight {
            vip,
            backend,
            weight,
        } => {
            let req = pb::SetBackendWeightRequest {
                vip: Some(pb::VipKey::from(vip)),
                address: backend.ip().to_string(),
                port: u32::from(backend.port()),
                weight: *weight,
            };
            let resp = call(t, lbd.backends.set_backend_weight(req)).await?;
            let updated = resp.backend.unwrap_or_else(|| requested(backend, *weight));
            if json {
                output::write_json(out, &BackendJson::from(&updated))
            } else {
                let drained = if updated.weight.unwrap_or_default() == 0 {
                    " (drained)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "set weight of backend {}:{} on {vip} to {}{drained}",
                    updated.address,
                    updated.port,
                    updated.weight.unwrap_or_default()
                )
            }
        }
        Backend::List { vip } => {
            let req = pb::ListBackendsRequest {
                vip: Some(pb::VipKey::from(vip)),
            };
            let resp = call(t, lbd.backends.list_backends(req)).await?;
            if json {
                let backends = resp
                    .backends
                    .iter()
                    .map(|b| BackendJson {
                        tracked_flows: Some(b.tracked_flows),
                        ..BackendJson::from(b)
                    })
                    .collect();
                let vip = VipKeyJson::from(&pb::VipKey::from(vip));
                output::write_json(out, &BackendListJson { vip, backends })
            } else {
                output::backend_list(out, &vip.to_string(), &resp.backends)
            }
        }
    };
    written.context("cannot write to stdout")
}
