//! IPv4 prefixes as operators write them: the one strict parser behind firewall rules and
//! rate-limit overrides (`10.0.0.1/8` is refused with `10.0.0.0/8` suggested, never widened).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why a string is not an IPv4 prefix an operator can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an IPv4 prefix (expected A.B.C.D/LEN or A.B.C.D)")]
    Syntax(String),
    #[error("{0}: the prefix length must be 0..=32")]
    Length(String),
    #[error("{0} is an IPv6 prefix; only IPv4 prefixes are supported (for now)")]
    Ipv6(String),
    #[error("{given} has host bits set; did you mean {normalised}?")]
    HostBits { given: String, normalised: Ipv4Net },
}

impl CidrError {
    /// What would have been accepted instead, for a message that names the flag the prefix came
    /// from (lbctl: `invalid CIDR '10.0.0.1/8': expected {this}`).
    pub fn expected(&self) -> String {
        match self {
            CidrError::Syntax(_) => "an IPv4 prefix A.B.C.D/LEN or an address A.B.C.D".into(),
            CidrError::Length(_) => "an IPv4 prefix with a length of 0..32".into(),
            CidrError::Ipv6(_) => "an IPv4 prefix (IPv6 is not supported yet)".into(),
            CidrError::HostBits { normalised, .. } => {
                format!("a prefix without host bits set (did you mean {normalised}?)")
            }
        }
    }
}

/// Parses a prefix: `A.B.C.D/LEN` with no host bits set, or a bare `A.B.C.D` (a /32).
///
/// `10.0.0.1/8` is refused rather than silently widened: the suggestion in the error is the
/// prefix the operator probably meant, and a typo in a block list should not block a /8.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, CidrError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: Ipv4Addr = match addr.parse() {
        Ok(a) => a,
        Err(_) if addr.parse::<std::net::Ipv6Addr>().is_ok() => {
            return Err(CidrError::Ipv6(s.to_string()))
        }
        Err(_) => return Err(CidrError::Syntax(s.to_string())),
    };
    let len = match len {
        None => 32,
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => match l.parse() {
            Ok(n) if n <= 32 => n,
            _ => return Err(CidrError::Length(s.to_string())),
        },
        Some(_) => return Err(CidrError::Syntax(s.to_string())),
    };
    let net = Ipv4Net::new(addr, len).map_err(|_| CidrError::Length(s.to_string()))?;
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: s.to_string(),
            normalised: net.trunc(),
        });
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_says_what_would_have_been_accepted() {
        let expected = |s: &str| parse_cidr(s).expect_err("refused").expected();
        assert_eq!(
            expected("10.0.0.1/8"),
            "a prefix without host bits set (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            expected("10.0.0.0/33"),
            "an IPv4 prefix with a length of 0..32"
        );
        assert_eq!(
            expected("2001:db8::/32"),
            "an IPv4 prefix (IPv6 is not supported yet)"
        );
        assert_eq!(
            expected("10.0.0/8"),
            "an IPv4 prefix A.B.C.D/LEN or an address A.B.C.D"
        );
    }
}
