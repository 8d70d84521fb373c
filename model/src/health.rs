//! The health-check spec of a VIP (part of the desired state): what a probe does, how often,
//! the rise/fall counts, what happens when every backend is down, and its validation.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{invalid, StateError};

/// Shortest probe interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest probe interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest rise or fall count accepted.
pub const MAX_COUNT: u32 = 100;
/// Longest HTTP path and UDP payload accepted, in bytes.
pub const MAX_PROBE_BYTES: usize = 1024;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthKind {
    /// Not checked: every backend counts as up.
    #[default]
    None,
    /// A TCP connect within the timeout.
    Tcp,
    /// Connect, `GET path HTTP/1.0` with a Host header; the status must be `expect_status`.
    Http {
        path: String,
        #[serde(default = "default_expect_status")]
        expect_status: u16,
    },
    /// Send `payload`; any reply within the timeout.
    Udp {
        #[serde(default = "default_payload")]
        payload: String,
    },
}

fn default_expect_status() -> u16 {
    200
}

/// The UDP payload of a check that names none.
pub fn default_payload() -> String {
    "ping".to_string()
}

impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthKind::None => f.write_str("none"),
            HealthKind::Tcp => f.write_str("tcp"),
            HealthKind::Http {
                path,
                expect_status,
            } => write!(f, "http:{path} (expect {expect_status})"),
            HealthKind::Udp { .. } => f.write_str("udp"),
        }
    }
}

/// What a VIP does when every backend with a weight is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// Keep them all in the Maglev table (a health checker that is wrong must not take a
    /// service down).
    #[default]
    FailOpen,
    /// Build no table: new flows are dropped as `drop_no_backend`.
    Drop,
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllDown::FailOpen => "fail-open",
            AllDown::Drop => "drop",
        })
    }
}

/// The health check of one VIP's backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// Time between two probes of one backend.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take; below `interval`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Good probes in a row that bring a down backend back.
    pub rise: u32,
    /// Failed probes in a row that take a backend out.
    pub fall: u32,
    pub all_down: AllDown,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: HealthKind::None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            all_down: AllDown::FailOpen,
        }
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == HealthKind::None {
            return f.write_str("none");
        }
        write!(
            f,
            "{} every {}, timeout {}, rise {}, fall {}, all down: {}",
            self.kind,
            humantime::format_duration(self.interval),
            humantime::format_duration(self.timeout),
            self.rise,
            self.fall,
            self.all_down
        )
    }
}

impl HealthCheck {
    /// Whether backends are probed at all.
    pub fn is_checked(&self) -> bool {
        self.kind != HealthKind::None
    }

    /// Checks every field (also of an unchecked VIP, whose values are kept for later); errors
    /// name the field of the API's `HealthCheck` message.
    pub fn validate(&self) -> Result<(), StateError> {
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            return Err(invalid(
                "health.interval_ms",
                format!(
                    "{} is outside {}..={}",
                    ms(self.interval),
                    ms(MIN_INTERVAL),
                    ms(MAX_INTERVAL)
                ),
            ));
        }
        if self.timeout.is_zero() || self.timeout >= self.interval {
            return Err(invalid(
                "health.timeout_ms",
                format!(
                    "{} must be above 0 and below the interval {}",
                    ms(self.timeout),
                    ms(self.interval)
                ),
            ));
        }
        for (field, n) in [("health.rise", self.rise), ("health.fall", self.fall)] {
            if !(1..=MAX_COUNT).contains(&n) {
                return Err(invalid(field, format!("{n} is outside 1..={MAX_COUNT}")));
            }
        }
        match &self.kind {
            HealthKind::None | HealthKind::Tcp => {}
            HealthKind::Http {
                path,
                expect_status,
            } => {
                if !path.starts_with('/') {
                    return Err(invalid(
                        "health.http_path",
                        format!("'{path}' must start with '/'"),
                    ));
                }
                if path.len() > MAX_PROBE_BYTES || !path.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(
                        "health.http_path",
                        format!(
                            "must be at most {MAX_PROBE_BYTES} printable ASCII characters without spaces"
                        ),
                    ));
                }
                if !(100..=599).contains(expect_status) {
                    return Err(invalid(
                        "health.http_expect_status",
                        format!("{expect_status} is not an HTTP status (100..=599)"),
                    ));
                }
            }
            HealthKind::Udp { payload } => {
                if payload.is_empty() || payload.len() > MAX_PROBE_BYTES {
                    return Err(invalid(
                        "health.udp_payload",
                        format!("must be 1..={MAX_PROBE_BYTES} bytes"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(c: &HealthCheck) -> &'static str {
        match c.validate() {
            Err(StateError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = HealthCheck {
            kind: HealthKind::Tcp,
            ..HealthCheck::default()
        };
        ok.validate().expect("defaults are valid");
        let ms = Duration::from_millis;
        let bad = |f: &dyn Fn(&mut HealthCheck)| {
            let mut c = ok.clone();
            f(&mut c);
            field(&c)
        };
        assert_eq!(bad(&|c| c.interval = ms(99)), "health.interval_ms");
        assert_eq!(
            bad(&|c| c.interval = Duration::from_secs(3601)),
            "health.interval_ms"
        );
        assert_eq!(bad(&|c| c.timeout = ms(1000)), "health.timeout_ms");
        assert_eq!(bad(&|c| c.timeout = ms(0)), "health.timeout_ms");
        assert_eq!(bad(&|c| c.rise = 0), "health.rise");
        assert_eq!(bad(&|c| c.fall = 101), "health.fall");
        let http = |path: &str, status| HealthKind::Http {
            path: path.into(),
            expect_status: status,
        };
        assert_eq!(bad(&|c| c.kind = http("healthz", 200)), "health.http_path");
        assert_eq!(bad(&|c| c.kind = http("/a b", 200)), "health.http_path");
        assert_eq!(
            bad(&|c| c.kind = http("/x\r\nHost: y", 200)),
            "health.http_path"
        );
        assert_eq!(
            bad(&|c| c.kind = http("/healthz", 99)),
            "health.http_expect_status"
        );
        assert_eq!(
            bad(&|c| c.kind = HealthKind::Udp {
                payload: String::new()
            }),
            "health.udp_payload"
        );
        let mut c = ok.clone();
        c.kind = http("/healthz", 204);
        c.interval = ms(100);
        c.timeout = ms(99);
        c.validate().expect("100ms interval, 99ms timeout");
    }

    #[test]
    fn state_file_form_is_readable_and_defaults_apply() {
        let c = HealthCheck {
            kind: HealthKind::Http {
                path: "/healthz".into(),
                expect_status: 204,
            },
            interval: Duration::from_millis(200),
            ..HealthCheck::default()
        };
        let json = serde_json::to_string(&c).expect("serialize");
        assert_eq!(
            serde_json::from_str::<HealthCheck>(&json).expect("parse"),
            c
        );
        let short: HealthCheck =
            serde_json::from_str(r#"{"kind":{"type":"udp"}}"#).expect("defaults fill the rest");
        assert_eq!(
            short.kind,
            HealthKind::Udp {
                payload: "ping".into()
            }
        );
        assert_eq!(short.fall, 3);
    }

    #[test]
    fn display() {
        assert_eq!(HealthCheck::default().to_string(), "none");
        let c = HealthCheck {
            kind: HealthKind::Tcp,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            all_down: AllDown::Drop,
            ..HealthCheck::default()
        };
        assert_eq!(
            c.to_string(),
            "tcp every 200ms, timeout 100ms, rise 2, fall 3, all down: drop"
        );
    }
}
