//! The one owner of the desired state: [`Controller`] holds the [`State`], the [`Reconciler`]
//! that makes the maps match it, the store every accepted change is saved to, the next-hop
//! warmer and the blackhole routes of the VIP addresses. The API, the health checker and the
//! metrics reach the data plane only through it.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::persist::{PersistError, StateStore};
pub(crate) use crate::reconcile::{Counters, PolicyCounters, Reader};
use crate::reconcile::{ReconcileError, Reconciler};
use crate::routes::{RouteCounts, VipRoutes};
use xdplb_model::state::{State, StateError, VipKey};

/// What the controller itself can fail with while applying a change.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("data plane: {0}")]
    Reconcile(#[from] ReconcileError),
    #[error("saving the state: {0}")]
    Persist(#[from] PersistError),
    /// The error of the group commit this change was part of (every change of the group gets
    /// it; none of them was kept).
    #[error(transparent)]
    Group(Arc<ControlError>),
    /// The commit stopped before answering (it panicked).
    #[error("{0}")]
    Abandoned(String),
}

/// Why [`Controller::change`] failed: the change itself refused (`E`, from the caller's closure),
/// or applying it did.
#[derive(Debug)]
pub(crate) enum ChangeError<E> {
    Refused(E),
    Control(ControlError),
}

/// A queued change: run on the group's state, it either refuses (answering its caller at once)
/// or changes the state and returns how to answer once the group is committed.
type Job = Box<dyn FnOnce(&mut State) -> Option<Staged> + Send>;
/// Answers one accepted change with the group's outcome: on success, still under the lock, with
/// the committed state and a reader of the reconciler (ids, health) for its reply.
type Staged =
    Box<dyn for<'a, 'b> FnOnce(Result<(&'a State, &'a Reader<'b>), Arc<ControlError>>) + Send>;

struct Inner {
    state: State,
    reconciler: Reconciler,
    /// Backend addresses whose next hop is already a managed neighbour.
    warmed: HashSet<Ipv4Addr>,
    /// The next hops made managed neighbours (one per router, not one per backend).
    warmer: crate::neighbor::NextHopWarmer,
    /// Where every accepted change is saved before it is acknowledged (None: not persisted).
    store: Option<StateStore>,
    /// The blackhole routes of the VIP addresses (`crate::routes`).
    routes: VipRoutes,
}

/// The one owner of the desired state. Every change goes through [`Controller::change`]:
/// apply to a copy, make the maps match, save it, and only then keep the copy; concurrent
/// changes share one reconcile and one save (group commit).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Mutex<Inner>>,
    /// Changes waiting for the next group commit ([`Controller::change`]).
    queue: Arc<std::sync::Mutex<Vec<Job>>>,
}

impl Controller {
    /// Takes the reconciler and applies `state` to it.
    pub fn new(state: State, mut reconciler: Reconciler) -> Result<Self, ReconcileError> {
        reconciler.reconcile(&state)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                state,
                reconciler,
                warmed: HashSet::new(),
                warmer: crate::neighbor::NextHopWarmer::default(),
                store: None,
                routes: VipRoutes::off(),
            })),
            queue: Arc::default(),
        })
    }

    /// Saves every accepted change to `store` before acknowledging it, starting with the state
    /// as it is now.
    pub async fn persist_to(&self, store: StateStore) -> Result<(), ControlError> {
        let mut inner = self.inner.lock().await;
        store.save(&inner.state, &inner.reconciler.ids())?;
        inner.store = Some(store);
        Ok(())
    }

    /// Keeps the VIP addresses' blackhole routes from now on (`routes`, from
    /// [`VipRoutes::start`], already matches the state): added before a change puts a VIP
    /// live, removed once the last VIP of their address is gone.
    pub async fn manage_routes(&self, routes: VipRoutes) {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        inner.routes = routes;
        inner.routes.sync(&inner.state).await;
    }

    /// Removes the blackhole routes (lbd removes the data plane: `--detach-on-exit`).
    pub async fn remove_routes(&self) {
        self.inner.lock().await.routes.remove_all().await;
    }

    /// What the blackhole routes look like, for the metrics; None when they are off.
    pub(crate) async fn route_counts(&self) -> Option<RouteCounts> {
        let inner = self.inner.lock().await;
        inner.routes.is_on().then(|| inner.routes.counts())
    }

    /// Makes the next hop of every backend not yet seen a kernel-managed neighbour, so the XDP
    /// program's FIB lookups resolve from the first packet. Failures are logged, not returned.
    pub async fn warm_next_hops(&self) {
        let mut inner = self.inner.lock().await;
        let todo: Vec<Ipv4Addr> = inner
            .state
            .vips
            .values()
            .flat_map(|v| v.backends.keys().map(|a| *a.ip()))
            .filter(|ip| !inner.warmed.contains(ip))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if todo.is_empty() {
            return;
        }
        let warmed = inner.warmer.warm(&todo).await;
        match warmed {
            Ok(hops) => {
                let attached: Vec<u32> = inner
                    .reconciler
                    .dataplane()
                    .links()
                    .iter()
                    .map(|l| l.ifindex)
                    .collect();
                for hop in &hops {
                    if !attached.contains(&hop.ifindex) {
                        tracing::warn!(
                            backend = %hop.dst, ifindex = hop.ifindex,
                            "the route to this backend leaves through an interface lbd is not attached to: \
                             its packets go to the kernel (pass_egress_not_attached); add it to dataplane.interfaces"
                        );
                    }
                }
                tracing::info!(next_hops = ?hops, "next hops are kernel-managed neighbours");
            }
            Err(e) => {
                tracing::warn!(backends = ?todo, error = %e, "could not warm every next hop; pass_fib_no_neigh will count misses")
            }
        }
        inner.warmed.extend(todo);
    }

    /// Makes the change `f` and returns once it is in the maps and on disk.
    ///
    /// Group commit: `f` is queued, and whoever holds the lock next commits every change
    /// queued by then together. Each change runs, in arrival order, on a copy of the state as
    /// the changes before it in the group left it: a change that refuses (or breaks a limit)
    /// fails alone and leaves no trace. The group is then reconciled once and saved once (one
    /// journal record, one flush), and only then is each change answered. If the reconcile or
    /// the save fails, the maps are rolled back to the state before the group and every change
    /// of the group gets that error: nothing of it was kept.
    ///
    /// The commit runs on a task of its own, so a caller that goes away (a cancelled RPC)
    /// neither stalls the changes queued behind it nor leaves its own half done: a change once
    /// queued is committed or refused whole, and its answer is dropped.
    pub(crate) async fn change<T, E, F>(&self, f: F) -> Result<T, ChangeError<E>>
    where
        F: FnOnce(&mut State) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.change_and_read(f, |out, _, _| out).await
    }

    /// [`Controller::change`], then `g` on its output, the committed state and a [`Reader`],
    /// under the same lock as the commit: the reply of an RPC that describes what it changed
    /// (ids the reconciler handed out) without queueing for the lock behind the next group.
    pub(crate) async fn change_and_read<T, E, F, R, G>(
        &self,
        f: F,
        g: G,
    ) -> Result<R, ChangeError<E>>
    where
        F: FnOnce(&mut State) -> Result<T, E> + Send + 'static,
        G: FnOnce(T, &State, &Reader<'_>) -> R + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |state: &mut State| {
            let mut trial = state.clone();
            let out = match f(&mut trial) {
                Ok(out) => out,
                Err(e) => {
                    let _ = tx.send(Err(ChangeError::Refused(e)));
                    return None;
                }
            };
            if let Err(e) = crate::reconcile::check_limits(&trial) {
                let _ = tx.send(Err(ChangeError::Control(e.into())));
                return None;
            }
            *state = trial;
            let answer: Staged = Box::new(move |committed| {
                let _ = tx.send(match committed {
                    Ok((state, reader)) => Ok(g(out, state, reader)),
                    Err(e) => Err(ChangeError::Control(ControlError::Group(e))),
                });
            });
            Some(answer)
        });
        let first = {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.push(job);
            queue.len() == 1
        };
        // One commit per group: a change queued behind others is taken by the commit the
        // first of them started (it has not drained the queue yet, or the queue would have
        // been empty).
        if first {
            let this = self.clone();
            tokio::spawn(async move { this.commit_queued().await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(ChangeError::Control(ControlError::Abandoned(
                "the commit this change was grouped with stopped before answering; \
                 list the state to see whether it was applied"
                    .into(),
            )))
        })
    }

    /// Commits every change queued so far as one group (see [`Controller::change`]); returns
    /// how many were accepted into the group.
    async fn commit_queued(&self) -> usize {
        let mut inner = self.inner.lock().await;
        let jobs = std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if jobs.is_empty() {
            return 0;
        }
        let mut next = inner.state.clone();
        let staged: Vec<Staged> = jobs.into_iter().filter_map(|job| job(&mut next)).collect();
        if staged.is_empty() {
            return 0;
        }
        // A new VIP address gets its route before its VIP goes live; a route goes only after
        // the maps (and the rollback, if any) are settled.
        inner.routes.add_for(&next).await;
        let applied = inner
            .reconciler
            .reconcile(&next)
            .map_err(ControlError::from)
            .and_then(|()| match &inner.store {
                Some(store) => store
                    .save(&next, &inner.reconciler.ids())
                    .map_err(ControlError::from),
                None => Ok(()),
            });
        let committed = match applied {
            Ok(()) => {
                inner.routes.sync(&next).await;
                inner.state = next;
                Ok(())
            }
            Err(e) => {
                let previous = inner.state.clone();
                if let Err(rollback) = inner.reconciler.reconcile(&previous) {
                    tracing::error!(error = %rollback, "rolling the data plane back failed");
                }
                inner.routes.sync(&previous).await;
                tracing::warn!(changes = staged.len(), error = %e, "a group of changes failed and was rolled back");
                Err(Arc::new(e))
            }
        };
        let accepted = staged.len();
        {
            // A block, not a drop: the reader (not Send) must not live across an await.
            let reader = Reader::new(&inner.reconciler);
            for answer in staged {
                answer(match &committed {
                    Ok(()) => Ok((&inner.state, &reader)),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        drop(inner);
        if committed.is_ok() {
            self.warm_next_hops().await;
        }
        accepted
    }

    /// The health checker's input: marks a backend of a VIP up or down in the live view and, if
    /// that changes anything, makes the maps match the current state again (the VIP's Maglev
    /// table is rebuilt with or without the backend). Nothing is persisted: health is live.
    /// Returns whether the view changed; a backend the state no longer has is ignored.
    pub(crate) async fn set_health(
        &self,
        vip: &VipKey,
        addr: std::net::SocketAddrV4,
        up: bool,
    ) -> Result<bool, ControlError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let Some(v) = inner.state.vips.get(vip).filter(|v| v.health.is_checked()) else {
            return Ok(false);
        };
        if !v.backends.contains_key(&addr) || !inner.reconciler.set_backend_health(*vip, addr, up) {
            return Ok(false);
        }
        if let Err(e) = inner.reconciler.reconcile(&inner.state) {
            // Undo the mark, so that the view still says what the maps hold and the checker,
            // which keeps the view in line with its counters, tries again next round.
            inner.reconciler.set_backend_health(*vip, addr, !up);
            return Err(e.into());
        }
        let weighted: Vec<_> = v.backends.iter().filter(|(_, w)| **w > 0).collect();
        if !up
            && !weighted.is_empty()
            && weighted
                .iter()
                .all(|(a, _)| inner.reconciler.health().is_down(vip, a))
        {
            tracing::warn!(%vip, all_down = %v.health.all_down, "{}", crate::health::view::all_down_note(v.health.all_down));
        }
        Ok(true)
    }

    /// Reads the state and, through a [`Reader`] that cannot write, the reconciler's ids, the
    /// health view and the counters, under the lock.
    /// Marks the backends down for longer than `grace` so that the next sweep ends their flows
    /// ([`Reconciler::end_dead_backends`]); returns how many were newly marked.
    pub async fn end_dead_backends(
        &self,
        grace: std::time::Duration,
    ) -> Result<usize, ControlError> {
        let mut inner = self.inner.lock().await;
        Ok(inner.reconciler.end_dead_backends(grace)?)
    }

    /// A sweeper of the flow tables, to run off the lock.
    pub async fn sweeper(&self) -> Result<crate::dataplane::flows::Sweeper, ControlError> {
        let inner = self.inner.lock().await;
        Ok(inner
            .reconciler
            .dataplane()
            .sweeper()
            .map_err(ReconcileError::from)?)
    }

    /// An explainer of the loaded data plane (`lbctl explain`), to run off the lock: it only
    /// reads the maps.
    pub(crate) async fn explainer(
        &self,
    ) -> Result<crate::dataplane::explain::Explainer, ControlError> {
        let inner = self.inner.lock().await;
        Ok(inner
            .reconciler
            .dataplane()
            .explainer()
            .map_err(ReconcileError::from)?)
    }

    pub(crate) async fn read<T>(&self, f: impl FnOnce(&State, &Reader<'_>) -> T) -> T {
        let inner = self.inner.lock().await;
        f(&inner.state, &Reader::new(&inner.reconciler))
    }

    /// Takes the reconciler out for shutdown, if this is the last handle.
    pub fn into_reconciler(self) -> Option<Reconciler> {
        Arc::try_unwrap(self.inner)
            .ok()
            .map(|m| m.into_inner().reconciler)
    }
}
