//! The integration tests: one binary, one shared PostgreSQL cluster (a
//! primary and two streaming replicas, started on first use) that every
//! test leaves as it found it. Tests that make replicas lag take turns on a
//! second cluster (`support::lagging_cluster`), and tests that crash a
//! server start one of their own. The failover tests, which kill and
//! freeze primaries, are a binary of their own (`tests/failover.rs`).

#[path = "../support/mod.rs"]
mod support;

mod auth_query;
mod balance;
mod browser;
mod catalog;
mod cluster;
mod commits;
mod consistency;
mod console;
mod drain;
mod drivers;
mod failures;
mod http;
mod limits;
mod pool;
mod relay;
mod reload;
mod routing;
mod security;
mod tls;
mod tools;
