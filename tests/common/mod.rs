//! Helpers shared by the integration tests of the `xdplb` crate (and the bench): the lab of the
//! data-plane tests, expectations, the fuzzer, the decap program. Namespaces, test runs and
//! packets come from `xdplb-testkit`.
#![allow(dead_code)]

pub mod decap;
pub mod expect;
pub mod fuzz;
pub mod lab;
pub mod served;
