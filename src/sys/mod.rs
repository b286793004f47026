//! Basics below every stage: systemd notification, logging, memory, device
//! identity, secrets, capped reads of files a config names, durable file writes, the one backoff and plane geometry. Nothing here
//! imports a stage.

pub mod backoff;
pub mod capped_read;
pub mod credentials;
pub mod durable;
pub mod geometry;
pub mod identity;
pub mod logging;
pub mod memory;
pub mod notify;
