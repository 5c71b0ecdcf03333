//! The control plane: background tasks that watch the cluster and publish the
//! topology. Nothing here is on a client's request path.

pub mod monitor;

pub use monitor::Monitor;
