//! lbctl: command-line client for lbd, the xdplb daemon. This module owns the process
//! edges (argument parsing, exit codes, error lines) and dispatches one command to lbd.

mod backend_setup;
mod client;
mod command;
mod firewall;
mod health;
mod highargs;
mod lowargs;
mod man;
mod output;
mod pb;
mod ratelimit;
mod top;

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};

use crate::client::{call, Lbd};
use crate::command::{Command, Invocation};
use crate::highargs::Globals;
use crate::lowargs::LowArgs;
use crate::output::{BackendJson, BackendListJson, StatsJson, VipJson, VipKeyJson, VipListJson};

/// Exit status for RPC and connection failures (usage errors are 2, as with clap).
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let low = match LowArgs::try_parse() {
        Ok(low) => low,
        Err(e) => {
            // --help/--version land here too, with exit code 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    let high = match Invocation::try_from(low) {
        Ok(high) => high,
        Err(e) => {
            eprintln!("lbctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    if let Command::BackendSetup { .. } = &high.command {
        // Prepares this host as a DSR backend: local work in a binary of its own, no lbd.
        let e = backend_setup::exec(&high.command, high.globals.json);
        eprintln!("lbctl: {e:#}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = if let Command::Completions(shell) = high.command {
        clap_complete::generate(shell, &mut LowArgs::command(), "lbctl", &mut out);
        Ok(())
    } else if let Command::Man(dir) = &high.command {
        match dir {
            None => man::render(&mut out),
            Some(dir) => man::write_all(dir).and_then(|pages| {
                for p in pages {
                    writeln!(out, "{}", p.display()).context("cannot write to stdout")?;
                }
                Ok(())
            }),
        }
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run(&high.command, &high.globals, &mut out)))
    };
    match result.and_then(|()| out.flush().context("cannot write to stdout")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `lbctl stats | head` must not turn into an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Reads and checks a backend list (`-`: standard input) before anything is sent.
fn read_backend_list(
    file: &std::path::Path,
    weight: u32,
) -> anyhow::Result<Vec<(std::net::SocketAddrV4, u32)>> {
    let text = if file == std::path::Path::new("-") {
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

/// Connect to lbd, perform one command, and render the reply to `out`.
async fn run(command: &Command, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Command::Firewall(cmd) = command {
        // Reads and checks a list file before connecting.
        return firewall::run(cmd, args, out).await;
    }
    if let Command::RateLimit(cmd) = command {
        return ratelimit::run(cmd, args, out).await;
    }
    if let Command::Health(cmd) = command {
        return health::run(cmd, args, out).await;
    }
    if let Command::Top(cmd) = command {
        return top::run(cmd, args, out).await;
    }
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let json = args.json;
    let t = args.timeout;
    let written = match command {
        Command::VipAdd { vip, mode, health } => {
            let req = pb::AddVipRequest {
                vip: Some(vip.to_pb()),
                mode: mode.to_pb() as i32,
                health: health.is_checked().then(|| health.to_pb()),
            };
            let added = call(t, lbd.vips.add_vip(req)).await?;
            let added = added.vip.unwrap_or_else(|| pb::Vip {
                key: Some(vip.to_pb()),
                mode: mode.to_pb() as i32,
                ..Default::default()
            });
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
                    output::vip_label(&added.key.clone().unwrap_or_else(|| vip.to_pb())),
                    output::mode_name(added.mode),
                    added.id
                )
            }
        }
        Command::VipRemove { vip } => {
            let req = pb::RemoveVipRequest {
                vip: Some(vip.to_pb()),
            };
            call(t, lbd.vips.remove_vip(req)).await?;
            if json {
                output::write_json(out, &serde_json::json!({}))
            } else {
                writeln!(out, "removed vip {vip}")
            }
        }
        Command::VipSetMode { vip, mode } => {
            let req = pb::SetVipModeRequest {
                vip: Some(vip.to_pb()),
                mode: mode.to_pb() as i32,
            };
            let resp = call(t, lbd.vips.set_vip_mode(req)).await?;
            let set = resp.vip.unwrap_or_else(|| pb::Vip {
                key: Some(vip.to_pb()),
                mode: mode.to_pb() as i32,
                ..Default::default()
            });
            if json {
                output::write_json(out, &VipJson::from(&set))
            } else {
                writeln!(
                    out,
                    "vip {} now uses {} for new flows (tracked flows keep their mode)",
                    output::vip_label(&set.key.clone().unwrap_or_else(|| vip.to_pb())),
                    output::mode_name(set.mode)
                )
            }
        }
        Command::VipList => {
            let resp = call(t, lbd.vips.list_vips(pb::ListVipsRequest {})).await?;
            if json {
                let vips = resp.vips.iter().map(VipJson::from).collect();
                output::write_json(out, &VipListJson { vips })
            } else {
                output::vip_list(out, &resp.vips)
            }
        }
        Command::BackendAdd {
            vip,
            backend,
            weight,
        } => {
            let requested = pb::Backend {
                address: backend.ip().to_string(),
                port: u32::from(backend.port()),
                weight: Some(*weight),
                id: 0,
                ..Default::default()
            };
            let req = pb::AddBackendRequest {
                vip: Some(vip.to_pb()),
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
        Command::BackendAddMany {
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
                vip: Some(vip.to_pb()),
                backends: all
                    .iter()
                    .map(|(a, w)| pb::Backend {
                        address: a.ip().to_string(),
                        port: u32::from(a.port()),
                        weight: Some(*w),
                        ..Default::default()
                    })
                    .collect(),
            };
            // About 10 us a backend on lbd's side; allow for big lists on a slow link.
            let timeout = t + std::time::Duration::from_millis(all.len() as u64);
            let resp = call(timeout, lbd.backends.add_backends(req)).await?;
            if json {
                output::write_json(
                    out,
                    &BackendListJson {
                        vip: VipKeyJson::from(&vip.to_pb()),
                        backends: resp.backends.iter().map(BackendJson::from).collect(),
                    },
                )
            } else {
                writeln!(out, "added {} backends to {vip}", resp.backends.len())
            }
        }
        Command::BackendRemove { vip, backend } => {
            let req = pb::RemoveBackendRequest {
                vip: Some(vip.to_pb()),
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
        Command::BackendSetWeight {
            vip,
            backend,
            weight,
        } => {
            let req = pb::SetBackendWeightRequest {
                vip: Some(vip.to_pb()),
                address: backend.ip().to_string(),
                port: u32::from(backend.port()),
                weight: *weight,
            };
            let resp = call(t, lbd.backends.set_backend_weight(req)).await?;
            let updated = resp.backend.unwrap_or_else(|| pb::Backend {
                address: backend.ip().to_string(),
                port: u32::from(backend.port()),
                weight: Some(*weight),
                id: 0,
                ..Default::default()
            });
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
        Command::BackendList { vip } => {
            let req = pb::ListBackendsRequest {
                vip: Some(vip.to_pb()),
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
                let vip = VipKeyJson::from(&vip.to_pb());
                output::write_json(out, &BackendListJson { vip, backends })
            } else {
                output::backend_list(out, &vip.to_string(), &resp.backends)
            }
        }
        // Handled in main: runs locally, needs no lbd.
        Command::BackendSetup { .. } => Ok(()),
        Command::Stats => {
            let resp = call(t, lbd.stats.get_stats(pb::GetStatsRequest {})).await?;
            if json {
                output::write_json(out, &StatsJson::from(&resp))
            } else {
                output::stats(out, &resp)
            }
        }
        Command::Completions(_) => Ok(()), // handled in main, needs no lbd
        Command::Man(_) => Ok(()),         // handled in main, needs no lbd
        Command::Firewall(_) => Ok(()),    // handled above
        Command::RateLimit(_) => Ok(()),   // handled above
        Command::Health(_) => Ok(()),      // handled above
        Command::Top(_) => Ok(()),         // handled above
    };
    written.context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    //! Client path over a real Unix socket against an in-process fake of lbd's Vips service.

    use std::{path::Path, sync::Mutex, time::Duration};

    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::highargs::{Mode, Proto, Target, VipKey};
    use crate::pb::test_server::vips_server::{Vips, VipsServer};

    /// Just enough of lbd's Vips service to list, add and remove.
    #[derive(Default)]
    struct FakeVips(Mutex<Vec<pb::Vip>>);

    #[tonic::async_trait]
    impl Vips for FakeVips {
        async fn add_vip(
            &self,
            req: Request<pb::AddVipRequest>,
        ) -> Result<Response<pb::AddVipResponse>, Status> {
            let req = req.into_inner();
            let mut vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            let vip = pb::Vip {
                key: req.vip,
                mode: req.mode,
                id: vips.len() as u32 + 1,
                backends: 0,
                health: req.health,
            };
            vips.push(vip.clone());
            Ok(Response::new(pb::AddVipResponse { vip: Some(vip) }))
        }

        async fn remove_vip(
            &self,
            req: Request<pb::RemoveVipRequest>,
        ) -> Result<Response<pb::RemoveVipResponse>, Status> {
            let key = req.into_inner().vip.unwrap_or_default();
            let mut vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            let before = vips.len();
            vips.retain(|v| v.key.as_ref() != Some(&key));
            if vips.len() == before {
                return Err(Status::not_found(format!(
                    "vip {} does not exist",
                    output::vip_label(&key)
                )));
            }
            Ok(Response::new(pb::RemoveVipResponse {}))
        }

        async fn set_vip_health(
            &self,
            req: Request<pb::SetVipHealthRequest>,
        ) -> Result<Response<pb::SetVipHealthResponse>, Status> {
            let req = req.into_inner();
            let key = req.vip.unwrap_or_default();
            let mut vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            let vip = vips
                .iter_mut()
                .find(|v| v.key.as_ref() == Some(&key))
                .ok_or_else(|| {
                    Status::not_found(format!("vip {} does not exist", output::vip_label(&key)))
                })?;
            vip.health = req.health;
            Ok(Response::new(pb::SetVipHealthResponse {
                vip: Some(vip.clone()),
            }))
        }

        async fn set_vip_mode(
            &self,
            req: Request<pb::SetVipModeRequest>,
        ) -> Result<Response<pb::SetVipModeResponse>, Status> {
            let req = req.into_inner();
            let key = req.vip.unwrap_or_default();
            let mut vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            let vip = vips
                .iter_mut()
                .find(|v| v.key.as_ref() == Some(&key))
                .ok_or_else(|| {
                    Status::not_found(format!("vip {} does not exist", output::vip_label(&key)))
                })?;
            vip.mode = req.mode;
            Ok(Response::new(pb::SetVipModeResponse {
                vip: Some(vip.clone()),
            }))
        }

        async fn list_vips(
            &self,
            _req: Request<pb::ListVipsRequest>,
        ) -> Result<Response<pb::ListVipsResponse>, Status> {
            let vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            Ok(Response::new(pb::ListVipsResponse { vips: vips.clone() }))
        }
    }

    fn serve(path: &Path, fake: FakeVips) {
        let listener = tokio::net::UnixListener::bind(path).expect("bind test socket");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(VipsServer::new(fake))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
    }

    async fn lbctl(socket: &Path, json: bool, command: Command) -> anyhow::Result<String> {
        let args = Globals {
            target: Target::Unix(socket.to_path_buf()),
            json,
            timeout: Duration::from_secs(5),
        };
        let mut buf = Vec::new();
        run(&command, &args, &mut buf).await?;
        Ok(String::from_utf8(buf)?)
    }

    #[tokio::test]
    async fn vip_list_over_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("lbd.sock");
        let fake = FakeVips::default();
        fake.0.lock().expect("fresh mutex").push(pb::Vip {
            key: Some(pb::VipKey {
                address: "10.0.0.10".into(),
                port: 80,
                protocol: pb::Protocol::Tcp as i32,
            }),
            mode: pb::ForwardingMode::Nat as i32,
            id: 1,
            backends: 2,
            health: Some(pb::HealthCheck {
                kind: pb::HealthCheckKind::Tcp as i32,
                interval_ms: 1000,
                timeout_ms: 500,
                rise: 2,
                fall: 3,
                ..Default::default()
            }),
        });
        serve(&socket, fake);

        let added = lbctl(
            &socket,
            false,
            Command::VipAdd {
                vip: VipKey {
                    addr: "10.0.0.11:53".parse().expect("addr"),
                    proto: Proto::Udp,
                },
                mode: Mode::L2Dsr,
                health: crate::health::HealthSpec::default(),
            },
        )
        .await
        .expect("vip add");
        assert_eq!(added, "added vip 10.0.0.11:53/udp (mode l2dsr, id 2)\n");

        let human = lbctl(&socket, false, Command::VipList)
            .await
            .expect("vip list");
        assert_eq!(
            human,
            "VIP           PROTO  MODE   BACKENDS  ID  HEALTH\n\
             10.0.0.10:80  tcp    nat           2   1  tcp 1s/500ms rise 2 fall 3 fail-open\n\
             10.0.0.11:53  udp    l2dsr         0   2  none\n"
        );

        let set = lbctl(
            &socket,
            false,
            Command::Health(crate::health::HealthCommand::SetHealth {
                vip: VipKey {
                    addr: "10.0.0.11:53".parse().expect("addr"),
                    proto: Proto::Udp,
                },
                health: crate::health::HealthSpec {
                    kind: crate::health::Kind::Udp {
                        payload: "ping".into(),
                    },
                    interval: Duration::from_millis(200),
                    timeout: Duration::from_millis(100),
                    drop_when_all_down: true,
                    ..Default::default()
                },
            }),
        )
        .await
        .expect("vip set-health");
        assert_eq!(
            set,
            "vip 10.0.0.11:53/udp health check: udp 200ms/100ms rise 2 fall 3 drop\n"
        );

        let json = lbctl(&socket, true, Command::VipList)
            .await
            .expect("vip list --json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
        assert_eq!(v["vips"][1]["address"], "10.0.0.11");
        assert_eq!(v["vips"][1]["port"], 53);
        assert_eq!(v["vips"][1]["protocol"], "udp");
        assert_eq!(v["vips"][1]["mode"], "l2dsr");
        assert_eq!(v["vips"][1]["health"]["kind"], "udp");
        assert_eq!(v["vips"][1]["health"]["all_down"], "drop");
        assert_eq!(v["vips"][0]["health"]["kind"], "tcp");

        let switched = lbctl(
            &socket,
            false,
            Command::VipSetMode {
                vip: VipKey {
                    addr: "10.0.0.10:80".parse().expect("addr"),
                    proto: Proto::Tcp,
                },
                mode: Mode::Ipip,
            },
        )
        .await
        .expect("vip set-mode");
        assert_eq!(
            switched,
            "vip 10.0.0.10:80/tcp now uses ipip for new flows (tracked flows keep their mode)\n"
        );
        let json = lbctl(
            &socket,
            true,
            Command::VipSetMode {
                vip: VipKey {
                    addr: "10.0.0.10:80".parse().expect("addr"),
                    proto: Proto::Tcp,
                },
                mode: Mode::Nat,
            },
        )
        .await
        .expect("vip set-mode --json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
        assert_eq!(v["mode"], "nat");
        assert_eq!(v["backends"], 2);

        let missing = Command::VipRemove {
            vip: VipKey {
                addr: "10.0.0.1:80".parse().expect("addr"),
                proto: Proto::Tcp,
            },
        };
        let err = lbctl(&socket, false, missing).await.expect_err("not found");
        assert_eq!(
            format!("{err:#}"),
            "not found: vip 10.0.0.1:80/tcp does not exist"
        );
    }
}
