//! The broker's side of the systemd fd store: cached sockets pushed there,
//! and adopted back after a crash.

use super::cache::Entry;
use super::{Broker, Noisy};
use crate::closer::OffLoopFd;
use crate::fdstore::{self, FdStore};
use crate::holders::{Holder, Owner};
use crate::log::Level;
use sockpass::sys::{self, Creds};
use sockpass::ShareMode;
use sockpass::SocketSpec;
use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

impl Broker {
    /// Keep cached sockets in the systemd fd store from now on; the ones
    /// already cached and not yet stored are pushed now.
    pub fn use_fd_store(&mut self, st: FdStore) {
        self.fd_store = Some(st);
        let slots: Vec<usize> = self
            .sockets
            .iter()
            .filter(|(_, e)| e.keyed && e.store_name.is_none())
            .map(|(i, _)| i)
            .collect();
        for es in slots {
            self.store_entry(es);
        }
    }

    /// Push a cached socket to the fd store (best effort: a failure is
    /// logged and only costs the socket's survival of a crash).
    pub(super) fn store_entry(&mut self, es: usize) {
        let Some(st) = &self.fd_store else { return };
        let e = self.sockets.get(es).unwrap();
        // Clients decide what is cached: these lines are theirs to cause.
        let Some(name) = fdstore::fd_name(e.id, &e.spec.to_string()) else {
            let spec = e.spec.to_string();
            self.log_noisy(
                Noisy::Store,
                Level::Warning,
                format_args!("fd store: {spec} has too long a name to store"),
            );
            return;
        };
        match st.store(&name, e.fd.as_fd()) {
            Ok(()) => self.sockets.get_mut(es).unwrap().store_name = Some(name),
            Err(err) => self.log_noisy(
                Noisy::Store,
                Level::Warning,
                format_args!("fd store: cannot store {name}: {err}"),
            ),
        }
    }

    /// Re-populate the cache with sockets from the fd store (after a crash).
    /// Each is held by an anonymous reservation: the first request for its
    /// spec claims it (it is served from the cache, same socket), and one
    /// nobody asks for within the reservation lifetime is closed. Returns
    /// how many were adopted; duplicates and unparsable ones are closed.
    pub fn adopt_stored(&mut self, stored: Vec<(String, String, OwnedFd)>) -> usize {
        let mut n = 0;
        for (name, spec, fd) in stored {
            let spec: SocketSpec = match spec.parse::<SocketSpec>() {
                Ok(s) => s.canonical(),
                Err(err) => {
                    self.log(format_args!("fd store: dropping {name}: {err}"));
                    self.unstore(&name);
                    continue;
                }
            };
            if spec.is_ephemeral() || self.sockets.cached(&spec).is_some() {
                self.unstore(&name);
                continue;
            }
            let port = if spec.proto.is_unix() {
                0
            } else {
                sys::local_port(&fd).unwrap_or(spec.port)
            };
            let eid = self.next_entry_id;
            self.next_entry_id += 1;
            // Held by the broker: charged to root.
            let root = self.users.slot(0, &self.cfg, self.broker_uid);
            let until = Instant::now() + self.cfg.limits.reservation_ttl;
            let holder = |token| Holder {
                token,
                rslot: 0,
                owner: Owner::Reserved(until),
                share: ShareMode::Any,
                app: Rc::from("(fd store)"),
                creds: Creds::default(),
                conn_id: 0,
            };
            let unix_ino = spec
                .proto
                .is_unix()
                .then(|| crate::unixsock::path_ino(&spec.path))
                .flatten();
            let key = crate::closer::port_key(&spec, port);
            let holders = self.sockets.new_holders();
            let es = self.sockets.insert(Entry {
                id: eid,
                spec,
                fd: OffLoopFd::new(fd, key),
                port,
                holders,
                keyed: true,
                per_worker: false,
                unix_ino,
                store_name: Some(name),
                adopted: true,
                user: root,
                allowed: Cell::new(None),
            });
            self.users.get_mut(root).sockets += 1;
            // A reserved holder: `add_ref` counts the reservation.
            if self.add_ref(es, holder, root).is_err() {
                // No token: not adopted (its name stays in the store).
                self.sockets.remove(es);
                self.users.get_mut(root).sockets -= 1;
                continue;
            }
            n += 1;
        }
        if n > 0 {
            self.log(format_args!(
                "adopted {n} socket(s) from the fd store; each is kept for {:?} unless requested",
                self.cfg.limits.reservation_ttl
            ));
        }
        n
    }

    pub(super) fn unstore(&self, name: &str) {
        if let Some(st) = &self.fd_store {
            let _ = st.remove(name);
        }
    }

    /// A request for an adopted socket's spec: drop the broker's own
    /// reference so the requester gets it as if it were freshly cached.
    pub(super) fn claim_adopted(&mut self, es: usize) {
        let Some(e) = self.sockets.get_mut(es) else {
            return;
        };
        if !e.adopted {
            return;
        }
        e.adopted = false;
        let mine: Vec<u32> = e
            .holders
            .iter()
            .filter(|h| h.conn_id == 0 && matches!(h.owner, Owner::Reserved(_)))
            .map(|h| h.rslot)
            .collect();
        // Each was reserved: `remove_ref` ends the reservation.
        for r in mine {
            self.remove_ref(r);
        }
    }
}
