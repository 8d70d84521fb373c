//! Reproducible generated inputs: [`Rng`] (xorshift64*, no dependency) and [`block_list`], the
//! large block list the firewall figures of `benches/firewall.rs` and `make bench` load.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// xorshift64*: reproducible pseudo-random numbers from a seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number (an endless generator, not an `Iterator`: no `Option` to unwrap).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `n` distinct prefixes shaped like a large block list (half /24, a third /32, the rest
/// /16../23) in 1.0.0.0-99.255.255.255; 100.64.0.0/10 stays free for sources that match nothing.
pub fn block_list(n: usize, seed: u64) -> Vec<Ipv4Net> {
    let mut rng = Rng(seed);
    let mut out = BTreeSet::new();
    while out.len() < n {
        let r = rng.next();
        let addr = 0x0100_0000 + (r as u32) % (99 << 24);
        let len = match (r >> 32) % 6 {
            0..=2 => 24,
            3 | 4 => 32,
            _ => 16 + ((r >> 40) % 8) as u8,
        };
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(addr), len) {
            out.insert(net.trunc());
        }
    }
    out.into_iter().collect()
}
