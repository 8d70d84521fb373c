//! Prometheus metrics of lbd: a [`Collector`] that reads the data plane at every scrape, and a
//! small HTTP/1.1 server answering `GET /metrics` (`lbd --metrics-listen`, `[metrics] listen`).
//!
//! Nothing is copied in the background. A scrape
//! 1. reads the per-VIP, per-backend and global counters through [`Controller::read`], summing
//!    the per-CPU maps (a few syscalls per VIP and backend, under the controller's lock);
//! 2. walks the hash, LRU and trie maps (occupancy, live flows per VIP and backend, firewall hits,
//!    rate-limit counters) on handles of its own, outside the lock. A walk costs about a second
//!    per million entries, so its result is reused for 50 times as long as it took, at most
//!    [`MAX_WALK_REUSE`]: small tables are walked at every scrape, a full million-entry conntrack
//!    table at most every 10 s (so walking costs at most 2 % of one CPU). The time the last walk
//!    took is exported as `xdplb_map_walk_duration_seconds`.
//!
//! The encoding runs on a blocking thread (`spawn_blocking`): the collector waits for the lock
//! and walks maps synchronously.
//!
//! Names follow the Prometheus conventions: counters end in `_total`, bytes in `_bytes_total`;
//! label values are the operator's spelling (`vip="10.0.0.10:80"`, `proto="tcp"`,
//! `backend="10.0.2.1:8080"`, `reason="pass_not_vip"`, `verdict="XDP_TX"`).
//!
//! Split by concern: [`collector`] reads the data plane through the controller, [`render`] names
//! and formats a [`render::Sample`], [`server`] is the HTTP endpoint. The listen address is
//! parsed by `crate::config` (it is part of the configuration).

pub(crate) mod collector;
pub(crate) mod render;
pub mod server;
