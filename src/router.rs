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
//!   label by label from the *last* label, so one pass over the request host yields the keys of
//!   the whole host and of every dot-suffix (`.b.example.com`, `.example.com`, `.com`) at once;
//! * each wildcard group links to the next shorter wildcard that also matches any host it matches,
//!   so the fall-through order (longer wildcard first) needs no sorting or scratch space at lookup;
//! * path prefixes of all groups share one hash table keyed by (group, prefix); a lookup hashes the
//!   path forward once and probes at each `/` boundary, up to the group's longest prefix.
//!
//! A lookup therefore costs one pass over the host, at most one pass over the path per group tried
//! (an exact host, its wildcards, the host-less group) and a few table probes, whatever the number
//! of routes. It never allocates and never panics: hash hits are verified against the stored string
//! (case-insensitively for hosts, as the scan compares), so colliding keys only cost a probe.
//!
//! With 100,000 routes the tables outgrow the CPU caches, so the layout counts cache misses: the
//! tables are flat open-addressing arrays (one miss to reach a key and its group number), and names
//! and prefixes up to [`INLINE`] bytes live inside their group or prefix entry (one more miss),
//! not behind a pointer.
//!
//! Routes are expected as config validation makes them: exact names and wildcard suffixes in ASCII
//! (compared case-insensitively), path prefixes either `/` or starting with `/` without a trailing
//! `/`, no two routes with the same host and prefix (if there are, the first one given wins). A
//! table holds fewer than `u32::MAX` groups and prefixes (4 billion routes would not fit in memory
//! as config first).

use std::collections::HashMap;

use crate::config::{HostMatch, RouteConfig};

#[cfg(test)]
mod scan;
#[cfg(test)]
mod tests;

/// No group, no prefix, no wildcard link: an empty table slot or the end of a chain.
const NIL: u32 = u32::MAX;
/// No pool.
const NO_POOL: usize = usize::MAX;

/// The compiled routing table of one snapshot.
#[derive(Clone)]
pub struct Router {
    /// Exact host name key -> group.
    exact: Table,
    /// Wildcard suffix key (`.example.com`) -> group.
    wildcard: Table,
    /// Lengths of the wildcard suffixes, as a bit set: dot-suffixes of other lengths are not probed.
    wildcard_lens: Box<[u64]>,
    /// The group of the routes without host, or [`NIL`].
    any: u32,
    /// Every group: exact hosts, wildcard suffixes and the host-less group.
    groups: Box<[Group]>,
    /// (group, path prefix) key -> prefix.
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
    name: Name,
    /// Pool of the `/` prefix if any, else of the route without prefix; [`NO_POOL`] if neither.
    fallback: usize,
    /// Length of the longest prefix in [`Router::prefixes`] of this group; 0 if none.
    longest: u32,
    /// Wildcard groups: the next shorter wildcard group that is a suffix of this one, or [`NIL`].
    shorter: u32,
}

/// One path prefix of one group.
#[derive(Clone, Debug)]
struct Prefix {
    path: Name,
    pool: usize,
    group: u32,
}

/// Names and prefixes up to this many bytes are stored inline (most host names are shorter).
const INLINE: usize = 38;

/// A host name or path prefix, inline when short: reading it costs no pointer chase.
#[derive(Clone, Debug)]
enum Name {
    Short(u8, [u8; INLINE]),
    Long(Box<[u8]>),
}

impl Name {
    fn new(s: &[u8]) -> Self {
        let mut inline = [0; INLINE];
        match (inline.get_mut(..s.len()), u8::try_from(s.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(s);
                Name::Short(len, inline)
            }
            _ => Name::Long(s.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Name::Short(len, inline) => inline.get(..usize::from(*len)).unwrap_or_default(),
            Name::Long(bytes) => bytes,
        }
    }
}

/// A hash table from keys (already mixed 64-bit hashes, see [`finish`]) to entry numbers: open
/// addressing with linear probing in one flat array, at most half full, built once. Equal keys
/// (hash collisions) simply take several slots; lookups compare the entries they point to.
#[derive(Clone, Debug)]
struct Table {
    slots: Box<[Slot]>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u64,
    /// Entry number, or [`NIL`] for an empty slot.
    entry: u32,
}

impl Table {
    fn new(entries: &[(u64, u32)]) -> Self {
        // At least one slot stays empty, which ends every probe sequence.
        let size = (entries.len() * 2).max(1).next_power_of_two();
        let mut slots = vec![Slot { key: 0, entry: NIL }; size];
        let mask = size - 1;
        for &(key, entry) in entries {
            let mut i = key as usize & mask;
            while slots.get(i).is_some_and(|s| s.entry != NIL) {
                i = (i + 1) & mask;
            }
            if let Some(slot) = slots.get_mut(i) {
                *slot = Slot { key, entry };
            }
        }
        Self { slots: slots.into() }
    }

    /// The first entry under `key` that `found` accepts.
    #[inline]
    fn find(&self, key: u64, mut found: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = key as usize & mask;
        // Bounded by the table size, although an empty slot always comes first.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            if slot.entry == NIL {
                return None;
            }
            if slot.key == key && found(slot.entry) {
                return Some(slot.entry);
            }
            i = (i + 1) & mask;
        }
        None
    }

    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.entry != NIL).count()
    }
}

// Keys are built label by label (hosts, right to left) or segment by segment (paths, left to
// right), eight bytes per multiply: the state after each label or segment is the key state of the
// suffix or prefix that ends there, so one pass over a host or path gives the key of every
// dot-suffix or `/`-prefix. Each label or segment starts with its length, so boundaries count.
const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One word into the state (FxHash's step).
#[inline]
fn mix(h: u64, word: u64) -> u64 {
    (h.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// A host label (ASCII letters folded to lower case) or a path segment (as is) into the state.
#[inline]
fn absorb(h: u64, part: &[u8], fold_case: bool) -> u64 {
    part.chunks(8).fold(mix(h, part.len() as u64), |h, chunk| {
        let word = chunk.iter().rev().fold(0, |w, &b| {
            let b = if fold_case { b.to_ascii_lowercase() } else { b };
            (w << 8) | u64::from(b)
        });
        mix(h, word)
    })
}

/// The murmur3 64-bit finaliser: spreads the state over all bits (the table index uses the low
/// ones).
#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Key of a host name or wildcard suffix: its labels from the last to the first, case-folded.
fn host_key(name: &[u8]) -> u64 {
    finish(name.rsplit(|&b| b == b'.').fold(SEED, |h, label| absorb(h, label, true)))
}

/// Start state of the path hash in `group`, so that equal prefixes of different groups differ.
#[inline]
fn prefix_seed(group: u32) -> u64 {
    SEED ^ u64::from(group).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Key of a path prefix in a group: its segments from the first to the last.
fn prefix_key(group: u32, prefix: &[u8]) -> u64 {
    finish(prefix.split(|&b| b == b'/').fold(prefix_seed(group), |h, segment| absorb(h, segment, false)))
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

/// The group in `table` named `name` (case-insensitively).
#[inline]
fn find(table: &Table, groups: &[Group], key: u64, name: &[u8]) -> Option<u32> {
    table.find(key, |g| {
        groups.get(g as usize).is_some_and(|group| group.name.bytes().eq_ignore_ascii_case(name))
    })
}

/// Entry numbers are `u32` (see the module docs).
fn number(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(NIL)
}

impl Router {
    /// Builds the index of config routes (validated; see the module docs), answering each route's
    /// pool. Costs time and memory linear in the routes.
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self::with_targets(routes, |_, route| route.pool)
    }

    /// As [`Router::new`], but a match answers `target(index, route)` for the matching route: the
    /// runtime answers the route's own index, so a request finds its route's settings as well.
    pub fn with_targets(routes: &[RouteConfig], target: impl Fn(usize, &RouteConfig) -> usize) -> Self {
        // Build-time maps by name; lookups use the flat tables built from them at the end.
        let mut exact: HashMap<String, u32> = HashMap::new();
        let mut wildcard: HashMap<String, u32> = HashMap::new();
        let mut any = NIL;
        let mut groups: Vec<Group> = Vec::new();
        // Per group: pool of the `/` prefix, pool of the route without prefix (first given wins).
        let mut catch_all: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        let mut by_prefix: HashMap<(u32, &str), u32> = HashMap::new();
        let mut prefixes: Vec<Prefix> = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let answer = target(index, route);
            let g = match &route.host {
                None => {
                    if any == NIL {
                        any = number(groups.len());
                        groups.push(Group {
                            name: Name::new(b""),
                            fallback: NO_POOL,
                            longest: 0,
                            shorter: NIL,
                        });
                        catch_all.push((None, None));
                    }
                    any
                }
                Some(HostMatch::Exact(name) | HostMatch::Suffix(name)) => {
                    let names = if matches!(route.host, Some(HostMatch::Exact(_))) {
                        &mut exact
                    } else {
                        &mut wildcard
                    };
                    let name = name.to_ascii_lowercase();
                    *names.entry(name).or_insert_with_key(|name| {
                        groups.push(Group {
                            name: Name::new(name.as_bytes()),
                            fallback: NO_POOL,
                            longest: 0,
                            shorter: NIL,
                        });
                        catch_all.push((None, None));
                        number(groups.len() - 1)
                    })
                }
            };
            let Some((slash, none)) = catch_all.get_mut(g as usize) else { continue };
            match route.path_prefix.as_deref() {
                Some("/") => *slash = slash.or(Some(answer)),
                None => *none = none.or(Some(answer)),
                Some(path) => {
                    by_prefix.entry((g, path)).or_insert_with(|| {
                        prefixes.push(Prefix { path: Name::new(path.as_bytes()), pool: answer, group: g });
                        number(prefixes.len() - 1)
                    });
                }
            }
        }
        for (group, (slash, none)) in groups.iter_mut().zip(catch_all) {
            group.fallback = slash.or(none).unwrap_or(NO_POOL);
        }
        let mut prefix_lens = Vec::new();
        for prefix in &prefixes {
            let len = prefix.path.bytes().len();
            add_len(&mut prefix_lens, len);
            if let Some(group) = groups.get_mut(prefix.group as usize) {
                group.longest = group.longest.max(u32::try_from(len).unwrap_or(u32::MAX));
            }
        }
        let mut wildcard_lens = Vec::new();
        for name in wildcard.keys() {
            add_len(&mut wildcard_lens, name.len());
        }
        // Link each wildcard to the next shorter one it ends with: `.a.example.com` to
        // `.example.com` (if configured), which any host matching the first also matches.
        for (name, &g) in &wildcard {
            let dots = name.bytes().enumerate().skip(1).filter(|&(_, b)| b == b'.');
            let shorter = dots.filter_map(|(i, _)| name.get(i..)).find_map(|suffix| wildcard.get(suffix));
            if let (Some(&shorter), Some(group)) = (shorter, groups.get_mut(g as usize)) {
                group.shorter = shorter;
            }
        }
        let keyed = |names: &HashMap<String, u32>| -> Vec<(u64, u32)> {
            names.iter().map(|(name, &g)| (host_key(name.as_bytes()), g)).collect()
        };
        let prefix_keys: Vec<(u64, u32)> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| (prefix_key(p.group, p.path.bytes()), number(i)))
            .collect();
        Self {
            exact: Table::new(&keyed(&exact)),
            wildcard: Table::new(&keyed(&wildcard)),
            wildcard_lens: wildcard_lens.into(),
            any,
            groups: groups.into(),
            prefix_table: Table::new(&prefix_keys),
            prefixes: prefixes.into(),
            prefix_lens: prefix_lens.into(),
        }
    }

    /// What the matching route answers (its pool, or what [`Router::with_targets`] chose) for a
    /// request with this host (may include a port) and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if let Some(host) = host {
            let (exact, mut wildcard) = self.host_groups(strip_port(host).trim_end_matches('.').as_bytes());
            if let Some(pool) = self.in_group(exact, path) {
                return Some(pool);
            }
            while let Some(group) = self.groups.get(wildcard as usize) {
                if let Some(pool) = self.in_group(wildcard, path) {
                    return Some(pool);
                }
                wildcard = group.shorter;
            }
        }
        self.in_group(self.any, path)
    }

    /// The exact group of `host` and its longest matching wildcard group ([`NIL`] for none), from
    /// one pass over the host's labels, last to first.
    fn host_groups(&self, host: &[u8]) -> (u32, u32) {
        let mut h = SEED;
        let mut wildcard = NIL;
        let mut end = host.len();
        loop {
            let label = host.get(..end).unwrap_or_default();
            let Some(dot) = label.iter().rposition(|&b| b == b'.') else {
                h = absorb(h, label, true);
                break;
            };
            h = absorb(h, label.get(dot + 1..).unwrap_or_default(), true);
            // `host[dot..]` is a candidate suffix: its key state is `h` and one empty label. A
            // wildcard needs a longer host, so a dot at 0 is not one. Later (more left) matches
            // are longer, so they win.
            if dot > 0 && has_len(&self.wildcard_lens, host.len() - dot) {
                let suffix = host.get(dot..).unwrap_or_default();
                if let Some(g) = find(&self.wildcard, &self.groups, finish(absorb(h, b"", true)), suffix) {
                    wildcard = g;
                }
            }
            end = dot;
        }
        let exact = find(&self.exact, &self.groups, finish(h), host).unwrap_or(NIL);
        (exact, wildcard)
    }

    /// The pool `group` gives `path`: its longest matching prefix, else its catch-all, else none.
    fn in_group(&self, g: u32, path: &str) -> Option<usize> {
        let group = self.groups.get(g as usize)?;
        if group.longest > 0 {
            let longest = group.longest as usize;
            let bytes = path.as_bytes();
            let mut h = prefix_seed(g);
            let mut best = None;
            let mut start = 0;
            // A prefix matches when it ends on a boundary (a `/` or the end of the path): after
            // each segment, `h` is the key state of the path up to there. Later matches are longer,
            // so they win.
            while start <= longest {
                let rest = bytes.get(start..).unwrap_or_default();
                let end = rest.iter().position(|&b| b == b'/').map_or(bytes.len(), |i| start + i);
                h = absorb(h, bytes.get(start..end).unwrap_or_default(), false);
                if end <= longest && has_len(&self.prefix_lens, end) {
                    best = self.prefix(finish(h), g, bytes.get(..end).unwrap_or_default()).or(best);
                }
                if end == bytes.len() {
                    break;
                }
                start = end + 1;
            }
            if best.is_some() {
                return best;
            }
        }
        (group.fallback != NO_POOL).then_some(group.fallback)
    }

    /// Pool of the prefix `path` of group `g`, if configured.
    #[inline]
    fn prefix(&self, key: u64, g: u32, path: &[u8]) -> Option<usize> {
        let entry = self.prefix_table.find(key, |e| {
            self.prefixes.get(e as usize).is_some_and(|p| p.group == g && p.path.bytes() == path)
        })?;
        self.prefixes.get(entry as usize).map(|p| p.pool)
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

/// The host without its port: `a.com:80` -> `a.com`, `[::1]:80` -> `[::1]`, `[::1` unchanged.
/// A plain byte loop: hosts are short, and a call to `memrchr` costs more than it saves.
fn strip_port(host: &str) -> &str {
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        // IPv6 literal: up to and including the first `]`, if any.
        bytes.iter().position(|&b| b == b']').map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.iter().rposition(|&b| b == b':').unwrap_or(bytes.len())
    };
    host.get(..end).unwrap_or(host)
}
