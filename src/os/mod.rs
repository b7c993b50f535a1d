//! The thin OS layer: every syscall corral makes lives below here, each door rooted at a parameter.

pub mod cgroup;
pub mod control_socket;
pub mod dir_scan;
pub mod fd_closer;
pub mod heap;
pub mod log_file;
pub mod namespaces;
pub mod notify;
pub mod owned_path;
pub mod pid1;
pub mod pidfd;
pub mod poller;
pub mod probe;
pub mod process_group;
pub mod reaper;
pub mod signals;
pub mod spawn;
pub mod watch;
