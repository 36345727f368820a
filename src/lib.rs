//! lb: an HTTP reverse proxy and layer-7 load balancer.
//!
//! The path of a request: [`server`] accepts and speaks HTTP with hyper, [`proxy`] routes it with the
//! current [`runtime::Snapshot`] ([`router`]), asks the pool's [`balance::Strategy`] for a server
//! ([`upstream`]), forwards it over the pooled client and streams the answer back. [`config`] turns
//! `lb.toml` into the typed [`config::Config`] a snapshot is built from. See docs/architecture.md.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod balance;
pub mod cache;
pub mod config;
pub mod control;
pub mod edge;
pub mod health;
pub mod launch;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod slots;
pub mod stall;
pub mod sticky;
pub mod tls;
pub mod traffic;
pub mod upgrade;
pub mod upstream;
