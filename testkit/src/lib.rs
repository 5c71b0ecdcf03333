//! Palisade's test kit: what the integration tests and `palisade demo` need
//! around the proxy, and nothing the proxy itself runs on.
//!
//! [`cluster`] starts real local PostgreSQL clusters (a primary and
//! streaming replicas from the machine's binaries) and stops, kills, freezes
//! and rewinds their nodes; [`relay`] puts a TCP relay that cuts, blocks and
//! heals connections between a client and a server; [`wire`] speaks the
//! protocol byte by byte for the tests that send what no driver would.
//! [`signal`] names the signals tests send to servers; [`tls`] makes
//! certificates at run time. This crate does not
//! depend on `palisade`: the `palisade` binary uses it for its demo.

pub mod cluster;
pub mod relay;
pub mod signal;
pub mod tls;
pub mod wire;

pub use cluster::{
    find_etcd, find_pg_bin, ClusterError, ClusterOptions, LocalCluster, LocalEtcd, LocalNode,
};
pub use relay::FaultyRelay;
