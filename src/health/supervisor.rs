//! Keeps exactly one check task per server of every pool with `[health]`: started with the balancer,
//! reconciled on every config apply (new servers get a task, removed ones lose theirs, a changed
//! address or check restarts it), stopped on shutdown.

use super::check::{self, Target};
use crate::runtime::Snapshot;
use crate::upstream::UpstreamKey;
use std::collections::HashMap;
use tokio::task::AbortHandle;

/// The running check tasks.
#[derive(Debug)]
pub struct Checks {
    /// The runtime the tasks run on, so a reconcile may come from any thread.
    runtime: tokio::runtime::Handle,
    tasks: HashMap<UpstreamKey, (Target, AbortHandle)>,
}

impl Checks {
    /// No tasks yet; they will run on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Self { runtime, tasks: HashMap::new() }
    }

    /// Brings the tasks in line with `snap`. A pool without checks ignores their old DOWN verdicts
    /// (`Upstream::checked`), so nothing needs clearing here.
    pub fn reconcile(&mut self, snap: &Snapshot) {
        let mut wanted = HashMap::new();
        for pool in snap.pools.iter() {
            for u in pool.upstreams.iter() {
                let Some(check) = &pool.health else { continue };
                let target = Target {
                    key: u.key.clone(),
                    addr: u.addr.clone(),
                    check: check.clone(),
                    stats: std::sync::Arc::clone(&u.stats),
                    slow_start: pool.slow_start,
                    tls: u.tls.clone(),
                };
                wanted.insert(u.key.clone(), target);
            }
        }
        self.tasks.retain(|key, (running, handle)| {
            let keep = wanted.get(key).is_some_and(|t| same(t, running));
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, target) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.tasks.entry(key) {
                let handle = self.runtime.spawn(check::run(target.clone())).abort_handle();
                slot.insert((target, handle));
            }
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for (_, handle) in self.tasks.values() {
            handle.abort();
        }
    }
}

/// Whether a running task already checks `wanted` (same address, check and slow start, same state).
fn same(wanted: &Target, running: &Target) -> bool {
    wanted.addr == running.addr
        && wanted.check == running.check
        && wanted.slow_start == running.slow_start
        && pool_tls_same(&wanted.tls, &running.tls)
        && std::sync::Arc::ptr_eq(&wanted.stats, &running.stats)
}

/// Whether two checks use the same TLS. Settings are rebuilt with every config, so a TLS pool's
/// checks restart at each reload (keeping their verdict, as any restarted check does).
fn pool_tls_same(
    a: &Option<std::sync::Arc<crate::tls::ClientTls>>,
    b: &Option<std::sync::Arc<crate::tls::ClientTls>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.server_name == b.server_name && std::sync::Arc::ptr_eq(&a.config, &b.config),
        (None, None) => true,
        _ => false,
    }
}
