//! The pure core: unit state machines, restart policy, backoff and dependency order; no syscalls, no clock.

pub mod backoff;
pub mod cgroup_plan;
pub mod container;
pub mod exit;
pub mod instances;
pub mod limit_watch;
pub mod log_rotation;
pub mod notify;
pub mod notify_refusals;
pub mod oom;
pub mod pressure;
pub mod reload;
pub mod selection;
pub mod service;
pub mod signal;
pub mod supervisor;
mod unit_table;

#[cfg(test)]
pub mod fixtures;
pub mod graph;
