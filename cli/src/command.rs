//! The command tree, checked: one [`Command`] per lbctl command, built from `lowargs` with the
//! shared value parsers of `highargs` and each group's own (firewall, health, ratelimit, top).
//! Nothing else in lbctl depends on this module but `main`, which dispatches a [`Command`] to
//! its group.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use xdplb_model::firewall::Action as FwAction;

use crate::backend::Backend;
use crate::firewall::Firewall;
use crate::highargs::{
    backend_ref, first_repeat, invalid, parse_addr_port, parse_dsr_mode, parse_ifname, parse_ipv4,
    parse_mode, parse_weight, vip_flag, vip_positional, ArgError, Globals, Mode,
};
use crate::lowargs::{
    BackendAddArgs, BackendCommand, BackendSetupArgs, LowArgs, LowCommand, SetWeightArgs,
    VipCommand,
};
use crate::vip::Vip;

/// One fully validated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `vip add`, `remove`, `set-mode`, `list`.
    Vip(Vip),
    /// `backend add`, `remove`, `set-weight`, `list` (and `add-backend`, `remove-backend`).
    Backend(Backend),
    /// `block`, `allow` and `fw` commands.
    Firewall(crate::firewall::Firewall),
    /// `ratelimit` commands.
    RateLimit(crate::ratelimit::RateLimit),
    /// `vip set-health`, `backend drain`, `backend undrain`.
    Health(crate::health::HealthCommand),
    Stats,
    /// Runs locally (the xdplb-backend-setup binary), never talks to lbd.
    BackendSetup {
        vip: Ipv4Addr,
        /// L2Dsr or Ipip, never Nat.
        mode: Mode,
        dev: String,
        /// `--lb-source`: the outer sources the decap program accepts (ipip; none for l2dsr).
        lb_sources: Vec<Ipv4Net>,
        undo: bool,
    },
    /// `top`: live rates from a stream of snapshots.
    Top(crate::top::Top),
    /// `trace`: a live sample of packets with their verdicts.
    Trace(crate::trace::Trace),
    /// `explain`: what the data plane would do with one packet.
    Explain(crate::explain::Explain),
    /// `backend check`: lbd probes one backend of a VIP.
    Check(crate::check::Check),
    /// `apply -f FILE [--dry-run]`: the whole desired configuration.
    Apply(crate::apply::Apply),
    Completions(clap_complete::Shell),
    /// `man [--dir DIR]`: local, no lbd.
    Man(Option<std::path::PathBuf>),
}

/// Everything `lbctl` needs to run, all checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub globals: Globals,
    pub command: Command,
}

impl TryFrom<LowArgs> for Invocation {
    type Error = ArgError;

    fn try_from(low: LowArgs) -> Result<Self, ArgError> {
        Ok(Invocation {
            globals: Globals::try_from(&low)?,
            command: Command::try_from(low.command)?,
        })
    }
}

impl TryFrom<LowCommand> for Command {
    type Error = ArgError;

    fn try_from(low: LowCommand) -> Result<Self, ArgError> {
        Ok(match low {
            LowCommand::Vip(VipCommand::Add(args)) => Command::Vip(Vip::Add {
                vip: vip_positional(&args.vip)?,
                mode: parse_mode("--mode", &args.mode)?,
                health: crate::health::parse(&args.health, false)?,
            }),
            LowCommand::Vip(VipCommand::SetHealth(args)) => {
                Command::Health(crate::health::HealthCommand::SetHealth {
                    vip: vip_positional(&args.vip)?,
                    health: crate::health::parse(&args.health, true)?,
                })
            }
            LowCommand::Backend(BackendCommand::Drain(args)) => {
                let (vip, backend) = backend_ref(&args.target)?;
                let wait = crate::health::parse_wait(&args)?;
                Command::Health(crate::health::HealthCommand::Drain { vip, backend, wait })
            }
            LowCommand::Backend(BackendCommand::Undrain(args)) => {
                let (vip, backend) = backend_ref(&args)?;
                Command::Health(crate::health::HealthCommand::Undrain { vip, backend })
            }
            LowCommand::Vip(VipCommand::Remove(args)) => Command::Vip(Vip::Remove {
                vip: vip_positional(&args)?,
            }),
            LowCommand::Vip(VipCommand::SetMode(args)) => Command::Vip(Vip::SetMode {
                vip: vip_positional(&args.vip)?,
                mode: parse_mode("--mode", &args.mode)?,
            }),
            LowCommand::Vip(VipCommand::List) => Command::Vip(Vip::List),
            LowCommand::Backend(BackendCommand::Add(args)) | LowCommand::AddBackend(args) => {
                backend_add(&args)?
            }
            LowCommand::Backend(BackendCommand::Remove(args)) | LowCommand::RemoveBackend(args) => {
                let (vip, backend) = backend_ref(&args)?;
                Command::Backend(Backend::Remove { vip, backend })
            }
            LowCommand::Backend(BackendCommand::SetWeight(SetWeightArgs { target, weight })) => {
                let (vip, backend) = backend_ref(&target)?;
                Command::Backend(Backend::SetWeight {
                    vip,
                    backend,
                    weight: parse_weight("--weight", &weight)?,
                })
            }
            LowCommand::Backend(BackendCommand::List(args)) => Command::Backend(Backend::List {
                vip: vip_flag(&args)?,
            }),
            LowCommand::Block(c) => Command::Firewall(Firewall::rules(FwAction::Block, c)?),
            LowCommand::Allow(c) => Command::Firewall(Firewall::rules(FwAction::Allow, c)?),
            LowCommand::Fw(c) => Command::Firewall(Firewall::fw(c)?),
            LowCommand::RateLimit(c) => Command::RateLimit(c.try_into()?),
            LowCommand::Stats => Command::Stats,
            LowCommand::BackendSetup(args) => backend_setup(&args)?,
            LowCommand::Top(args) => Command::Top(args.try_into()?),
            LowCommand::Trace(args) => Command::Trace(args.try_into()?),
            LowCommand::Explain(args) => Command::Explain(args.try_into()?),
            LowCommand::Backend(BackendCommand::Check(args)) => {
                let (vip, backend) = backend_ref(&args)?;
                Command::Check(crate::check::Check { vip, backend })
            }
            LowCommand::Apply(args) => Command::Apply(args.into()),
            LowCommand::Completions { shell } => Command::Completions(shell),
            LowCommand::Man { dir } => Command::Man(dir),
        })
    }
}

fn backend_add(args: &BackendAddArgs) -> Result<Command, ArgError> {
    let vip = vip_flag(&args.vip)?;
    let weight = parse_weight("--weight", &args.weight)?;
    let backends = args
        .backends
        .iter()
        .map(|b| parse_addr_port("BACKEND", b))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dup) = first_repeat(&backends) {
        return Err(invalid("BACKEND", &dup.to_string(), "each backend once"));
    }
    Ok(match (backends.as_slice(), &args.file) {
        ([backend], None) => Command::Backend(Backend::Add {
            vip,
            backend: *backend,
            weight,
        }),
        _ => Command::Backend(Backend::AddMany {
            vip,
            backends,
            file: args.file.clone(),
            weight,
        }),
    })
}

fn backend_setup(args: &BackendSetupArgs) -> Result<Command, ArgError> {
    let vip = parse_ipv4("--vip", &args.vip)?;
    let mode = parse_dsr_mode("--mode", &args.mode)?;
    let dev = parse_ifname("--dev", &args.dev)?;
    let lb_sources = args
        .lb_source
        .iter()
        .map(|s| parse_lb_source(s))
        .collect::<Result<Vec<_>, _>>()?;
    match (mode, lb_sources.is_empty()) {
        (Mode::L2dsr, false) => {
            return Err(invalid(
                "--lb-source",
                &args.lb_source[0],
                "--mode ipip (L2 DSR has no tunnel whose source to check)",
            ))
        }
        // --undo removes all of the VIP's prefixes: it needs none.
        (Mode::Ipip, true) if !args.undo => {
            return Err(invalid(
                "--lb-source",
                "",
                "at least one with --mode ipip: the load balancers' [ipip] source prefixes \
                 (e.g. 10.0.1.1 or 10.0.1.0/28); the decap program takes IPIP only from them",
            ))
        }
        _ => {}
    }
    Ok(Command::BackendSetup {
        vip,
        mode,
        dev,
        lb_sources,
        undo: args.undo,
    })
}

/// An `--lb-source`: a prefix or address (a /32) without host bits, not 0.0.0.0/0.
fn parse_lb_source(s: &str) -> Result<Ipv4Net, ArgError> {
    match xdplb_model::cidr::parse_cidr(s) {
        Ok(p) if p.prefix_len() == 0 => Err(invalid(
            "--lb-source",
            s,
            "the load balancers' prefixes, not 0.0.0.0/0 (IPIP from anyone would bypass their \
             firewall and rate limits)",
        )),
        Ok(p) => Ok(p),
        Err(e) => Err(invalid("--lb-source", s, e.expected())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::highargs::*;
    use crate::pb;
    use clap::{CommandFactory, Parser};
    use std::net::SocketAddrV4;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A command line's words (none of the tests' arguments holds a space).
    fn words(line: &str) -> Vec<&str> {
        line.split(' ').collect()
    }

    fn parse(args: &[&str]) -> Result<Invocation, String> {
        let mut argv = vec!["lbctl"];
        argv.extend_from_slice(args);
        let low = LowArgs::try_parse_from(argv).map_err(|e| format!("clap: {e}"))?;
        Invocation::try_from(low).map_err(|e| e.to_string())
    }

    fn cmd(args: &[&str]) -> Command {
        match parse(args) {
            Ok(h) => h.command,
            Err(e) => panic!("{args:?} should parse: {e}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Ok(h) => panic!("{args:?} should fail, got {h:?}"),
            Err(e) => e,
        }
    }

    fn clap_err_kind(args: &[&str]) -> clap::error::ErrorKind {
        let mut argv = vec!["lbctl"];
        argv.extend_from_slice(args);
        match LowArgs::try_parse_from(argv) {
            Ok(low) => panic!("{args:?} should be a usage error, got {low:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "usage errors exit 2");
                e.kind()
            }
        }
    }

    fn vip(s: &str, proto: Protocol) -> VipKey {
        VipKey {
            addr: s.parse().expect("test address"),
            proto,
        }
    }

    #[test]
    fn clap_tree_is_consistent() {
        LowArgs::command().debug_assert();
    }

    #[test]
    fn vip_add_defaults_to_nat() {
        assert_eq!(
            cmd(&["vip", "add", "10.0.0.10:80", "--proto", "tcp"]),
            Command::Vip(Vip::Add {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                mode: Mode::Nat,
                health: xdplb_model::health::HealthCheck::default(),
            })
        );
    }

    #[test]
    fn health_flags_drain_and_undrain() {
        use crate::health::HealthCommand;
        use std::time::Duration;
        use xdplb_model::health::{AllDown, HealthCheck, HealthKind};
        match cmd(&words("vip add 10.0.0.10:80 --proto tcp --health http:/healthz --health-interval 200ms --health-timeout 100ms --rise 1 --fall 2 --all-down drop")) {
            Command::Vip(Vip::Add { health, .. }) => assert_eq!(
                health,
                HealthCheck {
                    kind: HealthKind::Http {
                        path: "/healthz".into(),
                        expect_status: 200
                    },
                    interval: Duration::from_millis(200),
                    timeout: Duration::from_millis(100),
                    rise: 1,
                    fall: 2,
                    all_down: AllDown::Drop,
                }
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            cmd(&words(
                "vip set-health 10.0.0.10:53 --proto udp --health udp"
            )),
            Command::Health(HealthCommand::SetHealth {
                vip: vip("10.0.0.10:53", Protocol::Udp),
                health: HealthCheck {
                    kind: HealthKind::Udp {
                        payload: "ping".into()
                    },
                    ..HealthCheck::default()
                },
            })
        );
        assert!(err(&["vip", "set-health", "10.0.0.10:53", "--proto", "udp"]).contains("--health"));
        assert!(err(&words(
            "vip add 10.0.0.10:80 --proto tcp --health tcp --fall 0"
        ))
        .contains("--fall '0'"));
        let be: SocketAddrV4 = "10.0.2.1:8080".parse().expect("addr");
        assert_eq!(
            cmd(&words(
                "backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080"
            )),
            Command::Health(HealthCommand::Drain {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backend: be,
                wait: None,
            })
        );
        assert_eq!(
            cmd(&words(
                "backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080 --wait"
            )),
            Command::Health(HealthCommand::Drain {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backend: be,
                wait: Some(crate::health::DrainWait { limit: None }),
            })
        );
        assert_eq!(
            cmd(&words(
                "backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080 --wait --wait-timeout 2m"
            )),
            Command::Health(HealthCommand::Drain {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backend: be,
                wait: Some(crate::health::DrainWait {
                    limit: Some(Duration::from_secs(120))
                }),
            })
        );
        assert!(err(&words(
            "backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080 --wait --wait-timeout soon"
        ))
        .contains("--wait-timeout 'soon'"));
        // --wait-timeout without --wait is a clap usage error.
        assert!(err(&words(
            "backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080 --wait-timeout 1m"
        ))
        .contains("--wait"));
        assert_eq!(
            cmd(&words(
                "backend undrain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080"
            )),
            Command::Health(HealthCommand::Undrain {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backend: be
            })
        );
    }

    #[test]
    fn proto_and_mode_are_case_insensitive() {
        for (mode, want) in [
            ("nat", Mode::Nat),
            ("L2DSR", Mode::L2dsr),
            ("IpIp", Mode::Ipip),
        ] {
            assert_eq!(
                cmd(&[
                    "vip",
                    "add",
                    "10.0.0.10:53",
                    "--proto",
                    "UDP",
                    "--mode",
                    mode
                ]),
                Command::Vip(Vip::Add {
                    vip: vip("10.0.0.10:53", Protocol::Udp),
                    mode: want,
                    health: xdplb_model::health::HealthCheck::default(),
                })
            );
        }
        assert_eq!(
            cmd(&["vip", "remove", "10.0.0.10:80", "--proto", "Tcp"]),
            Command::Vip(Vip::Remove {
                vip: vip("10.0.0.10:80", Protocol::Tcp)
            })
        );
    }

    #[test]
    fn bad_proto_and_mode() {
        for (line, want) in [
            (
                "vip add 10.0.0.10:80 --proto sctp",
                "invalid --proto 'sctp': expected tcp or udp",
            ),
            (
                "vip add 10.0.0.10:80 --proto tcp --mode dsr",
                "invalid --mode 'dsr': expected nat, l2dsr or ipip",
            ),
        ] {
            assert_eq!(err(&words(line)), want, "{line}");
        }
    }

    #[test]
    fn good_addr_port() {
        for (s, want) in [
            (
                "10.0.0.1:80",
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
            ),
            ("0.0.0.0:1", SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1)),
            (
                "255.255.255.255:65535",
                SocketAddrV4::new(Ipv4Addr::BROADCAST, 65535),
            ),
        ] {
            assert_eq!(parse_addr_port("--vip", s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_addr_port() {
        for s in [
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:-1",
            "10.0.0.1:http",
            "10.0.0.300:80",
            "10.0.0:80",
            "lb.example.com:80",
            "[::1]:80",
            "::1:80",
            ":80",
            "",
        ] {
            let e = parse_addr_port("--vip", s).expect_err(s);
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid --vip '{s}': expected ADDR:PORT")),
                "{s}: {e}"
            );
        }
        for (line, want) in [
            (
                "backend list --vip 10.0.0.1 --proto tcp",
                "invalid --vip '10.0.0.1': expected ADDR:PORT",
            ),
            (
                "vip add 10.0.0.1:0 --proto tcp",
                "invalid VIP '10.0.0.1:0': expected ADDR:PORT with PORT in 1..65535",
            ),
            (
                "backend add --vip 10.0.0.1:80 --proto tcp 10.0.2.1",
                "invalid BACKEND '10.0.2.1': expected ADDR:PORT",
            ),
        ] {
            assert_eq!(err(&words(line)), want, "{line}");
        }
        assert!(err(&["vip", "add", "[::1]:80", "--proto", "tcp"]).contains("IPv6"));
    }

    /// `NEW-backend TAIL` (the old name) and `backend NEW TAIL` parse to `want`.
    fn same_command(new: &str, tail: &[&str], want: Command) -> Command {
        let old = format!("{new}-backend");
        let a = cmd(&[&[old.as_str()][..], tail].concat());
        let b = cmd(&[&["backend", new][..], tail].concat());
        assert_eq!(a, b);
        assert_eq!(a, want);
        a
    }

    #[test]
    fn add_backend_and_backend_add_are_the_same_command() {
        let a = same_command(
            "add",
            &["--vip", "10.0.0.10:80", "--proto", "tcp", "10.0.2.1:8080"],
            Command::Backend(Backend::Add {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backend: "10.0.2.1:8080".parse().expect("test address"),
                weight: 100,
            }),
        );
        // Flags may come after the positional, too.
        let c = cmd(&words(
            "backend add 10.0.2.1:8080 --proto TCP --vip 10.0.0.10:80 --weight 100",
        ));
        assert_eq!(a, c);
    }

    #[test]
    fn several_backends_or_a_file_make_one_batch() {
        let base = ["backend", "add", "--vip", "10.0.0.10:80", "--proto", "tcp"];
        let b = |s: &str| -> SocketAddrV4 { s.parse().expect("test address") };
        assert_eq!(
            cmd(&[&base[..], &["10.0.2.1:80", "10.0.2.2:80", "--weight", "7"]].concat()),
            Command::Backend(Backend::AddMany {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backends: vec![b("10.0.2.1:80"), b("10.0.2.2:80")],
                file: None,
                weight: 7,
            })
        );
        assert_eq!(
            cmd(&[&base[..], &["--file", "list.txt"]].concat()),
            Command::Backend(Backend::AddMany {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backends: vec![],
                file: Some(PathBuf::from("list.txt")),
                weight: 100,
            })
        );
        // A bad one among several refuses the command before any RPC.
        assert_eq!(
            err(&[&base[..], &["10.0.2.1:80", "10.0.2.2"]].concat()),
            "invalid BACKEND '10.0.2.2': expected ADDR:PORT"
        );
        assert_eq!(
            err(&[&base[..], &["10.0.2.1:80", "10.0.2.1:80"]].concat()),
            "invalid BACKEND '10.0.2.1:80': expected each backend once"
        );
    }

    #[test]
    fn backend_lists_parse_line_by_line() {
        let text = "# web tier\n10.0.2.1:80\n\n  10.0.2.2:80 50  # half\n10.0.2.3:80 0\n";
        assert_eq!(
            parse_backend_list(text, 100).expect("valid list"),
            vec![
                ("10.0.2.1:80".parse().expect("addr"), 100),
                ("10.0.2.2:80".parse().expect("addr"), 50),
                ("10.0.2.3:80".parse().expect("addr"), 0),
            ]
        );
        let line_err = |text: &str| {
            let (line, e) = parse_backend_list(text, 100).expect_err("invalid list");
            format!("{line}: {e}")
        };
        assert_eq!(
            line_err("10.0.2.1:80\n10.0.2.2\n"),
            "2: invalid BACKEND '10.0.2.2': expected ADDR:PORT"
        );
        assert_eq!(
            line_err("10.0.2.1:80 -5\n"),
            "1: invalid WEIGHT '-5': expected an integer in 0..4294967295"
        );
        assert_eq!(
            line_err("\n\n10.0.2.1:80 5 6\n"),
            "3: invalid line '10.0.2.1:80 5 6': expected ADDR:PORT [WEIGHT]"
        );
        assert_eq!(parse_backend_list("# nothing\n", 100), Ok(vec![]));
    }

    #[test]
    fn remove_backend_and_backend_remove_are_the_same_command() {
        same_command(
            "remove",
            &["--vip", "10.0.0.10:53", "--proto", "udp", "10.0.2.1:53"],
            Command::Backend(Backend::Remove {
                vip: vip("10.0.0.10:53", Protocol::Udp),
                backend: "10.0.2.1:53".parse().expect("test address"),
            }),
        );
    }

    #[test]
    fn weights() {
        let base = ["backend", "add", "--vip", "10.0.0.10:80", "--proto", "tcp"];
        let weight_of = |extra: &[&str]| match cmd(&[&base[..], &["10.0.2.1:80"], extra].concat()) {
            Command::Backend(Backend::Add { weight, .. }) => weight,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(weight_of(&[]), 100);
        assert_eq!(weight_of(&["--weight", "0"]), 0);
        assert_eq!(weight_of(&["--weight", "4294967295"]), u32::MAX);
        for bad in ["-1", "abc", "4294967296", "1.5", ""] {
            let arg = format!("--weight={bad}");
            let e = err(&[&base[..], &["10.0.2.1:80", arg.as_str()]].concat());
            assert_eq!(
                e,
                format!("invalid --weight '{bad}': expected an integer in 0..4294967295")
            );
        }
        assert_eq!(
            cmd(&words(
                "backend set-weight --vip 10.0.0.10:80 --proto tcp 10.0.2.1:80 --weight 0"
            )),
            Command::Backend(Backend::SetWeight {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                backend: "10.0.2.1:80".parse().expect("test address"),
                weight: 0,
            })
        );
    }

    #[test]
    fn usage_errors_come_from_clap() {
        use clap::error::ErrorKind;
        // --proto is required everywhere a VIP is named.
        assert_eq!(
            clap_err_kind(&["vip", "add", "10.0.0.10:80"]),
            ErrorKind::MissingRequiredArgument
        );
        // set-weight needs an explicit --weight.
        assert_eq!(
            clap_err_kind(&words(
                "backend set-weight --vip 10.0.0.10:80 --proto tcp 10.0.2.1:80"
            )),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            clap_err_kind(&["vip", "frobnicate"]),
            ErrorKind::InvalidSubcommand
        );
    }

    #[test]
    fn globals_anywhere_and_addr_overrides_socket() {
        let h = parse(&["vip", "list", "--json", "--addr", "127.0.0.1:50051"]).expect("parses");
        assert!(h.globals.json);
        assert_eq!(
            h.globals.target,
            Target::Tcp("http://127.0.0.1:50051".into())
        );
        let h = parse(&["--socket", "/tmp/x.sock", "--timeout", "250ms", "stats"]).expect("parses");
        assert_eq!(h.command, Command::Stats);
        assert_eq!(h.globals.timeout, Duration::from_millis(250));
        if std::env::var_os("LBCTL_ADDR").is_none() {
            assert_eq!(h.globals.target, Target::Unix("/tmp/x.sock".into()));
        }
        assert_eq!(
            err(&["--timeout", "0s", "stats"]),
            "invalid --timeout '0s': expected a positive duration like 5s, 500ms or 1m"
        );
        assert!(err(&["--addr", "https://lb:50051", "stats"]).starts_with("invalid --addr"));
    }

    #[test]
    fn tls_flags() {
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("LBCTL_")) {
            return; // the environment would mix in
        }
        let h = parse(&words("--addr https://lb.example:50051 --tls-ca /ca.pem --tls-cert /c.pem --tls-key /k.pem stats"))
        .expect("parses");
        assert_eq!(
            h.globals.target,
            Target::Tls {
                url: "https://lb.example:50051".into(),
                tls: TlsFiles {
                    ca: "/ca.pem".into(),
                    identity: Some(("/c.pem".into(), "/k.pem".into())),
                },
            }
        );
        // A bare address with --tls-ca is https.
        let h =
            parse(&["--addr", "10.0.0.1:50051", "--tls-ca", "/ca.pem", "stats"]).expect("parses");
        assert_eq!(
            h.globals.target,
            Target::Tls {
                url: "https://10.0.0.1:50051".into(),
                tls: TlsFiles {
                    ca: "/ca.pem".into(),
                    identity: None
                },
            }
        );
        assert_eq!(
            err(&words("--addr 10.0.0.1:1 --tls-ca /ca --tls-cert /c stats")),
            "invalid --tls-cert '/c': expected --tls-key with it"
        );
        assert!(err(&["--tls-ca", "/ca", "stats"]).contains("the Unix socket never uses TLS"));
        assert!(
            err(&words("--addr 10.0.0.1:1 --tls-cert /c --tls-key /k stats"))
                .contains("expected --tls-ca too")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("t", "7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("t", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("t", "10ms"), Ok(Duration::from_millis(10)));
        for bad in ["", "s", "5h", "-1s", "1.5s", "0"] {
            assert!(parse_duration("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vip_set_mode() {
        assert_eq!(
            cmd(&words("vip set-mode 10.0.0.10:80 --proto tcp --mode IPIP")),
            Command::Vip(Vip::SetMode {
                vip: vip("10.0.0.10:80", Protocol::Tcp),
                mode: Mode::Ipip
            })
        );
        assert_eq!(
            err(&words("vip set-mode 10.0.0.10:80 --proto tcp --mode dsr")),
            "invalid --mode 'dsr': expected nat, l2dsr or ipip"
        );
        // --mode has no default here: switching needs an explicit target.
        assert_eq!(
            clap_err_kind(&["vip", "set-mode", "10.0.0.10:80", "--proto", "tcp"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn backend_setup() {
        use Mode as Dsr;
        assert_eq!(
            cmd(&words(
                "backend-setup --vip 10.0.0.10 --mode l2dsr --dev eth0"
            )),
            Command::BackendSetup {
                vip: Ipv4Addr::new(10, 0, 0, 10),
                mode: Dsr::L2dsr,
                dev: "eth0".into(),
                lb_sources: vec![],
                undo: false,
            }
        );
        // --undo needs no --lb-source (it removes all of the VIP's).
        assert_eq!(
            cmd(&words(
                "backend-setup --undo --dev ens3f0.100 --mode IpIp --vip 10.0.0.10"
            )),
            Command::BackendSetup {
                vip: Ipv4Addr::new(10, 0, 0, 10),
                mode: Dsr::Ipip,
                dev: "ens3f0.100".into(),
                lb_sources: vec![],
                undo: true,
            }
        );
        // A bare address is a /32; repeatable.
        assert_eq!(
            cmd(&words(
                "backend-setup --vip 10.0.0.10 --mode ipip --dev eth0 --lb-source 10.0.1.1 --lb-source 10.0.2.0/28"
            )),
            Command::BackendSetup {
                vip: Ipv4Addr::new(10, 0, 0, 10),
                mode: Dsr::Ipip,
                dev: "eth0".into(),
                lb_sources: vec![
                    "10.0.1.1/32".parse().expect("prefix"),
                    "10.0.2.0/28".parse().expect("prefix")
                ],
                undo: false,
            }
        );
        let ipip = |extra: &[&'static str]| {
            let mut argv = words("backend-setup --vip 10.0.0.10 --mode ipip --dev eth0");
            argv.extend_from_slice(extra);
            err(&argv)
        };
        assert_eq!(
            ipip(&[]),
            "invalid --lb-source '': expected at least one with --mode ipip: the load balancers' \
             [ipip] source prefixes (e.g. 10.0.1.1 or 10.0.1.0/28); the decap program takes IPIP \
             only from them"
        );
        for (bad, want) in [
            (
                "10.0.1.1/24",
                "invalid --lb-source '10.0.1.1/24': expected a prefix without host bits set (did you mean 10.0.1.0/24?)",
            ),
            (
                "10.0.1",
                "invalid --lb-source '10.0.1': expected an IPv4 prefix A.B.C.D/LEN or an address A.B.C.D",
            ),
            (
                "10.0.1.0/33",
                "invalid --lb-source '10.0.1.0/33': expected an IPv4 prefix with a length of 0..32",
            ),
            (
                "0.0.0.0/0",
                "invalid --lb-source '0.0.0.0/0': expected the load balancers' prefixes, not \
                 0.0.0.0/0 (IPIP from anyone would bypass their firewall and rate limits)",
            ),
        ] {
            // One bad prefix among good ones is enough to refuse the command.
            assert_eq!(ipip(&["--lb-source", "10.0.9.1", "--lb-source", bad]), want, "{bad}");
        }
        assert_eq!(
            err(&words(
                "backend-setup --vip 10.0.0.10 --mode l2dsr --dev eth0 --lb-source 10.0.1.1"
            )),
            "invalid --lb-source '10.0.1.1': expected --mode ipip (L2 DSR has no tunnel whose \
             source to check)"
        );
        let base = |vip: &'static str, mode: &'static str, dev: &'static str| {
            err(&[
                "backend-setup",
                "--vip",
                vip,
                "--mode",
                mode,
                "--dev",
                dev,
                "--lb-source",
                "10.0.1.1",
            ])
        };
        for (vip, mode, want) in [
            (
                "10.0.0.10:80",
                "ipip",
                "invalid --vip '10.0.0.10:80': expected an IPv4 address without a port, like 10.0.0.10",
            ),
            (
                "10.0.0",
                "ipip",
                "invalid --vip '10.0.0': expected an IPv4 address like 10.0.0.10",
            ),
            (
                "10.0.0.10",
                "nat",
                "invalid --mode 'nat': expected l2dsr or ipip (a NAT backend needs no preparation)",
            ),
            (
                "10.0.0.10",
                "dsr",
                "invalid --mode 'dsr': expected l2dsr or ipip",
            ),
        ] {
            assert_eq!(base(vip, mode, "eth0"), want, "--vip {vip} --mode {mode}");
        }
        for dev in ["", "a/b", "..", "eth0:1", "sixteen-bytes-xx", "e th0"] {
            assert_eq!(
                base("10.0.0.10", "ipip", dev),
                format!(
                    "invalid --dev '{dev}': expected an interface name (1-15 bytes, no '/', ':' or spaces)"
                )
            );
        }
        assert!(base("10.0.0.10", "l2dsr", "lo")
            .starts_with("invalid --dev 'lo': expected the interface"));
        assert_eq!(
            clap_err_kind(&["backend-setup", "--vip", "10.0.0.10", "--mode", "ipip"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn pb_mapping() {
        let k = pb::VipKey::from(&vip("10.0.0.10:80", Protocol::Udp));
        assert_eq!(k.address, "10.0.0.10");
        assert_eq!(k.port, 80);
        assert_eq!(k.protocol(), pb::Protocol::Udp);
        assert_eq!(
            pb::ForwardingMode::from(Mode::L2dsr),
            pb::ForwardingMode::L2dsr
        );
        assert_eq!(
            pb::ForwardingMode::from(Mode::Ipip),
            pb::ForwardingMode::Ipip
        );
        assert_eq!(pb::ForwardingMode::from(Mode::Nat), pb::ForwardingMode::Nat);
        assert_eq!(
            vip("10.0.0.10:80", Protocol::Tcp).to_string(),
            "10.0.0.10:80/tcp"
        );
    }
}
