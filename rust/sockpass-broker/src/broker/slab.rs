//! A slab: stable indexes, reused after removal (connections, sockets).

/// A slab: stable indexes, reused after removal.
pub(super) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Slab<T> {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
    pub(super) fn insert(&mut self, v: T) -> usize {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(v);
            i
        } else {
            self.items.push(Some(v));
            self.items.len() - 1
        }
    }
    pub(super) fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take();
        if v.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        v
    }
    pub(super) fn len(&self) -> usize {
        self.len
    }
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }
    /// Put `v` at index `i` (rebuilding a handed-over broker); `i` is free.
    /// Call `rebuild_free` after the last one.
    pub(super) fn insert_at(&mut self, i: usize, v: T) {
        if self.items.len() <= i {
            self.items.resize_with(i + 1, || None);
        }
        debug_assert!(self.items[i].is_none());
        self.items[i] = Some(v);
        self.len += 1;
    }
    /// Recompute the free list after a run of `insert_at`.
    pub(super) fn rebuild_free(&mut self) {
        self.free.clear();
        self.free
            .extend((0..self.items.len()).filter(|&j| self.items[j].is_none()));
    }
    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
    }
}
