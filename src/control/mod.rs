//! The control plane: background tasks that watch the cluster and publish the
//! topology, the failover state machine and the epoch store behind it, and
//! the catalog of VOLATILE functions loaded from the primary.
//! Nothing here is on a client's request path; the data plane only reads
//! what it publishes.

pub mod driver;
pub mod epoch;
pub mod failover;
pub mod fencing;
pub mod functions;
pub mod monitor;
pub mod operator;

pub use epoch::{EpochRecord, EpochStore, EpochStoreError, StateFile};
pub use functions::{FunctionCatalog, VolatileSet};
pub use monitor::Monitor;
