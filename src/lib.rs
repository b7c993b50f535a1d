//! corral: a Linux workload supervisor: PID-1-capable init and service manager with cgroups and namespaces.

pub mod client;
pub mod core;
pub mod daemon;
pub mod escape;
pub mod export;
pub mod metrics;
pub mod os;
pub mod proto;
pub mod unit;
