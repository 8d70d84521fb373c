//! The names of the model's fieldless enums (protocols, modes, actions, scopes): one table per
//! enum gives both its `Display` and its case-insensitive `FromStr`.

/// `impl Display` (each variant's first name) and `impl FromStr` (any of its names, in any case;
/// the error names the `what` and lists the first names) for a fieldless enum:
/// `named_enum!(Mode, "mode", { Nat => "nat", L2dsr => "l2dsr" | "l2-dsr" });`
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_lowercase().as_str() {
                    $($name $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err(format!(
                        "unknown {} '{s}' ({})",
                        $what,
                        $crate::names::one_of(&[$($name),+])
                    )),
                }
            }
        }
    };
}
pub(crate) use named_enum;

/// `a`, `a or b`, `a, b or c`.
pub(crate) fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::one_of;

    #[test]
    fn lists_read_as_prose() {
        assert_eq!(one_of(&["tcp"]), "tcp");
        assert_eq!(one_of(&["tcp", "udp"]), "tcp or udp");
        assert_eq!(one_of(&["nat", "l2dsr", "ipip"]), "nat, l2dsr or ipip");
    }
}
