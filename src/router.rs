//! Host and path-prefix routing to a pool, at a cost that does not grow with the number of routes.
//!
//! The rule (docs/configuration.md, `[[routes]]`): the most specific route wins. Exact host before
//! wildcard host (the longer wildcard first) before no host; within each host, the longer path
//! prefix first, matched on segment boundaries (`/api` matches `/api` and `/api/x`, never `/apix`),
//! then the `/` prefix, then a route without prefix. A host whose routes match none of the path
//! falls through to the wildcards and then to the host-less routes, exactly as an ordered scan of
//! the routes would (that scan, [`scan::ScanRouter`], is kept in tests as the reference).
//!
//! The index is built once per snapshot:
//! * every distinct host (exact name, or wildcard suffix such as `.example.com`) and the host-less
//!   routes form a *group*, which holds the group's catch-all pool (`/` or no prefix);
//! * exact names and wildcard suffixes sit in two hash tables keyed by a case-folding hash taken
//!   over the name *backwards*, so one backward pass over the request host yields the keys of the
//!   whole host and of every dot-suffix (`.b.example.com`, `.example.com`, `.com`) at once;
//! * each wildcard group links to the next shorter wildcard that also matches any host it matches,
//!   so the fall-through order (longer wildcard first) needs no sorting or scratch space at lookup;
//! * path prefixes of all groups share one hash table keyed by (group, prefix); a lookup hashes the
//!   path forward once and probes at each `/` boundary, up to the group's longest prefix.
//!
//! A lookup therefore costs one pass over the host, at most one pass over the path per group tried
//! (an exact host, its wildcards, the host-less group) and a few table probes, whatever the number
//! of routes. It never allocates and never panics: hash hits are verified against the stored string
//! (case-insensitively for hosts, as the scan compares), and hash collisions are chained.
//!
//! Routes are expected as config validation makes them: exact names and wildcard suffixes in ASCII
//! (compared case-insensitively), path prefixes either `/` or starting with `/` without a trailing
//! `/`, no two routes with the same host and prefix (if there are, the first one given wins).

use std::collections::hash_map::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::{HostMatch, RouteConfig};

#[cfg(test)]
mod scan;
#[cfg(test)]
mod tests;

/// The end of a chain, or no group.
const NIL: usize = usize::MAX;

/// The compiled routing table of one snapshot.
#[derive(Clone)]
pub struct Router {
    /// Exact host name key -> first group of that key (chained through [`Group::next`]).
    exact: Table,
    /// Wildcard suffix key (`.example.com`) -> first group of that key.
    wildcard: Table,
    /// Lengths of the wildcard suffixes, as a bit set: dot-suffixes of other lengths are not probed.
    wildcard_lens: Box<[u64]>,
    /// The group of the routes without host, or [`NIL`].
    any: usize,
    /// Every group: exact hosts, wildcard suffixes and the host-less group.
    groups: Box<[Group]>,
    /// (group, path prefix) key -> first prefix of that key (chained through [`Prefix::next`]).
    prefix_table: Table,
    /// Every path prefix other than `/`.
    prefixes: Box<[Prefix]>,
    /// Lengths of all path prefixes, as a bit set: path boundaries of other lengths are not probed.
    prefix_lens: Box<[u64]>,
}

/// The routes of one host (or of no host).
#[derive(Clone, Debug)]
struct Group {
    /// Lower-case exact name, or wildcard suffix with its leading dot; empty for the host-less group.
    name: Box<str>,
    /// The next group whose name has the same key, or [`NIL`].
    next: usize,
    /// Wildcard groups: the next shorter wildcard group that is a suffix of this one, or [`NIL`].
    shorter: usize,
    /// Pool of the `/` prefix if any, else of the route without prefix; [`NIL`] if neither.
    fallback: usize,
    /// Length of the longest prefix in [`Router::prefixes`] of this group; 0 if none.
    longest: usize,
}

/// One path prefix of one group.
#[derive(Clone, Debug)]
struct Prefix {
    path: Box<str>,
    group: usize,
    pool: usize,
    /// The next prefix with the same key, or [`NIL`].
    next: usize,
}

/// Tables keyed by an already mixed 64-bit hash (see [`finish`]): hashing it again would be waste.
type Table = HashMap<u64, usize, BuildHasherDefault<KeyHasher>>;

/// Passes a `u64` key through unchanged. Keys are [`finish`]ed hashes of configured names; a
/// request only ever looks keys up, so it cannot lengthen any chain.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u64` keys; hashing anyway keeps the type correct for any key.
        self.0 = bytes.iter().fold(self.0 ^ SEED, |h, &b| step(h, b));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

// FNV-1a, one byte at a time: a hash that can be extended by one byte is what lets one pass over a
// host or path give the key of every suffix or prefix. `finish` mixes the state for the table.
const SEED: u64 = 0xcbf2_9ce4_8422_2325;

#[inline]
fn step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The murmur3 64-bit finaliser: spreads FNV's state over all bits (the table uses both ends).
#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Key of a host name or wildcard suffix: case-folded, taken from the last byte to the first.
fn host_key(name: &str) -> u64 {
    finish(name.bytes().rev().fold(SEED, |h, b| step(h, b.to_ascii_lowercase())))
}

/// Start state of the path hash in `group`, so that equal prefixes of different groups differ.
#[inline]
fn prefix_seed(group: usize) -> u64 {
    SEED ^ (group as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn prefix_key(group: usize, prefix: &str) -> u64 {
    finish(prefix.bytes().fold(prefix_seed(group), step))
}

#[inline]
fn has_len(set: &[u64], len: usize) -> bool {
    set.get(len / 64).is_some_and(|word| word >> (len % 64) & 1 == 1)
}

fn add_len(set: &mut Vec<u64>, len: usize) {
    if set.len() <= len / 64 {
        set.resize(len / 64 + 1, 0);
    }
    if let Some(word) = set.get_mut(len / 64) {
        *word |= 1 << (len % 64);
    }
}

/// The group in `table` named `name` (case-insensitively), following the collision chain.
fn find(table: &Table, groups: &[Group], key: u64, name: &str) -> Option<usize> {
    let mut g = *table.get(&key)?;
    while let Some(group) = groups.get(g) {
        if group.name.eq_ignore_ascii_case(name) {
            return Some(g);
        }
        g = group.next;
    }
    None
}

impl Router {
    /// Builds the index of config routes (validated; see the module docs). Costs time and memory
    /// linear in the routes.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut exact = Table::default();
        let mut wildcard = Table::default();
        let mut wildcard_lens = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        // Per group: pool of the `/` prefix, pool of the route without prefix (first given wins).
        let mut catch_all: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        let mut any = NIL;
        let mut prefix_table = Table::default();
        let mut prefixes: Vec<Prefix> = Vec::new();
        let mut prefix_lens = Vec::new();
        for route in routes {
            let (table, name) = match &route.host {
                None => (None, ""),
                Some(HostMatch::Exact(name)) => (Some(&mut exact), name.as_str()),
                Some(HostMatch::Suffix(suffix)) => (Some(&mut wildcard), suffix.as_str()),
            };
            let existing = match &table {
                None => (any != NIL).then_some(any),
                Some(table) => find(table, &groups, host_key(name), name),
            };
            let g = existing.unwrap_or_else(|| {
                let g = groups.len();
                let next = match table {
                    None => {
                        any = g;
                        NIL
                    }
                    Some(table) => table.insert(host_key(name), g).unwrap_or(NIL),
                };
                if matches!(route.host, Some(HostMatch::Suffix(_))) {
                    add_len(&mut wildcard_lens, name.len());
                }
                groups.push(Group {
                    name: name.to_ascii_lowercase().into(),
                    next,
                    shorter: NIL,
                    fallback: NIL,
                    longest: 0,
                });
                catch_all.push((None, None));
                g
            });
            let Some((slash, none)) = catch_all.get_mut(g) else { continue };
            match route.path_prefix.as_deref() {
                Some("/") => *slash = slash.or(Some(route.pool)),
                None => *none = none.or(Some(route.pool)),
                Some(path) => {
                    let key = prefix_key(g, path);
                    let mut e = prefix_table.get(&key).copied().unwrap_or(NIL);
                    let mut duplicate = false;
                    while let Some(p) = prefixes.get(e) {
                        duplicate |= p.group == g && *p.path == *path;
                        e = p.next;
                    }
                    if !duplicate {
                        let next = prefix_table.insert(key, prefixes.len()).unwrap_or(NIL);
                        prefixes.push(Prefix { path: path.into(), group: g, pool: route.pool, next });
                        add_len(&mut prefix_lens, path.len());
                        if let Some(group) = groups.get_mut(g) {
                            group.longest = group.longest.max(path.len());
                        }
                    }
                }
            }
        }
        for (group, (slash, none)) in groups.iter_mut().zip(catch_all) {
            group.fallback = slash.or(none).unwrap_or(NIL);
        }
        // Link each wildcard to the next shorter one it ends with: `.a.example.com` to
        // `.example.com` (if configured), which any host matching the first also matches.
        let shorter: Vec<usize> = groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let is_wildcard = find(&wildcard, &groups, host_key(&group.name), &group.name) == Some(g);
                let name = &group.name;
                let dots = name.bytes().enumerate().skip(1).filter(|&(_, b)| b == b'.');
                is_wildcard
                    .then(|| {
                        dots.filter_map(|(i, _)| name.get(i..))
                            .find_map(|suffix| find(&wildcard, &groups, host_key(suffix), suffix))
                    })
                    .flatten()
                    .unwrap_or(NIL)
            })
            .collect();
        for (group, shorter) in groups.iter_mut().zip(shorter) {
            group.shorter = shorter;
        }
        exact.shrink_to_fit();
        wildcard.shrink_to_fit();
        prefix_table.shrink_to_fit();
        Self {
            exact,
            wildcard,
            wildcard_lens: wildcard_lens.into(),
            any,
            groups: groups.into(),
            prefix_table,
            prefixes: prefixes.into(),
            prefix_lens: prefix_lens.into(),
        }
    }

    /// Index of the pool for a request with this host (may include a port) and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if let Some(host) = host {
            let (exact, mut wildcard) = self.host_groups(strip_port(host).trim_end_matches('.'));
            if let Some(pool) = self.in_group(exact, path) {
                return Some(pool);
            }
            while let Some(group) = self.groups.get(wildcard) {
                if let Some(pool) = self.in_group(wildcard, path) {
                    return Some(pool);
                }
                wildcard = group.shorter;
            }
        }
        self.in_group(self.any, path)
    }

    /// The exact group of `host` and its longest matching wildcard group ([`NIL`] for none), from
    /// one backward pass over the host.
    fn host_groups(&self, host: &str) -> (usize, usize) {
        if self.exact.is_empty() && self.wildcard.is_empty() {
            return (NIL, NIL);
        }
        let bytes = host.as_bytes();
        let mut h = SEED;
        let mut wildcard = NIL;
        for (i, &b) in bytes.iter().enumerate().rev() {
            let b = b.to_ascii_lowercase();
            h = step(h, b);
            // `h` is now the key state of `host[i..]`. A wildcard needs a longer host, so the dot
            // at 0 is not a candidate. Later (more left) matches are longer, so they win.
            if b == b'.' && i > 0 && has_len(&self.wildcard_lens, bytes.len() - i) {
                if let Some(g) = host.get(i..).and_then(|s| find(&self.wildcard, &self.groups, finish(h), s))
                {
                    wildcard = g;
                }
            }
        }
        let exact = find(&self.exact, &self.groups, finish(h), host).unwrap_or(NIL);
        (exact, wildcard)
    }

    /// The pool `group` gives `path`: its longest matching prefix, else its catch-all, else none.
    fn in_group(&self, g: usize, path: &str) -> Option<usize> {
        let group = self.groups.get(g)?;
        if group.longest > 0 {
            let bytes = path.as_bytes();
            let mut h = prefix_seed(g);
            let mut best = None;
            // `h` is the key state of `path[..i]`; a prefix matches when it ends on a boundary: a
            // `/` or the end of the path. Later matches are longer, so they win.
            for (i, &b) in bytes.iter().enumerate() {
                if i > group.longest {
                    break;
                }
                if b == b'/' && has_len(&self.prefix_lens, i) {
                    best = self.prefix(finish(h), g, bytes.get(..i).unwrap_or_default()).or(best);
                }
                h = step(h, b);
            }
            if bytes.len() <= group.longest && has_len(&self.prefix_lens, bytes.len()) {
                best = self.prefix(finish(h), g, bytes).or(best);
            }
            if best.is_some() {
                return best;
            }
        }
        (group.fallback != NIL).then_some(group.fallback)
    }

    /// Pool of the prefix `path` of group `g`, if configured.
    fn prefix(&self, key: u64, g: usize, path: &[u8]) -> Option<usize> {
        let mut e = *self.prefix_table.get(&key)?;
        while let Some(prefix) = self.prefixes.get(e) {
            if prefix.group == g && prefix.path.as_bytes() == path {
                return Some(prefix.pool);
            }
            e = prefix.next;
        }
        None
    }
}

impl std::fmt::Debug for Router {
    // A snapshot of a large config would print every route: sizes say what matters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("exact_hosts", &self.exact.len())
            .field("wildcards", &self.wildcard.len())
            .field("any_host", &(self.any != NIL))
            .field("prefixes", &self.prefixes.len())
            .finish()
    }
}

/// The host without its port: `a.com:80` -> `a.com`, `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}
