//! `limits.max_connections_per_client`: open client connections counted by client address, so that
//! one client cannot hold every slot of `limits.max_connections` (nginx's `limit_conn` on
//! `$binary_remote_addr`, HAProxy's `src_conn_cur`). The client is the peer, or the address a
//! PROXY protocol header names. IPv6 clients count by their /64, as rate limits do by default: one
//! host often holds a whole /64 and can pick a new address in it for every connection.
//!
//! A client appears here only while it has a connection open, so the table holds at most
//! `limits.max_connections` entries. The counts outlive reloads (the table belongs to the server,
//! not to a config), so lowering the limit refuses new connections of a client already above it and
//! leaves its open ones alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Locks the table is split over: accepts on different workers rarely wait for each other.
const SHARDS: usize = 16;

/// The open connections of each client that has any.
#[derive(Debug, Default)]
pub(crate) struct ClientConns {
    shards: [Mutex<HashMap<u128, u32>>; SHARDS],
}

/// One open connection of a client, counted until dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    conns: Arc<ClientConns>,
    key: u128,
}

impl ClientConns {
    /// Counts a new connection from `ip`, unless the client already has `limit` open (`None`).
    pub(crate) fn open(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut shard = self.shard(key);
        let count = shard.entry(key).or_insert(0);
        if usize::try_from(*count).is_ok_and(|c| c >= limit) {
            if *count == 0 {
                shard.remove(&key);
            }
            return None;
        }
        *count = count.saturating_add(1);
        Some(ClientSlot { conns: Arc::clone(self), key })
    }

    /// Clients with at least one connection open.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, u32>> {
        // The shard only spreads lock traffic; the map inside hashes the key with its own keyed hasher.
        let folded = (key ^ (key >> 64)) as u64;
        let index = (folded ^ (folded >> 32)) as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut shard = self.conns.shard(self.key);
        if let Some(count) = shard.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// IPv4 addresses (IPv4-mapped IPv6 ones too) whole, in their mapped form; IPv6 addresses by their
/// /64. The two cannot meet: a mapped address has its low 64 bits set, a /64 has them clear.
fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits() & !u128::from(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_limit_and_a_closed_connection_frees_a_place() {
        let conns = Arc::new(ClientConns::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held: Vec<_> = (0..3).map(|_| conns.open(a, 3).unwrap()).collect();
        assert!(conns.open(a, 3).is_none());
        assert!(conns.open("192.0.2.2".parse().unwrap(), 3).is_some(), "another client");
        drop(held.pop());
        let again = conns.open(a, 3);
        assert!(again.is_some());
        assert!(conns.open(a, 3).is_none());
        assert!(conns.open(a, 4).is_some(), "a raised limit counts the same connections");
    }

    #[test]
    fn the_table_holds_only_clients_with_connections_open() {
        let conns = Arc::new(ClientConns::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = conns.open(a, 2).unwrap();
        let second = conns.open(a, 2).unwrap();
        assert_eq!(conns.clients(), 1);
        drop(first);
        assert_eq!(conns.clients(), 1);
        drop(second);
        assert_eq!(conns.clients(), 0);
        assert!(conns.open(a, 0).is_none(), "a refusal leaves nothing behind");
        assert_eq!(conns.clients(), 0);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let conns = Arc::new(ClientConns::default());
        let _one = conns.open("2001:db8:1:2::1".parse().unwrap(), 1).unwrap();
        assert!(conns.open("2001:db8:1:2:ffff::9".parse().unwrap(), 1).is_none(), "same /64");
        assert!(conns.open("2001:db8:1:3::1".parse().unwrap(), 1).is_some(), "next /64");
        let _v4 = conns.open("192.0.2.7".parse().unwrap(), 1).unwrap();
        assert!(conns.open("::ffff:192.0.2.7".parse().unwrap(), 1).is_none(), "mapped is the same client");
        assert!(conns.open("::".parse().unwrap(), 1).is_some(), "the zero /64 is not 0.0.0.0");
        assert!(conns.open("0.0.0.0".parse().unwrap(), 1).is_some());
    }
}
