//! `lbctl backend-setup`: prepares this host as a DSR backend of a VIP by running the
//! `xdplb-backend-setup` binary (crate `xdplb-backend`, which holds the decap program), so that
//! lbctl itself links no BPF code. Local only: no lbd is involved.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use crate::command::Command;

/// The binary that does the work; `make dist` installs it next to lbctl.
pub const BINARY: &str = "xdplb-backend-setup";

/// The arguments of [`BINARY`] for `cmd` (a [`Command::BackendSetup`]): the same flags.
pub fn args(cmd: &Command, json: bool) -> Vec<OsString> {
    let Command::BackendSetup {
        vip,
        mode,
        dev,
        lb_sources,
        undo,
    } = cmd
    else {
        return Vec::new();
    };
    let mut args: Vec<OsString> = vec![
        "--vip".into(),
        vip.to_string().into(),
        "--mode".into(),
        mode.to_string().into(),
        "--dev".into(),
        dev.into(),
    ];
    for p in lb_sources {
        args.push("--lb-source".into());
        args.push(p.to_string().into());
    }
    args.extend(undo.then(|| "--undo".into()));
    args.extend(json.then(|| "--json".into()));
    args
}

/// Where to run [`BINARY`] from: next to lbctl's own executable if it is there, else its bare
/// name (looked up on PATH).
pub fn locate(lbctl: Option<&Path>) -> PathBuf {
    lbctl
        .and_then(Path::parent)
        .map(|dir| dir.join(BINARY))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(BINARY))
}

/// Replaces lbctl with [`BINARY`] (argv[0] `lbctl`, so its messages read as lbctl's): its
/// output, errors and exit status are lbctl's. Returns only when it cannot be run.
pub fn exec(cmd: &Command, json: bool) -> anyhow::Error {
    let lbctl = std::env::current_exe().ok();
    let bin = locate(lbctl.as_deref());
    let err = std::process::Command::new(&bin)
        .arg0("lbctl")
        .args(args(cmd, json))
        .exec();
    let beside = lbctl
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "lbctl's directory".into());
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!(
            "backend-setup runs {BINARY}, which is neither next to lbctl (in {beside}) nor on \
             PATH: install it with lbctl (make dist ships both) or build it (cargo build -p \
             xdplb-backend)"
        )
    } else {
        anyhow::Error::new(err).context(format!("cannot run {}", bin.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::highargs::Mode;

    #[test]
    fn flags_pass_through() {
        for (mode, dev, sources, undo, json, want) in [
            (
                Mode::Ipip,
                "eth0",
                &["10.0.1.1/32", "10.0.2.0/28"][..],
                true,
                true,
                "--vip 10.0.0.10 --mode ipip --dev eth0 --lb-source 10.0.1.1/32 --lb-source 10.0.2.0/28 --undo --json",
            ),
            (
                Mode::L2dsr,
                "eth1",
                &[],
                false,
                false,
                "--vip 10.0.0.10 --mode l2dsr --dev eth1",
            ),
        ] {
            let cmd = Command::BackendSetup {
                vip: "10.0.0.10".parse().expect("ip"),
                mode,
                dev: dev.into(),
                lb_sources: sources.iter().map(|s| s.parse().expect("prefix")).collect(),
                undo,
            };
            let want: Vec<OsString> = want.split(' ').map(OsString::from).collect();
            assert_eq!(args(&cmd, json), want);
        }
    }

    #[test]
    fn next_to_lbctl_first_then_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lbctl = dir.path().join("lbctl");
        assert_eq!(locate(Some(&lbctl)), PathBuf::from(BINARY));
        assert_eq!(locate(None), PathBuf::from(BINARY));
        std::fs::write(dir.path().join(BINARY), "").expect("write");
        assert_eq!(locate(Some(&lbctl)), dir.path().join(BINARY));
    }
}
