//! Group commit against a real lbd: 16 concurrent writers (gRPC clients on connections of their
//! own, one AddBackend per call) and a `kill -9` of lbd in the middle of their stream, sent the
//! moment the 120th answer arrives. A new
//! lbd on the same state directory lists every backend whose AddBackend was answered
//! (acknowledged means on disk); only calls that were in flight at the kill may or may not be
//! there.
//!
//! Run as root: `cargo test -p xdplb-integration --test group_commit`.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xdplb_integration::{Lbd, Proto, StartOptions, Topology};
use xdplb_proto::pb;
use xdplb_proto::pb::backends_client::BackendsClient;
use xdplb_testkit::grpc::unix_channel;

const WRITERS: usize = 16;
/// Calls per writer at most (the kill comes long before).
const PER_WRITER: usize = 200;
/// Acknowledged adds before the kill.
const KILL_AFTER: usize = 120;
/// Bound on the wait for them.
const KILL_DEADLINE: Duration = Duration::from_secs(90);

fn vip_key(vip: SocketAddrV4) -> pb::VipKey {
    pb::VipKey {
        address: vip.ip().to_string(),
        port: u32::from(vip.port()),
        protocol: pb::Protocol::Tcp as i32,
    }
}

fn backend(w: usize, i: usize) -> SocketAddrV4 {
    SocketAddrV4::new([10, 210, w as u8, i as u8 + 1].into(), 8080)
}

/// The backends `lbctl --json backend list` shows for `vip`.
fn listed(lbd: &Lbd, vip: SocketAddrV4) -> Result<BTreeSet<SocketAddrV4>> {
    let v = lbd.backend_list(vip, Proto::Tcp)?;
    v["backends"]
        .as_array()
        .context("no backends array")?
        .iter()
        .map(|b| {
            let addr = b["address"].as_str().context("address")?;
            let port = b["port"].as_u64().context("port")?;
            Ok(format!("{addr}:{port}").parse()?)
        })
        .collect()
}

#[test]
fn kill9_amid_concurrent_writers_loses_no_acknowledged_change() -> Result<()> {
    let topo = Topology::two_arm(1)?;
    let config = topo.lbd_config();
    let vip = SocketAddrV4::new(topo.vip(), 80);
    let state = tempfile::tempdir()?;
    let mut first = Lbd::start_with(topo.lb(), &config, &StartOptions::keep(state.path()))?;
    first.add_vip(vip, Proto::Tcp)?;
    let pid = first.pid().context("lbd is not running")?;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let killed_at = rt.block_on(async {
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<usize>();
        let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
        let socket = first.socket().to_owned();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (acked, failed, kill_tx) = (acked.clone(), failed.clone(), kill_tx.clone());
                let socket = socket.clone();
                let vip = vip_key(vip);
                tokio::spawn(async move {
                    let ch = unix_channel(&socket).await?;
                    let mut c = BackendsClient::new(ch);
                    for i in 0..PER_WRITER {
                        let b = backend(w, i);
                        let req = pb::AddBackendRequest {
                            vip: Some(vip.clone()),
                            backend: Some(pb::Backend {
                                address: b.ip().to_string(),
                                port: u32::from(b.port()),
                                weight: Some(100),
                                ..Default::default()
                            }),
                        };
                        if c.add_backend(req).await.is_err() {
                            // lbd is gone: this call may or may not have been kept.
                            failed.fetch_add(1, Ordering::Relaxed);
                            return anyhow::Ok(());
                        }
                        // The kill goes out the moment the answer that reaches KILL_AFTER
                        // arrives, while lbd is busy with the changes queued behind it.
                        let n = {
                            let mut a = acked.lock().unwrap();
                            a.insert(b);
                            a.len()
                        };
                        if n >= KILL_AFTER {
                            if let Some(tx) = kill_tx.lock().unwrap().take() {
                                // SAFETY: kill(2) of our own child with SIGKILL.
                                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                                let _ = tx.send(n);
                            }
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        let n = tokio::time::timeout(KILL_DEADLINE, kill_rx).await;
        for w in writers {
            tokio::time::timeout(Duration::from_secs(30), w).await???;
        }
        anyhow::Ok(n.map_err(|_| anyhow::anyhow!("no kill within {KILL_DEADLINE:?}"))??)
    });
    let n_at_kill = killed_at?;
    first.kill9()?;
    let acked = acked.lock().unwrap().clone();
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "{} adds acknowledged in {:?} ({n_at_kill} when kill -9 was sent), {failed} calls cut off",
        acked.len(),
        started.elapsed()
    );
    ensure!(
        n_at_kill >= KILL_AFTER,
        "only {n_at_kill} adds acknowledged within {KILL_DEADLINE:?}"
    );
    ensure!(
        failed > 0,
        "no call was in flight at the kill: not amid the stream"
    );

    let second = Lbd::start_with(topo.lb(), &config, &StartOptions::state(state.path()))?;
    let after = listed(&second, vip)?;
    let lost: Vec<_> = acked.difference(&after).collect();
    let extra = after.difference(&acked).count();
    eprintln!(
        "after the restart: {} backends listed, {} acknowledged, {extra} kept from calls cut off",
        after.len(),
        acked.len()
    );
    ensure!(
        lost.is_empty(),
        "{} acknowledged adds lost by kill -9: {lost:?}",
        lost.len()
    );
    ensure!(
        extra <= failed,
        "{extra} backends nobody was adding when lbd died"
    );
    drop(second);
    drop(first);
    Ok(())
}
