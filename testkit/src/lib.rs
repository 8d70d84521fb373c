//! `xdplb-testkit`: the lab equipment that `tests/`, `integration/` and `bench/` share.
//!
//! - [`netns`]: [`NetNs`], one network namespace per test (unique name, removed on drop), entered
//!   by a thread with the `!Send` guard [`Inside`] or run in with [`NetNs::run`]; veth pairs;
//! - [`testrun`]: BPF_PROG_TEST_RUN of an XDP program ([`run_xdp`], the reusable [`Runner`]);
//! - [`packet`]: frames built field by field ([`Packet`]), checksums from scratch, parsing;
//! - [`pins`]: [`PinDir`], a bpffs directory removed with its pins on drop; bpffs mounting;
//! - [`xdp`]: attaching and detaching XDP programs in a namespace, and the XDP_PASS program
//!   the veth ends facing a load balancer carry;
//! - [`cmd`]: running a command and its child processes with bounded waits;
//! - [`gen`]: reproducible generated inputs ([`gen::Rng`], [`gen::block_list`]);
//! - `grpc` (feature `grpc`): a gRPC channel to a server on a Unix socket.
//!
//! Nothing here knows xdplb: the crate depends on libbpf-rs and the kernel only (and on tonic
//! with the feature `grpc`).

pub mod cmd;
pub mod gen;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod testrun;
pub mod xdp;

pub use cmd::run_cmd;
pub use netns::{veth, Inside, NetNs};
pub use packet::Packet;
pub use pins::PinDir;
pub use testrun::{run_xdp, run_xdp_fd, Run, Runner};

pub use xdplb_bpffs::skeleton;
