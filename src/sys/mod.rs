//! Basics below every stage: systemd notification, logging, memory, device
//! identity, secrets, durable file writes and the one backoff. Nothing here
//! imports a stage.

pub mod backoff;
pub mod credentials;
pub mod durable;
pub mod identity;
pub mod logging;
pub mod memory;
pub mod notify;
