//! The control plane: background tasks that watch the cluster and publish the
//! topology, and the catalog of VOLATILE functions loaded from the primary.
//! Nothing here is on a client's request path; the data plane only reads
//! what it publishes.

pub mod fencing;
pub mod functions;
pub mod monitor;

pub use functions::{FunctionCatalog, VolatileSet};
pub use monitor::Monitor;
