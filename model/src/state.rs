//! The desired state an operator sets (VIPs, modes, backends, weights) and the validated changes to it.
//! gRPC handlers and the config file change a `State`; the reconciler makes the BPF maps match it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::names::named_enum;

/// Weight of a backend added without one.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest weight accepted (keeps Maglev credit arithmetic and tables readable).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

named_enum!(Protocol, "protocol", { Tcp => "tcp", Udp => "udp" });

/// Forwarding mode of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Full NAT: DNAT to the backend and SNAT to the LB; replies come back through the LB.
    #[default]
    Nat,
    /// Direct server return by MAC rewrite (backends on the LB's segment).
    L2dsr,
    /// Direct server return through an IPIP tunnel.
    Ipip,
}

impl Mode {
    /// Direct server return (L2 DSR or IPIP): replies bypass the LB, ports cannot change.
    pub fn is_dsr(self) -> bool {
        matches!(self, Mode::L2dsr | Mode::Ipip)
    }
}

named_enum!(Mode, "mode", { Nat => "nat", L2dsr => "l2dsr", Ipip => "ipip" });

/// A VIP is identified by address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VipKey {
    pub addr: SocketAddrV4,
    pub proto: Protocol,
}

impl fmt::Display for VipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipState {
    pub mode: Mode,
    /// Backends by address; the value is the weight (0 = drained).
    pub backends: BTreeMap<SocketAddrV4, u32>,
    /// How the backends are probed (kind none: not at all).
    #[serde(default)]
    pub health: crate::health::HealthCheck,
    /// Backends drained with [`State::drain`], by address; the value is the weight to restore.
    #[serde(default)]
    pub drained: BTreeMap<SocketAddrV4, u32>,
}

/// Everything an operator can set. One owner changes it (see `api`); the reconciler applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(with = "vec_map")]
    pub vips: BTreeMap<VipKey, VipState>,
    /// Firewall rules (source prefix -> block or allow).
    #[serde(default)]
    pub firewall: crate::firewall::Firewall,
    /// Per-client rate limits: the default policy and per-CIDR overrides.
    #[serde(default)]
    pub ratelimit: crate::ratelimit::RateLimits,
}

/// Why a change to the state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    FailedPrecondition(String),
}

/// An `InvalidArgument` naming `field`.
pub fn invalid(field: &'static str, message: impl Into<String>) -> StateError {
    StateError::InvalidArgument {
        field,
        message: message.into(),
    }
}

fn unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback())
}

/// Checks a VIP address: unicast, not loopback, port 1..=65535.
pub fn validate_vip_addr(addr: &SocketAddrV4) -> Result<(), String> {
    if !unicast(*addr.ip()) {
        return Err(format!("{} is not a unicast address", addr.ip()));
    }
    if addr.port() == 0 {
        return Err("port must be 1..=65535".into());
    }
    Ok(())
}

/// Checks a backend address: unicast, not loopback, port 1..=65535.
pub fn validate_backend_addr(addr: &SocketAddrV4) -> Result<(), String> {
    validate_vip_addr(addr)
}

impl State {
    pub fn vip(&self, key: &VipKey) -> Result<&VipState, StateError> {
        self.vips
            .get(key)
            .ok_or_else(|| StateError::NotFound(format!("vip {key} does not exist")))
    }

    fn vip_mut(&mut self, key: &VipKey) -> Result<&mut VipState, StateError> {
        self.vips
            .get_mut(key)
            .ok_or_else(|| StateError::NotFound(format!("vip {key} does not exist")))
    }

    pub fn add_vip(&mut self, key: VipKey, mode: Mode) -> Result<(), StateError> {
        validate_vip_addr(&key.addr).map_err(|m| invalid("vip.address", m))?;
        if self.vips.contains_key(&key) {
            return Err(StateError::AlreadyExists(format!(
                "vip {key} already exists"
            )));
        }
        self.vips.insert(
            key,
            VipState {
                mode,
                backends: BTreeMap::new(),
                health: crate::health::HealthCheck::default(),
                drained: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), StateError> {
        self.vips
            .remove(key)
            .map(|_| ())
            .ok_or_else(|| StateError::NotFound(format!("vip {key} does not exist")))
    }

    /// Switches a VIP's forwarding mode: new flows use it, tracked flows finish as they started.
    pub fn set_mode(&mut self, key: &VipKey, mode: Mode) -> Result<(), StateError> {
        let v = self.vip_mut(key)?;
        if mode.is_dsr() {
            if let Some(be) = v.backends.keys().find(|b| b.port() != key.addr.port()) {
                return Err(invalid(
                    "mode",
                    format!(
                        "{mode} cannot translate ports: backend {be} listens on {}, not the VIP port {}",
                        be.port(),
                        key.addr.port()
                    ),
                ));
            }
        }
        v.mode = mode;
        Ok(())
    }

    pub fn add_backend(
        &mut self,
        vip: &VipKey,
        addr: SocketAddrV4,
        weight: u32,
    ) -> Result<(), StateError> {
        validate_backend_addr(&addr).map_err(|m| invalid("backend.address", m))?;
        validate_weight(weight)?;
        let v = self.vip_mut(vip)?;
        // Every path that adds a backend comes here (AddBackend, AddBackends, the config's
        // [[vip.backend]] tables): a VIP forwarding to its own address would send each packet
        // back to the balancer, which would take it for a new client packet to the VIP.
        if addr.ip() == vip.addr.ip() {
            return Err(invalid(
                "backend.address",
                format!(
                    "{} is the address of vip {vip} itself: a backend must be another host",
                    addr.ip()
                ),
            ));
        }
        if v.mode.is_dsr() && addr.port() != vip.addr.port() {
            return Err(invalid(
                "backend.port",
                format!(
                    "{} cannot translate ports: the backend port must be the VIP port {}",
                    v.mode,
                    vip.addr.port()
                ),
            ));
        }
        if v.backends.contains_key(&addr) {
            return Err(StateError::AlreadyExists(format!(
                "backend {addr} of vip {vip} already exists"
            )));
        }
        v.backends.insert(addr, weight);
        Ok(())
    }

    pub fn remove_backend(&mut self, vip: &VipKey, addr: SocketAddrV4) -> Result<(), StateError> {
        let v = self.vip_mut(vip)?;
        v.drained.remove(&addr);
        v.backends.remove(&addr).map(|_| ()).ok_or_else(|| {
            StateError::NotFound(format!("backend {addr} of vip {vip} does not exist"))
        })
    }

    /// Replaces a VIP's health check.
    pub fn set_health(
        &mut self,
        vip: &VipKey,
        health: crate::health::HealthCheck,
    ) -> Result<(), StateError> {
        health.validate()?;
        self.vip_mut(vip)?.health = health;
        Ok(())
    }

    /// Sets a backend's weight to 0 and remembers the weight it had, for [`State::undrain`].
    /// Draining a drained backend changes nothing. Returns the remembered weight.
    pub fn drain(&mut self, vip: &VipKey, addr: SocketAddrV4) -> Result<u32, StateError> {
        let v = self.vip_mut(vip)?;
        let w = v.backends.get_mut(&addr).ok_or_else(|| {
            StateError::NotFound(format!("backend {addr} of vip {vip} does not exist"))
        })?;
        if let Some(before) = v.drained.get(&addr) {
            return Ok(*before);
        }
        if *w == 0 {
            return Err(StateError::FailedPrecondition(format!(
                "backend {addr} of vip {vip} already has weight 0 (set with set-weight): there is no weight to remember"
            )));
        }
        let before = std::mem::take(w);
        v.drained.insert(addr, before);
        Ok(before)
    }

    /// Gives a drained backend back the weight it had before [`State::drain`]; returns it.
    pub fn undrain(&mut self, vip: &VipKey, addr: SocketAddrV4) -> Result<u32, StateError> {
        let v = self.vip_mut(vip)?;
        let w = v.backends.get_mut(&addr).ok_or_else(|| {
            StateError::NotFound(format!("backend {addr} of vip {vip} does not exist"))
        })?;
        let before = v.drained.remove(&addr).ok_or_else(|| {
            StateError::FailedPrecondition(format!(
                "backend {addr} of vip {vip} is not drained (weight {w}); use set-weight"
            ))
        })?;
        *w = before;
        Ok(before)
    }

    pub fn set_weight(
        &mut self,
        vip: &VipKey,
        addr: SocketAddrV4,
        weight: u32,
    ) -> Result<(), StateError> {
        validate_weight(weight)?;
        let v = self.vip_mut(vip)?;
        let w = v.backends.get_mut(&addr).ok_or_else(|| {
            StateError::NotFound(format!("backend {addr} of vip {vip} does not exist"))
        })?;
        *w = weight;
        // An explicit weight ends a drain: there is nothing left to restore.
        v.drained.remove(&addr);
        Ok(())
    }
}

fn validate_weight(weight: u32) -> Result<(), StateError> {
    if weight > MAX_WEIGHT {
        return Err(invalid(
            "backend.weight",
            format!("{weight} is above the maximum {MAX_WEIGHT}"),
        ));
    }
    Ok(())
}

/// (De)serialises a map whose keys are not strings as a list of `[key, value]` pairs.
mod vec_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> VipKey {
        VipKey {
            addr: s.parse().expect("addr"),
            proto: Protocol::Tcp,
        }
    }

    /// A state with the one NAT VIP 10.0.0.10:80/tcp, and its key.
    fn one_vip() -> (State, VipKey) {
        let mut s = State::default();
        let v = key("10.0.0.10:80");
        s.add_vip(v, Mode::Nat).expect("add vip");
        (s, v)
    }

    #[test]
    fn changes_are_checked_and_refusals_change_nothing() {
        let (mut s, v) = one_vip();
        let before = s.clone();
        assert!(matches!(
            s.add_vip(v, Mode::Nat),
            Err(StateError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.add_vip(key("0.0.0.0:80"), Mode::Nat),
            Err(StateError::InvalidArgument {
                field: "vip.address",
                ..
            })
        ));
        assert!(matches!(
            s.add_vip(key("10.0.0.11:0"), Mode::Nat),
            Err(StateError::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.add_backend(&key("10.9.9.9:80"), "10.0.2.1:80".parse().unwrap(), 1),
            Err(StateError::NotFound(_))
        ));
        assert!(matches!(
            s.add_backend(&v, "10.0.2.1:80".parse().unwrap(), MAX_WEIGHT + 1),
            Err(StateError::InvalidArgument {
                field: "backend.weight",
                ..
            })
        ));
        assert_eq!(s, before);
        s.add_backend(&v, "10.0.2.1:80".parse().unwrap(), 5)
            .expect("add backend");
        s.set_weight(&v, "10.0.2.1:80".parse().unwrap(), 0)
            .expect("drain");
        assert_eq!(
            s.vip(&v)
                .unwrap()
                .backends
                .values()
                .copied()
                .collect::<Vec<_>>(),
            vec![0]
        );
        s.remove_backend(&v, "10.0.2.1:80".parse().unwrap())
            .expect("remove");
        assert!(matches!(
            s.remove_backend(&v, "10.0.2.1:80".parse().unwrap()),
            Err(StateError::NotFound(_))
        ));
        s.remove_vip(&v).expect("remove vip");
        assert_eq!(s, State::default());
    }

    #[test]
    fn a_backend_at_the_vips_own_address_is_refused() {
        let (mut s, v) = one_vip();
        let before = s.clone();
        // Any port, any weight: the address is what is refused.
        for be in ["10.0.0.10:80", "10.0.0.10:8080"] {
            let e = s
                .add_backend(&v, be.parse().unwrap(), 1)
                .expect_err("refused");
            assert!(
                matches!(
                    &e,
                    StateError::InvalidArgument {
                        field: "backend.address",
                        message,
                    } if message.starts_with("10.0.0.10 is the address of vip 10.0.0.10:80/tcp itself")
                ),
                "{e:?}"
            );
        }
        assert_eq!(s, before);
    }

    #[test]
    fn dsr_modes_refuse_port_translation() {
        let (mut s, v) = one_vip();
        s.add_backend(&v, "10.0.2.1:8080".parse().unwrap(), 1)
            .expect("nat translates ports");
        let before = s.clone();
        for mode in [Mode::L2dsr, Mode::Ipip] {
            let e = s.set_mode(&v, mode).expect_err("backend port differs");
            assert!(
                matches!(e, StateError::InvalidArgument { field: "mode", .. }),
                "{e}"
            );
            assert_eq!(s, before);
        }
        s.remove_backend(&v, "10.0.2.1:8080".parse().unwrap())
            .unwrap();
        s.set_mode(&v, Mode::Ipip).expect("no backends: any mode");
        let e = s
            .add_backend(&v, "10.0.2.1:8080".parse().unwrap(), 1)
            .expect_err("port differs");
        assert!(
            matches!(
                e,
                StateError::InvalidArgument {
                    field: "backend.port",
                    ..
                }
            ),
            "{e}"
        );
        s.add_backend(&v, "10.0.2.1:80".parse().unwrap(), 1)
            .expect("same port is fine");
        assert_eq!(s.vip(&v).unwrap().mode, Mode::Ipip);
        s.set_mode(&v, Mode::Nat).expect("back to nat");
    }

    #[test]
    fn drain_remembers_the_weight_and_set_weight_forgets_it() {
        let (mut s, v) = one_vip();
        let be: SocketAddrV4 = "10.0.2.1:80".parse().expect("addr");
        s.add_backend(&v, be, 7).expect("add backend");
        assert_eq!(s.drain(&v, be), Ok(7));
        assert_eq!(s.vip(&v).unwrap().backends[&be], 0);
        assert_eq!(
            s.drain(&v, be),
            Ok(7),
            "draining twice keeps the first weight"
        );
        assert_eq!(s.undrain(&v, be), Ok(7));
        assert_eq!(s.vip(&v).unwrap().backends[&be], 7);
        assert!(s.vip(&v).unwrap().drained.is_empty());
        assert!(matches!(
            s.undrain(&v, be),
            Err(StateError::FailedPrecondition(_))
        ));

        s.drain(&v, be).expect("drain");
        s.set_weight(&v, be, 3).expect("set weight");
        assert!(
            s.vip(&v).unwrap().drained.is_empty(),
            "an explicit weight ends the drain"
        );
        assert!(matches!(
            s.undrain(&v, be),
            Err(StateError::FailedPrecondition(_))
        ));

        s.set_weight(&v, be, 0).expect("weight 0");
        assert!(
            matches!(s.drain(&v, be), Err(StateError::FailedPrecondition(_))),
            "nothing to remember"
        );
        s.set_weight(&v, be, 5).expect("weight 5");
        s.drain(&v, be).expect("drain");
        s.remove_backend(&v, be).expect("remove");
        assert!(
            s.vip(&v).unwrap().drained.is_empty(),
            "removing forgets the drain"
        );
        assert!(matches!(s.drain(&v, be), Err(StateError::NotFound(_))));
    }

    #[test]
    fn health_is_validated_and_old_state_files_read() {
        let (mut s, v) = one_vip();
        let before = s.clone();
        let bad = crate::health::HealthCheck {
            kind: crate::health::HealthKind::Tcp,
            rise: 0,
            ..Default::default()
        };
        assert!(matches!(
            s.set_health(&v, bad),
            Err(StateError::InvalidArgument {
                field: "health.rise",
                ..
            })
        ));
        assert_eq!(s, before);
        // A VIP saved before health checks existed reads as unchecked and not drained.
        let old: VipState = serde_json::from_str(r#"{"mode":"nat","backends":{"10.0.2.1:80":5}}"#)
            .expect("old form");
        assert!(!old.health.is_checked());
        assert!(old.drained.is_empty());
    }

    #[test]
    fn protocol_parses_case_insensitively() {
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert!("sctp".parse::<Protocol>().is_err());
    }
}
