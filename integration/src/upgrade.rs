//! Program upgrades: a second, genuinely different build of lbd, and what the kernel says is
//! attached.
//!
//! [`variant_lbd`] builds lbd with `XDPLB_BPF_VARIANT=1` (build.rs compiles the XDP program with
//! `-DLB_BUILD_VARIANT=1`, one more no-op instruction: another program tag, the same maps) into
//! a target directory of its own, `target/upgrade-variant`, so the normal `target/debug/lbd` is
//! never touched. The first build compiles every dependency once (minutes); later runs only
//! rebuild what changed. The build is bounded by [`VARIANT_BUILD_LIMIT`] and a failure is an
//! error, never a skip. [`link_program`] reads, through `bpftool`'s JSON, which program a pinned
//! XDP link runs, its tag and the maps it uses (by name and kernel id).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The variant number the upgrade test builds.
pub const VARIANT: u32 = 1;
/// The longest the variant build may take (a first build on a slow 2-CPU machine included).
pub const VARIANT_BUILD_LIMIT: Duration = Duration::from_secs(40 * 60);

static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The workspace root (the integration crate's parent directory).
fn workspace() -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .map_or(crate_dir.clone(), Path::to_path_buf)
}

/// Where the variant is built: `<target>/upgrade-variant`, next to the normal build.
pub fn variant_target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("upgrade-variant")
}

/// Builds (or brings up to date) the variant lbd and returns its path. Once per test process.
pub fn variant_lbd() -> Result<PathBuf> {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.as_ref() {
        return Ok(p.clone());
    }
    let target = variant_target_dir();
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let log_path = target.join("build.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let start = Instant::now();
    let mut child = Command::new(&cargo)
        .args(["build", "-p", "xdplb", "--bin", "lbd", "--target-dir"])
        .arg(&target)
        .env("XDPLB_BPF_VARIANT", VARIANT.to_string())
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    let status = wait_bounded(
        &mut child,
        start,
        &format!("the variant lbd (see {})", log_path.display()),
    )?;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        bail!("building the variant lbd failed ({status}):\n{output}");
    }
    let lbd = target.join("debug").join("lbd");
    if !lbd.is_file() {
        bail!(
            "the variant build finished but {} is missing",
            lbd.display()
        );
    }
    eprintln!(
        "variant lbd (XDPLB_BPF_VARIANT={VARIANT}) ready in {:?}: {}",
        start.elapsed(),
        lbd.display()
    );
    *built = Some(lbd.clone());
    Ok(lbd)
}

/// Waits for a build started at `start`, killing it after [`VARIANT_BUILD_LIMIT`].
fn wait_bounded(
    child: &mut std::process::Child,
    start: Instant,
    what: &str,
) -> Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().context("polling the build")? {
            return Ok(status);
        }
        if start.elapsed() > VARIANT_BUILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("building {what} took longer than {VARIANT_BUILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The commit of the previous release (the last with the v1 flow tables): the Makefile's
/// `PREVIOUS_RELEASE`.
pub const PREVIOUS_RELEASE: &str = "179c676";

/// lbd of the previous release, built by `scripts/build-previous.sh` (`make previous-release`)
/// into `<target>/previous-release/lbd`; built here if missing (minutes, bounded).
pub fn previous_lbd() -> Result<PathBuf> {
    let dir = variant_target_dir()
        .parent()
        .map(|t| t.join("previous-release"))
        .context("no target directory")?;
    let lbd = dir.join("lbd");
    let built = std::fs::read_to_string(dir.join("commit")).unwrap_or_default();
    if lbd.is_file() && built.trim() == PREVIOUS_RELEASE {
        return Ok(lbd);
    }
    let start = Instant::now();
    let mut child = Command::new("bash")
        .arg(workspace().join("scripts/build-previous.sh"))
        .arg(PREVIOUS_RELEASE)
        .arg(&dir)
        .stdin(Stdio::null())
        .spawn()
        .context("running scripts/build-previous.sh")?;
    let status = wait_bounded(&mut child, start, "the previous release's lbd")?;
    if !status.success() || !lbd.is_file() {
        bail!("building the previous release's lbd ({PREVIOUS_RELEASE}) failed: {status}");
    }
    Ok(lbd)
}

/// What a pinned XDP link runs, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProgram {
    /// The link's id (the same link across an update).
    pub link_id: u64,
    /// The id of the program the link runs.
    pub prog_id: u64,
    /// The program's tag (a hash of its instructions).
    pub tag: String,
    /// The maps the program uses, by name (read while it runs: the per-load internal maps,
    /// `.rodata` and friends, go away with it).
    pub maps: BTreeMap<String, u64>,
}

impl LinkProgram {
    /// The maps a new program must share with this one: every map but the per-load internal
    /// ones (names with a dot: `.rodata`, `.bss`).
    pub fn shared_maps(&self) -> BTreeMap<String, u64> {
        self.maps
            .iter()
            .filter(|(name, _)| !name.contains('.'))
            .map(|(n, id)| (n.clone(), *id))
            .collect()
    }
}

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running bpftool (apt package bpftool)")?;
    if !out.status.success() {
        bail!(
            "`bpftool -j {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`bpftool -j {}` printed no JSON", args.join(" ")))
}

/// Reads the link pinned at `pin` and the program it runs.
pub fn link_program(pin: &Path) -> Result<LinkProgram> {
    let pin_s = pin.to_string_lossy();
    let link = bpftool_json(&["link", "show", "pinned", &pin_s])?;
    let num = |v: &Value, key: &str| v[key].as_u64().with_context(|| format!("no {key} in {v}"));
    let link_id = num(&link, "id")?;
    let prog_id = num(&link, "prog_id")?;
    let prog = bpftool_json(&["prog", "show", "id", &prog_id.to_string()])?;
    let tag = prog["tag"]
        .as_str()
        .with_context(|| format!("no tag in {prog}"))?
        .to_string();
    let mut maps = BTreeMap::new();
    for id in prog["map_ids"]
        .as_array()
        .with_context(|| format!("no map_ids in {prog}"))?
        .iter()
        .filter_map(Value::as_u64)
    {
        let m = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        let name = m["name"]
            .as_str()
            .with_context(|| format!("no name in {m}"))?;
        maps.insert(name.to_string(), id);
    }
    Ok(LinkProgram {
        link_id,
        prog_id,
        tag,
        maps,
    })
}
