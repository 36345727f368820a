//! `p2c`: power of two random choices (the default in Envoy and linkerd). Two distinct ready servers
//! are drawn at random and the one with fewer in-flight requests relative to its weight wins. It
//! avoids both the herd behaviour of a global least-connection scan under stale counts and its O(n)
//! cost: `pick` is O(1) while servers are ready.

use super::least_conn::least_loaded;
use super::rng::Rng;
use super::{PickCtx, Strategy, Upstreams};

/// Draws before falling back to a full scan (when many servers are not ready).
const DRAWS: usize = 8;

/// Power of two choices by in-flight load.
#[derive(Debug)]
pub struct P2c {
    rng: Rng,
}

impl P2c {
    /// P2c drawing from `rng`.
    pub fn new(rng: Rng) -> Self {
        Self { rng }
    }
}

impl Strategy for P2c {
    fn pick(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        let n = ups.len();
        match n {
            0 => return None,
            1 => return ups.is_ready(0).then_some(0),
            _ => {}
        }
        let mut first = None;
        for _ in 0..DRAWS {
            let i = self.rng.below(n);
            if !ups.is_ready(i) || first == Some(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(a) => return least_loaded([a, i].into_iter(), ups),
            }
        }
        // Most draws hit servers that are not ready: compare all ready servers from a random start.
        let start = self.rng.below(n);
        least_loaded((start..n).chain(0..start), ups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{client, ctx_parts, pool};

    #[test]
    fn sends_most_requests_away_from_a_busy_server() {
        let ups = pool(&[1, 1, 1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| ups[0].stats.begin(&Default::default())).collect();
        let p2c = P2c::new(Rng::new(3));
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let mut counts = [0usize; 4];
        for _ in 0..4_000 {
            counts[p2c.pick(&ctx, Upstreams(&ups)).unwrap()] += 1;
        }
        // The busy server wins only when drawn twice... which p2c never does (distinct draws).
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1..].iter().all(|&c| c > 1_000), "{counts:?}");
    }

    #[test]
    fn skips_unready_and_handles_tiny_pools() {
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let p2c = P2c::new(Rng::new(5));
        let ups = pool(&[0, 0, 0, 1]);
        assert!((0..100).all(|_| p2c.pick(&ctx, Upstreams(&ups)) == Some(3)));
        assert_eq!(p2c.pick(&ctx, Upstreams(&pool(&[0, 0]))), None);
        assert_eq!(p2c.pick(&ctx, Upstreams(&pool(&[2]))), Some(0));
    }
}
