//! The Spinup model. One vocabulary for every driver: environments,
//! sandboxes, processes, resources and what a driver can do.
//!
//! Nothing here knows about runc, runsc or QEMU; drivers implement
//! [`driver::Driver`] and declare [`driver::Capabilities`].

pub mod driver;
pub mod error;
pub mod id;
pub mod network;
pub mod sandbox;

pub use driver::{AgentIo, AgentStream, Capabilities, Driver, DriverStatus, GuestNet, IsolationClass, SandboxSpec};
pub use error::{Error, Result};
pub use id::SandboxId;
pub use network::{Cidr, NetMode, NetworkPolicy};
pub use sandbox::{
    validate_id, validate_label, validate_secret_name, validate_snapshot_name, Environment, EnvironmentConfig, NetSlot,
    OnTimeout, PortExposure, Resources, Sandbox, SandboxState, SecretMode, SecretMount, Snapshot,
};

/// Milliseconds since the Unix epoch; the one clock the store uses.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
