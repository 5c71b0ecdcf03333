//! Palisade: a PostgreSQL-wire-compatible proxy for a replicated cluster.
//!
//! The data plane (per client): [`frontend`] takes a connection through
//! startup and authentication, [`route`] picks a node from the published
//! [`topology`], [`backend`] opens (or reuses) the server connection, and the
//! session relays raw frames until the client leaves. Only the messages that
//! carry state are decoded ([`protocol`]). [`classify`] turns statement text
//! into Read/Write and the session effects the read/write split will route by.
//!
//! The control plane ([`control`]) probes every node on its own connections
//! and is the single writer of the topology snapshot the data plane reads.
//! [`admin`] is the console behind the virtual database `palisade`;
//! [`http`] the monitoring endpoint (metrics, health checks, status page);
//! [`tls`] is TLS on both sides (rustls).
//! [`proxy::Proxy`] assembles both.
//!
//! The test harness is not here: local PostgreSQL clusters, fault injection
//! and raw-wire helpers live in the `palisade-testkit` crate beside this
//! one, which the integration tests and the binary's `palisade demo` use.

pub mod admin;
pub mod backend;
pub mod classify;
pub mod config;
pub mod control;
pub mod frontend;
pub mod http;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod tls;
pub mod topology;
