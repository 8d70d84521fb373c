//! Helpers shared by the integration tests of the `xdplb` crate: network namespaces, packets, the bench.
#![allow(dead_code)]

pub mod decap;
pub mod expect;
pub mod fuzz;
pub mod lab;
pub mod netns;
pub mod packet;
