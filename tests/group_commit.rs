//! Group commit (`Controller::change`): concurrent changes share one reconcile and one save,
//! and "acknowledged" still means "on disk". Through lbd's real gRPC services in process, in
//! front of a real controller, reconciler and loaded XDP program, with the state saved to a
//! real state store (on the disk of the build's temporary directory, so every save is a real
//! flush; a tiny tmpfs where the disk must fill up).
//!
//! - 16 concurrent writers: every acknowledged add is in the store when its answer arrives
//!   (read back by a fresh `StateStore` right then), all of them after the run, and the store
//!   took fewer saves than there were changes (one per group).
//! - A change refused inside a group (a backend that already exists) fails alone: the others
//!   of its group are kept.
//! - A save that fails (ENOSPC) fails every change of its group with `Unavailable`: none is
//!   kept, in the state or in the maps (ids), and changes after the disk has room again are.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tonic::Code;

use xdplb::persist::StateStore;
use xdplb_model::state::{Protocol, VipKey};
use xdplb_proto::pb;
use xdplb_proto::pb::{backends_client::BackendsClient, vips_client::VipsClient};
use xdplb_testkit::grpc::unix_channel;
use xdplb_testkit::netns::NetNs;

use common::served::Served;

const WRITERS: usize = 16;
const VIP: &str = "10.0.0.1:80";

fn pb_vip() -> pb::VipKey {
    pb::VipKey {
        address: "10.0.0.1".into(),
        port: 80,
        protocol: pb::Protocol::Tcp as i32,
    }
}

fn vip_key() -> VipKey {
    VipKey {
        addr: VIP.parse().unwrap(),
        proto: Protocol::Tcp,
    }
}

/// Backend `n` (distinct for n < 65,536).
fn backend(n: usize) -> SocketAddrV4 {
    SocketAddrV4::new([10, 1, (n / 250) as u8, (n % 250) as u8 + 1].into(), 8080)
}

fn add_request(addr: SocketAddrV4) -> pb::AddBackendRequest {
    pb::AddBackendRequest {
        vip: Some(pb_vip()),
        backend: Some(pb::Backend {
            address: addr.ip().to_string(),
            port: u32::from(addr.port()),
            weight: Some(100),
            ..Default::default()
        }),
    }
}

async fn add_vip(socket: &Path) -> Result<()> {
    let mut vips = VipsClient::new(unix_channel(socket).await?);
    vips.add_vip(pb::AddVipRequest {
        vip: Some(pb_vip()),
        mode: pb::ForwardingMode::Nat as i32,
        health: None,
    })
    .await
    .context("AddVip")?;
    Ok(())
}

/// The backends of the VIP as ListBackends shows them, with whether each has a data-plane id.
async fn listed(socket: &Path) -> Result<Vec<(SocketAddrV4, u32)>> {
    let mut c = BackendsClient::new(unix_channel(socket).await?);
    let list = c
        .list_backends(pb::ListBackendsRequest {
            vip: Some(pb_vip()),
        })
        .await?
        .into_inner();
    list.backends
        .iter()
        .map(|b| Ok((format!("{}:{}", b.address, b.port).parse()?, b.id)))
        .collect()
}

/// The backends of the VIP that a fresh store reads from `dir` (what a restarted lbd gets).
fn on_disk(dir: &Path) -> Result<BTreeSet<SocketAddrV4>> {
    let file = StateStore::new(dir)
        .load()
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", dir.display()))?
        .context("no state file")?;
    Ok(file
        .state
        .vips
        .get(&vip_key())
        .map(|v| v.backends.keys().copied().collect())
        .unwrap_or_default())
}

/// Records in the store's journal: one per save since the last compaction.
fn journal_records(dir: &Path) -> usize {
    std::fs::read(StateStore::new(dir).journal_path())
        .map(|t| t.iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0)
}

/// A state directory on the build's disk (a real flush per save), removed on drop.
fn disk_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?)
}

/// Writer `w` adds its `per` backends one AddBackend at a time on a connection of its own;
/// after every `check_every`-th answer it reads the store back and requires its backend there.
async fn writer(
    socket: PathBuf,
    dir: PathBuf,
    w: usize,
    per: usize,
    check_every: usize,
) -> Result<Vec<SocketAddrV4>> {
    let mut c = BackendsClient::new(unix_channel(&socket).await?);
    let mut acked = Vec::with_capacity(per);
    for i in 0..per {
        let addr = backend(w * per + i);
        c.add_backend(add_request(addr))
            .await
            .with_context(|| format!("writer {w}: AddBackend {addr}"))?;
        acked.push(addr);
        if i % check_every == 0 {
            let saved = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || on_disk(&dir)
            })
            .await??;
            ensure!(
                saved.contains(&addr),
                "writer {w}: {addr} was acknowledged but a fresh read of the store does not \
                 have it (acknowledged before it was saved)"
            );
        }
    }
    Ok(acked)
}

#[test]
fn concurrent_writers_share_saves_and_every_acknowledged_change_is_on_disk() -> Result<()> {
    NetNs::within("groupcommit", |_ns| {
        let dir = disk_dir()?;
        let api = Served::start_with(Some(StateStore::new(dir.path())), 2)?;
        let socket = api.socket.clone();
        let per = 12;
        let result = api.rt.block_on(async {
            add_vip(&socket).await?;
            let before = journal_records(dir.path());
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| tokio::spawn(writer(socket.clone(), dir.path().to_owned(), w, per, 3)))
                .collect();
            let mut acked = BTreeSet::new();
            for t in tasks {
                acked.extend(tokio::time::timeout(Duration::from_secs(120), t).await???);
            }
            let elapsed = started.elapsed();
            let saves = journal_records(dir.path()) - before;
            let changes = WRITERS * per;
            eprintln!(
                "{changes} acknowledged adds from {WRITERS} writers in {elapsed:?}: {saves} saves \
                 ({:.1} changes per save)",
                changes as f64 / saves.max(1) as f64
            );
            ensure!(acked.len() == changes, "{} acknowledged", acked.len());
            let listed: BTreeSet<_> = listed(&socket).await?.into_iter().map(|(a, _)| a).collect();
            ensure!(
                listed == acked,
                "listed backends differ from the acknowledged ones"
            );
            ensure!(
                on_disk(dir.path())? == acked,
                "the store does not hold exactly the acknowledged backends"
            );
            ensure!(
                saves < changes,
                "{saves} saves for {changes} concurrent changes: no change shared a save"
            );
            Ok(())
        });
        api.stop();
        result
    })
}

#[test]
fn a_change_refused_inside_a_group_fails_alone() -> Result<()> {
    NetNs::within("groupcommit", |_ns| {
        let dir = disk_dir()?;
        let api = Served::start_with(Some(StateStore::new(dir.path())), 2)?;
        let socket = api.socket.clone();
        let result = api.rt.block_on(async {
            add_vip(&socket).await?;
            // Even writers add a backend the VIP already has: AlreadyExists, for them alone.
            let mut c = BackendsClient::new(unix_channel(&socket).await?);
            c.add_backend(add_request(backend(0))).await?;
            let rounds = 8;
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let mut c = BackendsClient::new(unix_channel(&socket).await?);
                        let mut codes = Vec::new();
                        for r in 0..rounds {
                            let addr = if w % 2 == 0 {
                                backend(0)
                            } else {
                                backend(1 + w * rounds + r)
                            };
                            let code = match c.add_backend(add_request(addr)).await {
                                Ok(_) => Code::Ok,
                                Err(s) => s.code(),
                            };
                            codes.push((addr, code));
                        }
                        anyhow::Ok(codes)
                    })
                })
                .collect();
            let mut kept = BTreeSet::from([backend(0)]);
            for t in tasks {
                for (addr, code) in tokio::time::timeout(Duration::from_secs(60), t).await??? {
                    if addr == backend(0) {
                        ensure!(code == Code::AlreadyExists, "duplicate {addr}: {code:?}");
                    } else {
                        ensure!(code == Code::Ok, "{addr}: {code:?}");
                        kept.insert(addr);
                    }
                }
            }
            let listed: BTreeSet<_> = listed(&socket).await?.into_iter().map(|(a, _)| a).collect();
            ensure!(listed == kept, "listed {listed:?}, want {kept:?}");
            ensure!(
                on_disk(dir.path())? == kept,
                "the store differs from what was kept"
            );
            Ok(())
        });
        api.stop();
        result
    })
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted and removed on drop.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()?;
        ensure!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `path` until a write fails with ENOSPC.
fn fill(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0xa5u8; 4096];
    for _ in 0..1_000_000 {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            ensure!(e.raw_os_error() == Some(libc::ENOSPC), "filling: {e}");
            return Ok(());
        }
    }
    anyhow::bail!("{} never filled up", path.display())
}

#[test]
fn a_failed_save_fails_its_whole_group_and_keeps_nothing() -> Result<()> {
    NetNs::within("groupcommit", |_ns| {
        let fs = TinyFs::mount("512k")?;
        let state_dir = fs.path().join("state");
        let api = Served::start_with(Some(StateStore::new(&state_dir)), 2)?;
        let socket = api.socket.clone();
        let filler = fs.path().join("filler");
        let result = api.rt.block_on(async {
            add_vip(&socket).await?;
            let mut c = BackendsClient::new(unix_channel(&socket).await?);
            c.add_backend(add_request(backend(0))).await?;
            fill(&filler)?;
            // The journal's last page may still have room for a record or two: add until a
            // save fails, so that the disk is full for the journal too.
            let mut kept = BTreeSet::from([backend(0)]);
            let mut full = false;
            for n in 100..164 {
                match c.add_backend(add_request(backend(n))).await {
                    Ok(_) => {
                        kept.insert(backend(n));
                    }
                    Err(s) if s.code() == Code::Unavailable => {
                        full = true;
                        break;
                    }
                    Err(s) => return Err(s.into()),
                }
            }
            ensure!(full, "64 saves fitted in a full file system");
            let before = listed(&socket).await?;
            let tasks: Vec<_> = (1..=WRITERS)
                .map(|n| {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let mut c = BackendsClient::new(unix_channel(&socket).await?);
                        let status = c.add_backend(add_request(backend(n))).await;
                        anyhow::Ok((n, status.err()))
                    })
                })
                .collect();
            for t in tasks {
                let (n, err) = tokio::time::timeout(Duration::from_secs(60), t).await???;
                let err = err.with_context(|| {
                    format!("{} was acknowledged with the disk full", backend(n))
                })?;
                ensure!(
                    err.code() == Code::Unavailable && err.message().contains("saving the state"),
                    "{}: {:?} {}",
                    backend(n),
                    err.code(),
                    err.message()
                );
            }
            let after = listed(&socket).await?;
            ensure!(
                after == before,
                "the failed group left a trace: {after:?}, was {before:?}"
            );
            ensure!(on_disk(&state_dir)? == kept, "the store changed");
            // Room again: the next changes are kept, in the maps and on disk.
            std::fs::remove_file(&filler)?;
            for n in [1, 2] {
                c.add_backend(add_request(backend(n))).await?;
            }
            let now = listed(&socket).await?;
            kept.extend([backend(1), backend(2)]);
            ensure!(
                now.len() == kept.len()
                    && now.iter().map(|(_, id)| id).collect::<BTreeSet<_>>().len() == now.len(),
                "after the disk has room: {now:?}"
            );
            ensure!(
                on_disk(&state_dir)? == kept,
                "the store after the disk has room"
            );
            Ok(())
        });
        api.stop();
        result
    })
}
