//! `lbctl man`: roff man pages generated from lbctl's own clap definitions (clap_mangen), so
//! the pages can never disagree with `--help`. One page for lbctl, or with `--dir` one more
//! per subcommand (`lbctl-vip-add.1`, ...), as packagers install them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::lowargs::LowArgs;

/// `source` and `manual` of every page (the centre and right of the header and footer).
const SOURCE: &str = concat!("xdplb ", env!("CARGO_PKG_VERSION"));
const MANUAL: &str = "xdplb manual";

fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd).source(SOURCE).manual(MANUAL)
}

/// The complete lbctl command, built (subcommand display names like `lbctl-vip-add` set).
fn lbctl_command() -> clap::Command {
    let mut cmd = LowArgs::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes lbctl.1 to `out`.
pub fn render(out: &mut dyn Write) -> anyhow::Result<()> {
    page(lbctl_command())
        .render(out)
        .context("cannot write the man page")
}

/// Writes lbctl.1 and one page per (visible) subcommand into `dir`; returns the files written.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let mut stack = vec![lbctl_command()];
    while let Some(cmd) = stack.pop() {
        stack.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let path = page(cmd)
            .generate_to(dir)
            .with_context(|| format!("cannot write a man page into {}", dir.display()))?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_page_lists_commands_and_global_options() {
        let mut buf = Vec::new();
        render(&mut buf).expect("render");
        let roff = String::from_utf8(buf).expect("utf-8");
        assert!(
            roff.starts_with(".ie \\n(.g .ds Aq \\(aq"),
            "{}",
            &roff[..80]
        );
        assert!(roff.contains(".TH lbctl 1"), "no title line");
        assert!(roff.contains("xdplb manual"));
        assert!(
            roff.contains("lbctl\\-vip(1)"),
            "vip is not listed as a subcommand"
        );
        assert!(roff.contains("\\-\\-socket"), "--socket is not documented");
        assert!(
            roff.contains("/run/xdplb/lbd.sock"),
            "the default socket is missing"
        );
    }

    #[test]
    fn dir_gets_one_page_per_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_all(dir.path()).expect("write");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for want in [
            "lbctl.1",
            "lbctl-vip-add.1",
            "lbctl-block-load.1",
            "lbctl-man.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let add = std::fs::read_to_string(dir.path().join("lbctl-vip-add.1")).expect("read");
        assert!(add.contains("\\-\\-health"), "vip add page lacks --health");
        assert!(
            add.contains("lbctl vip add 10.0.0.10:80 \\-\\-proto tcp"),
            "no examples"
        );
    }
}
