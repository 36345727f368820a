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
//! * exact names and wildcard suffixes sit in two hash tables whose slots *are* the groups, keyed
//!   by a case-folding hash taken eight bytes at a time from the *end* of the name, so that one
//!   backward pass over the request host yields the key of the whole host and of every dot-suffix
//!   (`.b.example.com`, `.example.com`, `.com`) on the way;
//! * each wildcard group links to the next shorter wildcard that also matches any host it matches,
//!   so the fall-through order (longer wildcard first) needs no sorting or scratch space at lookup;
//! * path prefixes of all groups share one hash table keyed by (group, prefix), whose slots are
//!   the prefixes; a lookup hashes the path forward once and probes at each `/` boundary, up to the
//!   group's longest prefix.
//!
//! A lookup therefore costs a pass over the host (two when no exact host answers: the second
//! probes the wildcards), at most one pass over the path per group tried (an exact host, its
//! wildcards, the host-less group) and a few table probes, whatever the number of routes. It never
//! allocates and never panics: hash hits are verified against the stored string
//! (case-insensitively for hosts, as the scan compares), so colliding keys only cost a probe.
//!
//! With 100,000 routes the tables outgrow the CPU's nearer caches, so the layout counts cache
//! misses: a group's table slot is one 64-byte line holding the key, what the group answers and
//! its name when it is up to [`INLINE`] bytes (most are), so reaching an exact host's group costs
//! one miss. A path prefix's slot (two lines, fetched together) also holds its host's name and is
//! keyed by the host's key, so a request for an exact host with a matching prefix needs that slot
//! alone. The keys are cheap to compute: an 8-byte word at a time, folded to lower case in one
//! step ([`fold`]).
//!
//! Routes are expected as config validation makes them: exact names and wildcard suffixes in ASCII
//! (compared case-insensitively), path prefixes either `/` or starting with `/` without a trailing
//! `/`, no two routes with the same host and prefix (if there are, the first one given wins). A
//! table holds fewer than `u32::MAX - 1` groups and prefixes, and answers (pools or route indexes)
//! below `u32::MAX` (4 billion routes would not fit in memory as config first).

use std::collections::HashMap;

use crate::config::{HostMatch, RouteConfig};

#[cfg(test)]
mod scan;
#[cfg(test)]
mod tests;

/// Whether one rule's host matches the request's (port stripped): exactly, or as a wildcard's
/// subdomain, case-insensitively. The index answers as this would for every route; rate-limit rules
/// match with it directly.
pub(crate) fn host_matches(rule: Option<&HostMatch>, host: Option<&str>) -> bool {
    let (rule, host) = match (rule, host) {
        (None, _) => return true,
        (Some(_), None) => return false,
        (Some(rule), Some(host)) => (rule, host.trim_end_matches('.')),
    };
    match rule {
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// Segment-boundary prefix match: `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
pub(crate) fn prefix_matches(prefix: Option<&str>, path: &str) -> bool {
    match prefix {
        None | Some("/") => true,
        Some(p) => path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
    }
}

/// No wildcard link: the end of a chain.
const NIL: u32 = u32::MAX;
/// A slot that holds no entry (in [`Group::shorter`] and [`Prefix::group`]).
const VACANT: u32 = u32::MAX - 1;
/// No pool.
const NO_POOL: u32 = u32::MAX;

/// The compiled routing table of one snapshot.
#[derive(Clone)]
pub struct Router {
    /// Exact host name key -> group.
    exact: Table<Group>,
    /// The exact host keys, 8 to 16 bits per host: a "no" means no exact host has that key, which
    /// saves a host without an exact route (served by a wildcard) a likely cache miss in `exact`;
    /// the filter is small enough to stay in a near cache.
    exact_filter: Filter,
    /// Wildcard suffix key (`.example.com`) -> group.
    wildcard: Table<Group>,
    /// Lengths of the wildcard suffixes, as a bit set: dot-suffixes of other lengths are not probed.
    wildcard_lens: Box<[u64]>,
    /// The group of the routes without host, if any.
    any: Option<Box<Group>>,
    /// (group, path prefix) key -> prefix.
    prefixes: Table<Prefix>,
    /// Lengths of all path prefixes, as a bit set: path boundaries of other lengths are not probed.
    prefix_lens: Box<[u64]>,
    /// The length of the longest of them.
    longest_prefix: usize,
}

/// The routes of one host (or of no host). One cache line: its key, its name and what it answers.
#[derive(Clone, Debug)]
#[repr(align(64))]
struct Group {
    key: u64,
    /// Lower-case exact name, or wildcard suffix with its leading dot; empty for the host-less group.
    name: Name,
    /// Pool of the `/` prefix if any, else of the route without prefix; [`NO_POOL`] if neither.
    fallback: u32,
    /// Length of the longest prefix of this group in [`Router::prefixes`]; 0 if none.
    longest: u32,
    /// Wildcard groups: the slot of the next shorter wildcard group that is a suffix of this one,
    /// or [`NIL`]; [`VACANT`] marks an empty slot.
    shorter: u32,
}

/// One path prefix of one group, with the group's name: a request for an exact host finds its
/// prefix from this entry alone, without the group's line. Two cache lines, fetched together.
#[derive(Clone, Debug)]
#[repr(align(128))]
struct Prefix {
    key: u64,
    /// The group's name, as in [`Group::name`].
    host: Name,
    path: Name,
    pool: u32,
    /// The group's number ([`Router::group_id`]), or [`VACANT`] for an empty slot.
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

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Name::Short(len, inline) => inline.get(..usize::from(*len)).unwrap_or_default(),
            Name::Long(bytes) => bytes,
        }
    }
}

/// An entry that is its own table slot.
trait Slot: Sized {
    fn vacant() -> Self;
    fn is_vacant(&self) -> bool;
    fn key(&self) -> u64;
}

impl Group {
    /// The pool of the group's `/` prefix or route without prefix, if it has one.
    #[inline]
    fn fallback(&self) -> Option<usize> {
        (self.fallback != NO_POOL).then_some(self.fallback as usize)
    }
}

impl Slot for Group {
    fn vacant() -> Self {
        Group { key: 0, name: Name::new(b""), fallback: NO_POOL, longest: 0, shorter: VACANT }
    }
    #[inline]
    fn is_vacant(&self) -> bool {
        self.shorter == VACANT
    }
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
}

impl Slot for Prefix {
    fn vacant() -> Self {
        Prefix { key: 0, host: Name::new(b""), path: Name::new(b""), pool: NO_POOL, group: VACANT }
    }
    #[inline]
    fn is_vacant(&self) -> bool {
        self.group == VACANT
    }
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
}

/// A hash table of entries keyed by already mixed 64-bit hashes ([`finish`]): open addressing
/// with linear probing in one flat array of the entries themselves, at most two thirds full, built
/// once.
/// Equal keys (hash collisions) simply take several slots; lookups compare the entries.
#[derive(Clone, Debug)]
struct Table<T> {
    slots: Box<[T]>,
}

impl<T: Slot> Table<T> {
    /// Places `entries`; answers the table and the slot each entry went to, in the order given.
    fn build(entries: Vec<T>) -> (Self, Vec<u32>) {
        // At most two thirds full: probes stay short, and a table of 64-byte slots stays small
        // (with 100,000 routes, the pages it spans cost TLB misses as well as cache misses). At
        // least one slot stays empty, which ends every probe sequence.
        let size = (entries.len() + entries.len() / 2 + 1).next_power_of_two();
        let mut slots: Vec<T> = std::iter::repeat_with(T::vacant).take(size).collect();
        let mask = size - 1;
        let mut placed = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut i = entry.key() as usize & mask;
            while slots.get(i).is_some_and(|s| !s.is_vacant()) {
                i = (i + 1) & mask;
            }
            if let Some(slot) = slots.get_mut(i) {
                *slot = entry;
            }
            placed.push(number(i));
        }
        (Self { slots: slots.into() }, placed)
    }

    /// The first entry under `key` that `found` accepts, and its slot.
    #[inline]
    fn find(&self, key: u64, found: impl Fn(&T) -> bool) -> Option<(u32, &T)> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = key as usize & mask;
        // Bounded by the table size, although an empty slot always comes first.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            if slot.is_vacant() {
                return None;
            }
            if slot.key() == key && found(slot) {
                return Some((number(i), slot));
            }
            i = (i + 1) & mask;
        }
        None
    }

    #[inline]
    fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize).filter(|s| !s.is_vacant())
    }

    fn size(&self) -> usize {
        self.slots.len()
    }

    fn len(&self) -> usize {
        self.slots.iter().filter(|s| !s.is_vacant()).count()
    }
}

// Keys are FxHash steps over 8-byte words, then a fold of the top half onto the bottom. Host keys take their words
// from the end of the name (the last eight bytes first), so the key state after the words of a
// suffix is shared by every longer name with that suffix: one backward pass gives the keys of all
// dot-suffixes. Path keys take their words from the start, so one forward pass gives the keys of
// all `/`-prefixes. A key ends with the leftover bytes (fewer than eight) and the length.
const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One word into the state (FxHash's step).
#[inline]
fn mix(h: u64, word: u64) -> u64 {
    (h.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// The end of a key: a multiply leaves its well-mixed bits at the top, and the table index takes
/// the low ones, so the top half is folded onto the bottom one (the filter takes the top half).
/// Cheap rather than strong: table lookups compare names, so a collision costs a probe.
#[inline]
fn finish(h: u64) -> u64 {
    h ^ (h >> 32)
}

/// The state after the last word: the leftover bytes, then the length.
#[inline]
fn key_of(h: u64, leftover: &[u8], len: usize, fold_case: bool) -> u64 {
    let word = if fold_case { fold(load(leftover)) } else { load(leftover) };
    finish(mix(mix(h, word), len as u64))
}

/// Up to eight bytes as a little-endian word, zero-filled. Two fixed-size loads that may overlap,
/// not a copy into a buffer: a copy of a variable length is a call to `memcpy` and a stalled read
/// of what it wrote, which cost more than the rest of a lookup.
#[inline]
fn load(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let (head, tail, at) = match n {
        8.. => return word_at(bytes, 0),
        4..=7 => (fixed::<4>(bytes, 0), fixed::<4>(bytes, n - 4), n - 4),
        2..=3 => (fixed::<2>(bytes, 0), fixed::<2>(bytes, n - 2), n - 2),
        1 => (fixed::<1>(bytes, 0), 0, 0),
        0 => return 0,
    };
    // The bytes both loads hold are the same, so or-ing them is harmless.
    head | tail << (8 * at)
}

/// The `N` bytes at `at` as a little-endian number (zero if they are not all there).
#[inline]
fn fixed<const N: usize>(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    if let (Some(to), Some(from)) = (word.get_mut(..N), bytes.get(at..at + N)) {
        to.copy_from_slice(from);
    }
    u64::from_le_bytes(word)
}

/// Eight bytes at `at` as a little-endian word (zero if they are not all there).
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// The eight bytes of `word` with ASCII upper-case letters made lower case, all at once; other
/// bytes, non-ASCII ones included, unchanged.
#[inline]
fn fold(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = word & LOW7;
    // Per byte, bit 7 of `from_a` is set when the low seven bits are >= b'A', of `past_z` when
    // they are > b'Z'; neither sum carries into the next byte.
    let from_a = low7 + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = low7 + 0x2525_2525_2525_2525;
    let upper = from_a & !past_z & !word & HIGH;
    word | (upper >> 2)
}

/// Key of a host name or wildcard suffix, case-folded: its words from the end.
fn host_key(name: &[u8]) -> u64 {
    let mut h = SEED;
    let mut end = name.len();
    while end >= 8 {
        h = mix(h, fold(word_at(name, end - 8)));
        end -= 8;
    }
    key_of(h, name.get(..end).unwrap_or_default(), name.len(), true)
}

/// Start state of the path hash in the group whose name has key `group_key`, so that equal
/// prefixes of different groups differ (mostly: prefix entries also name their group). It needs
/// the host's key only, not the group, so a request for an exact host can find its prefix before,
/// and instead of, its group.
#[inline]
fn prefix_seed(group_key: u64) -> u64 {
    mix(SEED, group_key)
}

/// Key of a path prefix in the group whose name has key `group_key`: its words from the start.
fn prefix_key(group_key: u64, prefix: &[u8]) -> u64 {
    let mut chunks = prefix.chunks_exact(8);
    let h = chunks.by_ref().fold(prefix_seed(group_key), |h, word| mix(h, load(word)));
    key_of(h, chunks.remainder(), prefix.len(), false)
}

/// Whether `host` is `lower` (a lower-case name) when ASCII letters are folded, eight bytes at a
/// time.
#[inline]
fn eq_folded(lower: &[u8], host: &[u8]) -> bool {
    if lower.len() != host.len() {
        return false;
    }
    let (mut a, mut b) = (lower.chunks_exact(8), host.chunks_exact(8));
    a.by_ref().zip(b.by_ref()).all(|(a, b)| load(a) == fold(load(b)))
        && load(a.remainder()) == fold(load(b.remainder()))
}

#[inline]
fn has_len(set: &[u64], len: usize) -> bool {
    set.get(len / 64).is_some_and(|word| word >> (len % 64) & 1 == 1)
}

/// The highest length in `set`; 0 if none.
fn highest(set: &[u64]) -> usize {
    let top = set.iter().rposition(|&word| word != 0);
    top.and_then(|i| Some(i * 64 + 63 - set.get(i)?.leading_zeros() as usize)).unwrap_or(0)
}

fn add_len(set: &mut Vec<u64>, len: usize) {
    if set.len() <= len / 64 {
        set.resize(len / 64 + 1, 0);
    }
    if let Some(word) = set.get_mut(len / 64) {
        *word |= 1 << (len % 64);
    }
}

/// Entry numbers are `u32` (see the module docs).
fn number(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(NIL)
}

/// The group in `table` named `name` (case-insensitively), and its slot.
#[inline]
fn find<'t>(table: &'t Table<Group>, key: u64, name: &[u8]) -> Option<(u32, &'t Group)> {
    table.find(key, |group| eq_folded(group.name.bytes(), name))
}

/// A set of keys that may answer "maybe" for keys not in it: a Bloom filter of two bits per key,
/// both in one 64-bit word, so a lookup reads one word (about 2% false "maybe"s at 8 to 16 bits
/// per key).
#[derive(Clone, Debug)]
struct Filter {
    words: Box<[u64]>,
}

impl Filter {
    fn new(keys: impl ExactSizeIterator<Item = u64>) -> Self {
        let mut words = vec![0u64; (keys.len() * 8 / 64).max(1).next_power_of_two()];
        let mask = words.len() - 1;
        for key in keys {
            let (at, bits) = Self::place(key, mask);
            if let Some(word) = words.get_mut(at) {
                *word |= bits;
            }
        }
        Self { words: words.into() }
    }

    /// The table index takes the key's low bits: the filter takes higher ones.
    #[inline]
    fn place(key: u64, mask: usize) -> (usize, u64) {
        ((key >> 32) as usize & mask, 1 << (key >> 20 & 63) | 1 << (key >> 26 & 63))
    }

    #[inline]
    fn may_hold(&self, key: u64) -> bool {
        let (at, bits) = Self::place(key, self.words.len().wrapping_sub(1));
        self.words.get(at).is_some_and(|word| word & bits == bits)
    }
}

/// A group as the build collects it, before it has a slot.
struct Draft {
    name: String,
    wildcard: bool,
    /// Answer of the `/` prefix, of the route without prefix (the first one given wins).
    slash: Option<u32>,
    none: Option<u32>,
    longest: u32,
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
        // Groups by (wildcard?, lower-case name); the host-less group is named "" among exact ones
        // and taken out at the end.
        let mut by_name: HashMap<(bool, String), usize> = HashMap::new();
        let mut drafts: Vec<Draft> = Vec::new();
        // (draft, path) -> answer; the first route given wins.
        let mut by_prefix: HashMap<(usize, &str), u32> = HashMap::new();
        let mut prefix_order: Vec<(usize, &str)> = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let answer = u32::try_from(target(index, route)).unwrap_or(NO_POOL);
            let (wildcard, name) = match &route.host {
                None => (false, String::new()),
                Some(HostMatch::Exact(name)) => (false, name.to_ascii_lowercase()),
                Some(HostMatch::Suffix(name)) => (true, name.to_ascii_lowercase()),
            };
            let d = *by_name.entry((wildcard, name)).or_insert_with_key(|(wildcard, name)| {
                drafts.push(Draft {
                    name: name.clone(),
                    wildcard: *wildcard,
                    slash: None,
                    none: None,
                    longest: 0,
                });
                drafts.len() - 1
            });
            let Some(draft) = drafts.get_mut(d) else { continue };
            match route.path_prefix.as_deref() {
                Some("/") => draft.slash = draft.slash.or(Some(answer)),
                None => draft.none = draft.none.or(Some(answer)),
                Some(path) => {
                    by_prefix.entry((d, path)).or_insert_with(|| {
                        prefix_order.push((d, path));
                        draft.longest = draft.longest.max(u32::try_from(path.len()).unwrap_or(u32::MAX));
                        answer
                    });
                }
            }
        }
        let group = |draft: &Draft| Group {
            key: host_key(draft.name.as_bytes()),
            name: Name::new(draft.name.as_bytes()),
            fallback: draft.slash.or(draft.none).unwrap_or(NO_POOL),
            longest: draft.longest,
            shorter: NIL,
        };
        let any_draft = by_name.get(&(false, String::new())).copied();
        let kind = |wildcard: bool| {
            let numbers: Vec<usize> = (0..drafts.len())
                .filter(|&d| drafts.get(d).is_some_and(|g| g.wildcard == wildcard) && Some(d) != any_draft)
                .collect();
            let (table, slots) =
                Table::build(numbers.iter().filter_map(|&d| drafts.get(d)).map(group).collect());
            (table, numbers.into_iter().zip(slots))
        };
        let (exact, exact_slots) = kind(false);
        let (mut wildcard, wildcard_slots) = kind(true);
        // Each draft's group number: exact slots, then wildcard slots, then the host-less group.
        let mut ids = vec![NIL; drafts.len()];
        for (d, slot) in exact_slots {
            if let Some(id) = ids.get_mut(d) {
                *id = slot;
            }
        }
        let base = number(exact.size());
        let mut wildcard_lens = Vec::new();
        for (d, slot) in wildcard_slots {
            if let Some(id) = ids.get_mut(d) {
                *id = base.saturating_add(slot);
            }
            if let Some(draft) = drafts.get(d) {
                add_len(&mut wildcard_lens, draft.name.len());
            }
        }
        let any_id = base.saturating_add(number(wildcard.size()));
        if let Some(d) = any_draft {
            if let Some(id) = ids.get_mut(d) {
                *id = any_id;
            }
        }
        // Link each wildcard to the next shorter one it ends with: `.a.example.com` to
        // `.example.com` (if configured), which any host matching the first also matches.
        let links: Vec<(usize, u32)> = (0..wildcard.slots.len())
            .filter_map(|slot| {
                let group = wildcard.get(number(slot))?;
                let name = group.name.bytes();
                let dots = name.iter().enumerate().skip(1).filter(|&(_, &b)| b == b'.');
                let shorter = dots
                    .filter_map(|(i, _)| name.get(i..))
                    .find_map(|suffix| find(&wildcard, host_key(suffix), suffix))?;
                Some((slot, shorter.0))
            })
            .collect();
        for (slot, shorter) in links {
            if let Some(group) = wildcard.slots.get_mut(slot) {
                group.shorter = shorter;
            }
        }
        let mut prefix_lens = Vec::new();
        let prefixes: Vec<Prefix> = prefix_order
            .iter()
            .filter_map(|&(d, path)| {
                let group = *ids.get(d)?;
                add_len(&mut prefix_lens, path.len());
                let name = drafts.get(d)?.name.as_bytes();
                Some(Prefix {
                    key: prefix_key(host_key(name), path.as_bytes()),
                    host: Name::new(name),
                    path: Name::new(path.as_bytes()),
                    pool: *by_prefix.get(&(d, path))?,
                    group,
                })
            })
            .collect();
        let any = any_draft.and_then(|d| drafts.get(d)).map(|draft| Box::new(group(draft)));
        Self {
            exact_filter: Filter::new(
                exact.slots.iter().filter(|g| !g.is_vacant()).map(|g| g.key).collect::<Vec<_>>().into_iter(),
            ),
            exact,
            wildcard,
            wildcard_lens: wildcard_lens.into(),
            any,
            prefixes: Table::build(prefixes).0,
            longest_prefix: highest(&prefix_lens),
            prefix_lens: prefix_lens.into(),
        }
    }

    /// The number of the host-less group: after every exact and wildcard slot.
    fn any_id(&self) -> u32 {
        number(self.exact.size()).saturating_add(number(self.wildcard.size()))
    }

    /// What the matching route answers (its pool, or what [`Router::with_targets`] chose) for a
    /// request with this host (may include a port) and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let path = path.as_bytes();
        if let Some(host) = host {
            let host = strip_port(host).trim_end_matches('.').as_bytes();
            let key = host_key(host);
            if self.exact_filter.may_hold(key) {
                // `None`: more candidate prefixes than the shortcut keeps.
                let prefix = self.exact_prefix(key, host, path);
                if let Some(Some(pool)) = prefix {
                    return Some(pool);
                }
                if let Some((slot, group)) = find(&self.exact, key, host) {
                    // When the shortcut tried every candidate, no prefix of this host matched.
                    let pool =
                        if prefix.is_some() { group.fallback() } else { self.in_group(group, slot, path) };
                    if pool.is_some() {
                        return pool;
                    }
                }
            }
            let base = number(self.exact.size());
            let mut wildcard = self.longest_wildcard(host);
            while let Some(group) = self.wildcard.get(wildcard) {
                if let Some(pool) = self.in_group(group, base.saturating_add(wildcard), path) {
                    return Some(pool);
                }
                wildcard = group.shorter;
            }
        }
        self.in_group(self.any.as_deref()?, self.any_id(), path)
    }

    /// The answer of the longest prefix of `path` configured for the exact host `host` (whose key
    /// is `key`), from the prefix table alone: with many routes, the exact host's own table line
    /// is a likely cache miss, which a request with a matching prefix then never waits for.
    /// `Some(None)`: no prefix of this host matches. `None`: the path has more candidate prefixes
    /// than are kept, and the group's own lookup ([`Router::in_group`]) must decide.
    #[inline]
    fn exact_prefix(&self, key: u64, host: &[u8], path: &[u8]) -> Option<Option<usize>> {
        const KEPT: usize = 8;
        let mut ends = [(0u64, 0usize); KEPT];
        let mut found = 0;
        self.prefix_keys(prefix_seed(key), path, self.longest_prefix, |key, end| {
            if let Some(slot) = ends.get_mut(found) {
                *slot = (key, end);
            }
            found += 1;
        });
        let exact_groups = number(self.exact.size());
        // Longest first: the first match is the answer.
        for &(key, end) in ends.get(..found)?.iter().rev() {
            let prefix = path.get(..end).unwrap_or_default();
            let hit = self.prefixes.find(key, |p| {
                p.group < exact_groups && p.path.bytes() == prefix && eq_folded(p.host.bytes(), host)
            });
            if let Some((_, p)) = hit {
                return Some(Some(p.pool as usize));
            }
        }
        Some(None)
    }

    /// The slot of the longest wildcard matching `host`, or [`NIL`]: one backward pass over the
    /// host, probing at each dot whose suffix has the length of some wildcard.
    fn longest_wildcard(&self, host: &[u8]) -> u32 {
        if self.wildcard_lens.is_empty() {
            return NIL;
        }
        let mut h = SEED;
        // The words of host[words_from..] are in `h`.
        let mut words_from = host.len();
        let mut found = NIL;
        let mut at = host.len();
        // A wildcard needs a longer host, so a dot at 0 is not one. Later (more left) matches are
        // longer, so they win.
        while let Some(dot) = host.get(1..at).and_then(|h| h.iter().rposition(|&b| b == b'.')) {
            let dot = dot + 1;
            let len = host.len() - dot;
            if has_len(&self.wildcard_lens, len) {
                while words_from >= dot + 8 {
                    h = mix(h, fold(word_at(host, words_from - 8)));
                    words_from -= 8;
                }
                let suffix = host.get(dot..).unwrap_or_default();
                let key = key_of(h, host.get(dot..words_from).unwrap_or_default(), len, true);
                if let Some((slot, _)) = find(&self.wildcard, key, suffix) {
                    found = slot;
                }
            }
            at = dot;
        }
        found
    }

    /// What group `group` (number `id`) gives `path`: its longest matching prefix, else its
    /// catch-all, else none.
    #[inline]
    fn in_group(&self, group: &Group, id: u32, path: &[u8]) -> Option<usize> {
        let mut best = None;
        self.prefix_keys(prefix_seed(group.key), path, group.longest as usize, |key, end| {
            let prefix = path.get(..end).unwrap_or_default();
            let hit = self.prefixes.find(key, |p| p.group == id && p.path.bytes() == prefix);
            // Later matches are longer, so they win.
            best = hit.map(|(_, p)| p.pool as usize).or(best);
        });
        best.or(group.fallback())
    }

    /// Calls `each(key, end)` for every prefix `path[..end]` that ends on a boundary (a `/` or the
    /// end of the path), is at most `longest` bytes long and has the length of some configured
    /// prefix, shortest first, with its key under `seed`: one forward pass over the path.
    #[inline]
    fn prefix_keys(&self, seed: u64, path: &[u8], longest: usize, mut each: impl FnMut(u64, usize)) {
        if longest == 0 {
            return;
        }
        let mut h = seed;
        // The words of path[..words_to] are in `h`.
        let mut words_to = 0;
        let scan = path.get(1..=longest.min(path.len().saturating_sub(1))).unwrap_or_default();
        let slashes = scan.iter().enumerate().filter(|&(_, &b)| b == b'/').map(|(i, _)| i + 1);
        for end in slashes.chain((path.len() <= longest).then_some(path.len())) {
            if !has_len(&self.prefix_lens, end) {
                continue;
            }
            while words_to + 8 <= end {
                h = mix(h, word_at(path, words_to));
                words_to += 8;
            }
            each(key_of(h, path.get(words_to..end).unwrap_or_default(), end, false), end);
        }
    }
}

impl std::fmt::Debug for Router {
    // A snapshot of a large config would print every route: sizes say what matters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("exact_hosts", &self.exact.len())
            .field("wildcards", &self.wildcard.len())
            .field("any_host", &self.any.is_some())
            .field("prefixes", &self.prefixes.len())
            .finish()
    }
}

/// The host without its port: `a.com:80` -> `a.com`, `[::1]:80` -> `[::1]`, `[::1` unchanged.
/// A plain byte loop: hosts are short, and a call to `memrchr` costs more than it saves.
pub(crate) fn strip_port(host: &str) -> &str {
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        // IPv6 literal: up to and including the first `]`, if any.
        bytes.iter().position(|&b| b == b']').map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.iter().rposition(|&b| b == b':').unwrap_or(bytes.len())
    };
    host.get(..end).unwrap_or(host)
}
