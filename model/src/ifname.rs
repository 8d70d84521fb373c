//! Interface names as Linux allows them (`backend-setup --dev`: the name also becomes a directory
//! of pins under bpffs), checked the same way by lbctl and by backend-setup.

/// 1..15 bytes (IFNAMSIZ less the NUL), not `.` or `..`, no `/`, `:` or white space.
pub fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::is_interface_name;

    #[test]
    fn linux_names() {
        for ok in ["eth0", "ens3f0.100", "fifteen-bytes-x", "lo"] {
            assert!(is_interface_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "eth0:1", "e th0", "sixteen-bytes-xx"] {
            assert!(!is_interface_name(bad), "{bad:?}");
        }
    }
}
