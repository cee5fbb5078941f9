//! The cache: every socket the broker holds, and its indexes (the cache
//! map, held ports, per-worker count, the memo of hits by wire bytes), kept
//! in step by [`Sockets`]' own methods.

use super::slab::Slab;
use crate::closer::OffLoopFd;
use crate::holders::{Allocation, Holders};
use crate::policy::Policy;
use sockpass::keyhash::KeyedState;
use sockpass::sys::Creds;
use sockpass::ShareMode;
use sockpass::SocketSpec;
use std::cell::Cell;
use std::collections::HashMap;

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: u64,
    pub(super) spec: SocketSpec,
    /// Closed off the loop, linger off: the clients that hold it share its
    /// file description and could make a close on the loop block.
    pub(super) fd: OffLoopFd,
    pub(super) port: u16,
    /// One per reference.
    pub(super) holders: Holders,
    /// In the cache map (shareable); false for ephemeral and per-worker ones.
    pub(super) keyed: bool,
    /// One member of a reuseport group, made for one requester.
    pub(super) per_worker: bool,
    /// Unix sockets: the inode of the socket file the broker made, removed
    /// with the socket if it is still that file.
    pub(super) unix_ino: Option<u64>,
    /// Its name in the systemd fd store, if it was stored there.
    pub(super) store_name: Option<String>,
    /// Taken from the fd store at start: held by the broker (an anonymous
    /// reservation) until the first request for its spec claims it.
    pub(super) adopted: bool,
    /// The uid row of the request that created it, charged for it while it
    /// lives (root's for one adopted from the fd store).
    pub(super) user: usize,
    /// The last (uid, gid, share) the policy allowed a request of this
    /// spec for; see [`Entry::allows`].
    pub(super) allowed: Cell<Option<(u32, u32, ShareMode)>>,
}

/// Every socket the broker holds, by slot, and the indexes over them. An
/// entry's `spec`, `port`, `keyed` and `per_worker` are fixed once it is
/// inserted (the indexes are keyed on them).
pub(super) struct Sockets {
    slab: Slab<Entry>,
    /// Keyed entries by canonical spec (as requested: port as asked).
    cache: HashMap<SocketSpec, usize, KeyedState>,
    /// Cache hits by the spec's wire bytes: (entry slot, entry id). The same
    /// bytes decode to the same spec, so a request whose bytes hit here is
    /// answered without decoding and canonicalizing the spec again. Checked
    /// on use (a gone entry's id no longer matches), bounded by clearing.
    hits: HashMap<WireSpec, (usize, u64), KeyedState>,
    /// Live per-worker (reuseport group member) entries.
    per_worker: usize,
    /// Keyed and per-worker entries by bound port, so a cache miss on a
    /// port nobody holds skips the scan in `same_address`.
    held_ports: HashMap<u16, u32, KeyedState>,
    /// The holder lists of entries that went, for new entries: a batch
    /// of 64 new sockets otherwise pays 64 allocations, and glibc's
    /// per-thread cache keeps only 7 blocks of a size. Bounded.
    spare: Vec<Allocation>,
}

/// How many holder lists [`Sockets`] keeps for reuse.
const SPARE_LISTS: usize = 64;

impl Sockets {
    pub(super) fn new() -> Sockets {
        Sockets {
            slab: Slab::new(),
            cache: HashMap::default(),
            hits: HashMap::default(),
            per_worker: 0,
            held_ports: HashMap::default(),
            spare: Vec::new(),
        }
    }

    /// An empty holder set for a new entry.
    pub(super) fn new_holders(&mut self) -> Holders {
        match self.spare.pop() {
            Some(a) => Holders::in_allocation(a),
            None => Holders::with_capacity(1),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn get(&self, es: usize) -> Option<&Entry> {
        self.slab.get(es)
    }

    pub(super) fn get_mut(&mut self, es: usize) -> Option<&mut Entry> {
        self.slab.get_mut(es)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.slab.iter()
    }

    /// Add an entry and index it; its slot.
    pub(super) fn insert(&mut self, e: Entry) -> usize {
        let key = Key::of(&e);
        let es = self.slab.insert(e);
        self.index(es, key);
        es
    }

    /// Put an entry back at its slot (rebuilding a handed-over broker); call
    /// [`Sockets::rebuild_free`] after the last one.
    pub(super) fn insert_at(&mut self, es: usize, e: Entry) {
        let key = Key::of(&e);
        self.slab.insert_at(es, e);
        self.index(es, key);
    }

    pub(super) fn rebuild_free(&mut self) {
        self.slab.rebuild_free();
    }

    fn index(&mut self, es: usize, k: Key) {
        if let Some(spec) = k.cache {
            self.cache.insert(spec, es);
        }
        if k.per_worker {
            self.per_worker += 1;
        }
        if let Some(port) = k.port {
            *self.held_ports.entry(port).or_insert(0) += 1;
        }
    }

    /// Take an entry out, and out of the indexes.
    pub(super) fn remove(&mut self, es: usize) -> Option<Entry> {
        let mut e = self.slab.remove(es)?;
        if self.spare.len() < SPARE_LISTS {
            self.spare.extend(e.holders.take_allocation());
        }
        if e.keyed {
            self.cache.remove(&e.spec_key());
        }
        if e.per_worker {
            self.per_worker -= 1;
        }
        if e.keyed || e.per_worker {
            if let Some(n) = self.held_ports.get_mut(&e.port) {
                *n -= 1;
                if *n == 0 {
                    self.held_ports.remove(&e.port);
                }
            }
        }
        Some(e)
    }

    /// Every entry, in slot order, taking them out (an upgrade's handoff).
    pub(super) fn into_entries(self) -> Vec<(usize, Entry)> {
        let mut slab = self.slab;
        let mut slots: Vec<usize> = slab.iter().map(|(i, _)| i).collect();
        slots.sort_unstable();
        slots
            .into_iter()
            .map(|slot| (slot, slab.remove(slot).unwrap()))
            .collect()
    }

    /// The cached (keyed) entry for a canonical spec.
    pub(super) fn cached(&self, spec: &SocketSpec) -> Option<usize> {
        self.cache.get(spec).copied()
    }

    /// Remember that a plain request's spec bytes hit entry `es`.
    pub(super) fn remember_hit(&mut self, wire: &[u8], es: usize) {
        let (Some(w), Some(e)) = (WireSpec::new(wire), self.slab.get(es)) else {
            return;
        };
        // Bounded: entries that went leave their keys behind until the
        // table outgrows the cache and starts over.
        if self.hits.len() >= 2 * self.cache.len() + 64 && !self.hits.contains_key(&w) {
            // A new table, not a cleared one: a cleared table keeps its
            // size, and lookups all over it miss the CPU's caches.
            self.hits = HashMap::default();
        }
        self.hits.insert(w, (es, e.id));
    }

    /// A remembered hit for these spec bytes: (entry slot, entry id), to be
    /// checked against the entry (it may have gone).
    pub(super) fn hit(&self, wire: &[u8]) -> Option<(usize, u64)> {
        self.hits.get(&WireSpec::new(wire)?).copied()
    }

    /// The per-worker members of `spec`'s reuseport group. Scanned only
    /// while some exist, so the plain cached path stays one hash lookup.
    /// (Not even an iterator over the slab: after many sockets went, its
    /// first live slot can be thousands of empty ones in, which cost B2
    /// 4.5 µs.)
    pub(super) fn per_worker_group<'a>(
        &'a self,
        spec: &'a SocketSpec,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        (self.per_worker > 0)
            .then(|| {
                self.slab
                    .iter()
                    .map(|(_, e)| e)
                    .filter(move |e| e.per_worker && e.spec == *spec)
            })
            .into_iter()
            .flatten()
    }

    /// A socket the broker holds at the same address with other options.
    pub(super) fn same_address(&self, spec: &SocketSpec) -> Option<&Entry> {
        // Only reached on a cache miss for a specific port. Most misses are
        // for a port nobody holds: O(1); otherwise scan, port first.
        if !self.held_ports.contains_key(&spec.port) {
            return None;
        }
        self.slab.iter().map(|(_, e)| e).find(|e| {
            (e.keyed || e.per_worker)
                && e.port == spec.port
                && e.spec.same_address(spec)
                && e.spec != *spec
        })
    }
}

/// What the indexes know of an entry.
struct Key {
    /// The cache key, for a keyed entry.
    cache: Option<SocketSpec>,
    per_worker: bool,
    /// The port, for a keyed or per-worker entry.
    port: Option<u16>,
}

impl Key {
    fn of(e: &Entry) -> Key {
        Key {
            cache: e.keyed.then(|| e.spec_key()),
            per_worker: e.per_worker,
            port: (e.keyed || e.per_worker).then_some(e.port),
        }
    }
}

/// A spec's exact wire bytes (up to 32: an IPv6 address with a few options),
/// the key under which a cache hit is remembered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct WireSpec {
    len: u8,
    bytes: [u8; 32],
}

impl WireSpec {
    fn new(b: &[u8]) -> Option<WireSpec> {
        let mut w = WireSpec {
            len: u8::try_from(b.len()).ok().filter(|&n| n <= 32)?,
            bytes: [0; 32],
        };
        w.bytes[..b.len()].copy_from_slice(b);
        Some(w)
    }
}

impl std::hash::Hash for WireSpec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write(&self.bytes[..usize::from(self.len)]);
    }
}

impl Entry {
    /// Does `policy` allow `creds` to request this spec with `share`? The
    /// broker's policy is fixed for its life and judges a request by uid,
    /// gid, spec and share mode only, so the last triple allowed needs no
    /// second look (a cache hit by bytes asked it on every request).
    pub(super) fn allows(&self, policy: &Policy, creds: &Creds, share: ShareMode) -> bool {
        let key = (creds.uid, creds.gid, share);
        if self.allowed.get() == Some(key) {
            return true;
        }
        let ok = policy.check(creds, &self.spec, share).is_ok();
        if ok {
            self.allowed.set(Some(key));
        }
        ok
    }

    fn spec_key(&self) -> SocketSpec {
        // The cache key is the canonical spec as requested (port as asked).
        self.spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, holders: Holders) -> Entry {
        Entry {
            id,
            spec: "udp:127.0.0.1:0".parse().unwrap(),
            fd: OffLoopFd::new(std::fs::File::open("/dev/null").unwrap().into(), 0),
            port: 0,
            holders,
            keyed: false,
            per_worker: false,
            unix_ino: None,
            store_name: None,
            adopted: false,
            user: 0,
            allowed: Cell::new(None),
        }
    }

    /// The holder lists of entries that went serve new entries, empty;
    /// at most SPARE_LISTS are kept, however many entries go at once.
    #[test]
    fn holder_lists_are_reused_and_bounded() {
        let mut b = Sockets::new();
        let slots: Vec<usize> = (0..100)
            .map(|i| {
                let h = b.new_holders();
                b.insert(entry(i, h))
            })
            .collect();
        assert!(b.spare.is_empty());
        for es in slots {
            b.remove(es).unwrap();
        }
        assert_eq!(b.spare.len(), SPARE_LISTS);
        let h = b.new_holders();
        assert!(h.is_empty());
        assert_eq!(b.spare.len(), SPARE_LISTS - 1);
    }

    /// However many spec encodings clients make the table remember, `hits`
    /// stays within twice the cache plus 64, and what it remembers last
    /// leads to its entry.
    #[test]
    fn remembered_hits_are_bounded() {
        let mut b = Sockets::new();
        let spec: SocketSpec = "udp:127.0.0.1:9".parse().unwrap();
        let mut e = entry(7, Holders::default());
        e.spec = spec;
        e.port = 9;
        e.keyed = true;
        let es = b.insert(e);
        for i in 0..1000u32 {
            b.remember_hit(&i.to_le_bytes(), es);
            assert!(b.hits.len() <= 2 * b.cache.len() + 64, "{i}");
        }
        let last = WireSpec::new(&999u32.to_le_bytes()).unwrap();
        assert_eq!(b.hits.get(&last), Some(&(es, 7)));
        // Longer than 32 bytes: never remembered.
        let n = b.hits.len();
        b.remember_hit(&[1u8; 33], es);
        assert_eq!(b.hits.len(), n);
    }
}
