//! The control plane: background tasks that watch the cluster and publish the
//! topology. Probers ([`monitor`]) only report; the failover state machine
//! ([`failover`]) owns health, epochs and fences; the driver ([`driver`]) is
//! the single writer that feeds it, carries out its actions and publishes
//! the snapshot read off its state ([`snapshot`], [`lag`]), along with the
//! catalog of VOLATILE functions loaded from the primary ([`functions`],
//! kept current by the [`refresher`]), and the primary's WAL position that
//! `read-after-commit` reads wait for ([`commits`]).
//! Nothing here is on a client's request path; the data plane only reads
//! what it publishes, and the admin console talks to the driver through a
//! [`ControlHandle`]. The proxy ([`crate::proxy`]) wires it all.

pub mod commits;
pub mod driver;
pub mod epoch;
pub mod etcd;
pub mod failover;
pub mod fencing;
pub mod functions;
pub mod handle;
pub mod journal;
pub mod lag;
pub mod monitor;
pub mod operator;
pub mod peers;
pub mod refresher;
pub mod snapshot;

pub use epoch::{EpochRecord, EpochStore, EpochStoreError, MemoryStore, StateFile};
pub use functions::{FunctionCatalog, VolatileSet};
pub use handle::{Command, ControlHandle};
