//! Edge policy: who the client really is when lb is not the first hop (the PROXY protocol, trusted
//! forwarded headers), and what a route lets through before a server sees the request (access
//! lists, basic auth, redirects, prefix rewrites, header rules). docs/edge.md is the operator's view.

pub mod auth;
pub mod cidr;
pub mod client_addr;
pub mod header_rules;
pub mod policy;
pub mod proxy_protocol;
