//! lbctl: command-line client for lbd, the xdplb daemon. This module owns the process
//! edges (argument parsing, exit codes, error lines) and dispatches one command to lbd.

mod apply;
mod backend;
mod backend_setup;
mod check;
mod client;
mod command;
mod explain;
mod firewall;
mod health;
mod highargs;
mod lowargs;
mod man;
mod output;
mod ratelimit;
mod stats;
#[cfg(test)]
mod testlbd;
mod top;
mod trace;
mod vip;

/// lbd's API (messages, clients, and the servers the unit tests fake lbd with).
use xdplb_proto::pb;

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};

use crate::command::{Command, Invocation};
use crate::highargs::Globals;
use crate::lowargs::LowArgs;

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
        Err(e) if e.downcast_ref::<health::DrainTimedOut>().is_some() => {
            eprintln!("lbctl: {e:#}");
            ExitCode::from(health::DrainTimedOut::EXIT_CODE)
        }
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

/// Performs one command through its group (args -> request -> RPC -> view) and renders the
/// reply to `out`.
async fn run(command: &Command, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        Command::Vip(cmd) => vip::run(cmd, args, out).await,
        Command::Backend(cmd) => backend::run(cmd, args, out).await,
        Command::Stats => stats::run(args, out).await,
        // Reads and checks a list file before connecting.
        Command::Firewall(cmd) => firewall::run(cmd, args, out).await,
        Command::RateLimit(cmd) => ratelimit::run(cmd, args, out).await,
        Command::Health(cmd) => health::run(cmd, args, out).await,
        Command::Top(cmd) => top::run(cmd, args, out).await,
        Command::Trace(cmd) => trace::run(cmd, args, out).await,
        Command::Explain(cmd) => explain::run(cmd, args, out).await,
        Command::Check(cmd) => check::run(cmd, args, out).await,
        Command::Apply(cmd) => apply::run(cmd, args, out).await,
        // Handled in main: local, no lbd.
        Command::BackendSetup { .. } | Command::Completions(_) | Command::Man(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! Client path over a real Unix socket against an in-process fake of lbd's Vips service.

    use std::{path::Path, sync::Mutex, time::Duration};

    use tonic::service::Routes;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::highargs::{Mode, Protocol, VipKey};
    use crate::output;
    use crate::pb;
    use crate::pb::vips_server::{Vips, VipsServer};
    use crate::vip::Vip;

    /// Just enough of lbd's Vips service to list, add and remove.
    #[derive(Default)]
    struct FakeVips(Mutex<Vec<pb::Vip>>);

    fn no_such_vip(key: &pb::VipKey) -> Status {
        Status::not_found(format!("vip {} does not exist", output::vip_label(key)))
    }

    impl FakeVips {
        /// Changes the VIP of `key` with `f`; the VIP as it is afterwards.
        fn update(
            &self,
            key: Option<pb::VipKey>,
            f: impl FnOnce(&mut pb::Vip),
        ) -> Result<pb::Vip, Status> {
            let key = key.unwrap_or_default();
            let mut vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            let vip = vips
                .iter_mut()
                .find(|v| v.key.as_ref() == Some(&key))
                .ok_or_else(|| no_such_vip(&key))?;
            f(vip);
            Ok(vip.clone())
        }
    }

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
                return Err(no_such_vip(&key));
            }
            Ok(Response::new(pb::RemoveVipResponse {}))
        }

        async fn set_vip_health(
            &self,
            req: Request<pb::SetVipHealthRequest>,
        ) -> Result<Response<pb::SetVipHealthResponse>, Status> {
            let req = req.into_inner();
            let vip = self.update(req.vip, |v| v.health = req.health)?;
            Ok(Response::new(pb::SetVipHealthResponse { vip: Some(vip) }))
        }

        async fn set_vip_mode(
            &self,
            req: Request<pb::SetVipModeRequest>,
        ) -> Result<Response<pb::SetVipModeResponse>, Status> {
            let req = req.into_inner();
            let vip = self.update(req.vip, |v| v.mode = req.mode)?;
            Ok(Response::new(pb::SetVipModeResponse { vip: Some(vip) }))
        }

        async fn list_vips(
            &self,
            _req: Request<pb::ListVipsRequest>,
        ) -> Result<Response<pb::ListVipsResponse>, Status> {
            let vips = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            Ok(Response::new(pb::ListVipsResponse { vips: vips.clone() }))
        }
    }

    async fn lbctl(socket: &Path, json: bool, command: Command) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        run(&command, &testlbd::globals(socket, json), &mut buf).await?;
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
        testlbd::serve(&socket, Routes::new(VipsServer::new(fake)));

        let added = lbctl(
            &socket,
            false,
            Command::Vip(Vip::Add {
                vip: VipKey {
                    addr: "10.0.0.11:53".parse().expect("addr"),
                    proto: Protocol::Udp,
                },
                mode: Mode::L2dsr,
                health: xdplb_model::health::HealthCheck::default(),
            }),
        )
        .await
        .expect("vip add");
        assert_eq!(added, "added vip 10.0.0.11:53/udp (mode l2dsr, id 2)\n");

        let human = lbctl(&socket, false, Command::Vip(Vip::List))
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
                    proto: Protocol::Udp,
                },
                health: xdplb_model::health::HealthCheck {
                    kind: xdplb_model::health::HealthKind::Udp {
                        payload: "ping".into(),
                    },
                    interval: Duration::from_millis(200),
                    timeout: Duration::from_millis(100),
                    all_down: xdplb_model::health::AllDown::Drop,
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

        let json = lbctl(&socket, true, Command::Vip(Vip::List))
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
            Command::Vip(Vip::SetMode {
                vip: VipKey {
                    addr: "10.0.0.10:80".parse().expect("addr"),
                    proto: Protocol::Tcp,
                },
                mode: Mode::Ipip,
            }),
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
            Command::Vip(Vip::SetMode {
                vip: VipKey {
                    addr: "10.0.0.10:80".parse().expect("addr"),
                    proto: Protocol::Tcp,
                },
                mode: Mode::Nat,
            }),
        )
        .await
        .expect("vip set-mode --json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
        assert_eq!(v["mode"], "nat");
        assert_eq!(v["backends"], 2);

        let missing = Command::Vip(Vip::Remove {
            vip: VipKey {
                addr: "10.0.0.1:80".parse().expect("addr"),
                proto: Protocol::Tcp,
            },
        });
        let err = lbctl(&socket, false, missing).await.expect_err("not found");
        assert_eq!(
            format!("{err:#}"),
            "not found: vip 10.0.0.1:80/tcp does not exist"
        );
    }
}
