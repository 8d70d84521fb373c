//! lbd's gRPC API served in process as lbd serves it (on a Unix socket in a temporary
//! directory, every request through the socket's authority rewriting), in front of a real
//! `Controller`, `Reconciler` and loaded XDP program (not attached), optionally saving every
//! change to a state store like lbd's `--state-dir`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use tonic::transport::Server;

use xdplb::controller::Controller;
use xdplb::dataplane::{Dataplane, LoadOptions};
use xdplb::persist::StateStore;
use xdplb::reconcile::Reconciler;
use xdplb_model::state::State;

use super::lab::{config, RING_SIZE};

/// The served API; [`Served::stop`] shuts it down.
pub struct Served {
    pub rt: tokio::runtime::Runtime,
    pub ctl: Controller,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    stop_tx: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    /// Serves a program loaded in the calling thread's namespace, its state not persisted.
    pub fn start() -> Result<Served> {
        Self::start_with(None, 1)
    }

    /// Serves with every change saved to `store` (if any) before it is acknowledged, on a
    /// runtime of `threads` worker threads (1: a current-thread runtime).
    pub fn start_with(store: Option<StateStore>, threads: usize) -> Result<Served> {
        let mut dp = Dataplane::load(&LoadOptions {
            conntrack_size: 4096,
            pin_dir: None,
            firewall_capacity: 4096,
            ratelimit_clients: 4096,
            ..LoadOptions::default()
        })?;
        dp.maps_mut().write_config(&config((20000, 20999)))?;
        let ctl = Controller::new(State::default(), Reconciler::new(dp, RING_SIZE))
            .map_err(|e| anyhow::anyhow!("controller: {e}"))?;
        let rt = if threads > 1 {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        };
        if let Some(store) = store {
            rt.block_on(ctl.persist_to(store))
                .map_err(|e| anyhow::anyhow!("persist_to: {e}"))?;
        }
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("lbd.sock");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = {
            let _guard = rt.enter();
            let listener = xdplb::api::listen::bind_unix(&socket)?;
            let health = rt.block_on(xdplb::api::listen::ApiHealth::new());
            let router =
                xdplb::api::listen::router(Server::builder(), &ctl, stop_rx.clone(), &health);
            let mut stop = stop_rx.clone();
            rt.spawn(router.serve_with_incoming_shutdown(
                xdplb::api::listen::unix_incoming(listener),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ))
        };
        Ok(Served {
            rt,
            ctl,
            socket,
            _dir: dir,
            stop_tx,
            server,
        })
    }

    /// Shuts the server down (its clients dropped first), then the runtime (within 2 s) and
    /// the controller.
    pub fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.rt.block_on(self.server);
        self.rt.shutdown_timeout(Duration::from_secs(2));
        drop(self.ctl);
    }
}
