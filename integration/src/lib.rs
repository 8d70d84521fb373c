//! Test harness: network-namespace topologies, lbd/lbctl process control and real TCP/UDP peers.
