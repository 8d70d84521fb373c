//! Health checks of backends, split by concern:
//! - [`view`]: the live view of which backends are down (kept by the reconciler, never
//!   persisted) and the checker's counters;
//! - [`probe`]: one probe of a backend (TCP, HTTP, UDP);
//! - [`checker`]: the task that probes backends from the LB, counts rise/fall and reports
//!   transitions to the controller.
//!
//! The checker is an input like an operator: it never touches maps. When a backend's status
//! changes it calls [`crate::controller::Controller::set_health`], which updates the
//! [`view::HealthView`] and reconciles, so the affected Maglev tables are rebuilt without the
//! backend (or with it again). Established flows are never cut: the flow table keeps sending
//! them where they started. The check itself (`HealthCheck`) is desired state, in
//! `xdplb_model::health`.

pub mod checker;
pub(crate) mod probe;
pub(crate) mod view;
