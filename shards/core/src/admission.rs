//! What a server admits of its authenticated clients: connections and sessions, counted
//! per client key and in total against named limits, so that one authorized client
//! (or all of them together) cannot take every descriptor, every blocking thread or all
//! of the server's memory. A pure table: the driver asks it before accepting a
//! connection or starting a session, and tells it when one ends.

use std::collections::HashMap;
use std::hash::Hash;

/// Connections one client key may hold at once. A client run opens one connection per
/// client shard (its core count, up to `SHARDS_MAX`), so this admits a client of up to
/// 256 cores, or several smaller runs of the same key side by side; a larger client
/// needs `--cores 256` or fewer.
pub const CONNECTIONS_PER_KEY_MAX: usize = 256;

/// Connections the server holds at once, all keys together. Each costs a socket's
/// worth of kernel buffers and up to its flow-control window of queued bytes.
pub const CONNECTIONS_MAX: usize = 1024;

/// Sessions (control streams that said `Hello`) one client key may run at once. Each
/// holds a manifest, a plan and its reserved space until it ends.
pub const SESSIONS_PER_KEY_MAX: usize = 16;

/// Sessions the server runs at once, all keys together.
pub const SESSIONS_MAX: usize = 128;

/// Encoded manifest bytes the server holds for all its sessions together (their
/// in-memory state is two to four times this). One session may hold up to
/// `wire::MANIFEST_BYTES_MAX`; a session whose manifest would pass this total is refused
/// with `Busy`, not left to exhaust the server's memory.
pub const MANIFEST_BYTES_HELD_MAX: u64 = 4 << 30;

/// Encoded manifest bytes the sessions of one client key hold together: one manifest of
/// the largest size, or several smaller ones, so that one key cannot take the whole
/// `MANIFEST_BYTES_HELD_MAX` from the others.
pub const MANIFEST_BYTES_PER_KEY_MAX: u64 = crate::wire::MANIFEST_BYTES_MAX;

const _: () = assert!(crate::wire::MANIFEST_BYTES_MAX <= MANIFEST_BYTES_PER_KEY_MAX);
const _: () = assert!(MANIFEST_BYTES_PER_KEY_MAX < MANIFEST_BYTES_HELD_MAX);
const _: () = assert!(SESSIONS_PER_KEY_MAX <= SESSIONS_MAX);
const _: () = assert!(CONNECTIONS_PER_KEY_MAX <= CONNECTIONS_MAX);

/// Which limit refused an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ConnectionsPerKey,
    Connections,
    SessionsPerKey,
    Sessions,
    ManifestBytesPerKey,
    ManifestBytes,
}

impl Refusal {
    /// What the refused client (and the operator's log) is told.
    pub fn message(self) -> String {
        match self {
            Refusal::ConnectionsPerKey => format!(
                "this key already holds {CONNECTIONS_PER_KEY_MAX} connections to the server"
            ),
            Refusal::Connections => {
                format!("the server already holds {CONNECTIONS_MAX} connections")
            }
            Refusal::SessionsPerKey => {
                format!("this key already runs {SESSIONS_PER_KEY_MAX} sessions on the server")
            }
            Refusal::Sessions => format!("the server already runs {SESSIONS_MAX} sessions"),
            Refusal::ManifestBytesPerKey => format!(
                "this key's sessions would hold more than {} GiB of manifests on the server",
                MANIFEST_BYTES_PER_KEY_MAX >> 30
            ),
            Refusal::ManifestBytes => format!(
                "the server's sessions would hold more than {} GiB of manifests; try again later",
                MANIFEST_BYTES_HELD_MAX >> 30
            ),
        }
    }
}

/// Counts per key and in total, for connections and for sessions.
#[derive(Debug)]
pub struct Admission<K> {
    connections: Counts<K>,
    sessions: Counts<K>,
    /// Manifest bytes held by all sessions, and by each key's.
    manifests: u64,
    manifests_per_key: HashMap<K, u64>,
}

impl<K: Hash + Eq + Clone> Default for Admission<K> {
    fn default() -> Self {
        Admission {
            connections: Counts::new(CONNECTIONS_PER_KEY_MAX, CONNECTIONS_MAX),
            sessions: Counts::new(SESSIONS_PER_KEY_MAX, SESSIONS_MAX),
            manifests: 0,
            manifests_per_key: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Admission<K> {
    /// Admits one more connection of `key`, or says which limit it would break. An
    /// admitted connection must be given back with [`Admission::connection_ended`].
    pub fn connect(&mut self, key: &K) -> Result<(), Refusal> {
        self.connections.take(key).map_err(|per_key| match per_key {
            true => Refusal::ConnectionsPerKey,
            false => Refusal::Connections,
        })
    }

    pub fn connection_ended(&mut self, key: &K) {
        self.connections.give_back(key);
    }

    /// Admits one more session of `key`, or says which limit it would break. An
    /// admitted session must be given back with [`Admission::session_ended`].
    pub fn start_session(&mut self, key: &K) -> Result<(), Refusal> {
        self.sessions.take(key).map_err(|per_key| match per_key {
            true => Refusal::SessionsPerKey,
            false => Refusal::Sessions,
        })
    }

    pub fn session_ended(&mut self, key: &K) {
        self.sessions.give_back(key);
    }

    /// Holds `bytes` more of a session of `key`'s manifest, or refuses if the key's
    /// sessions would pass `MANIFEST_BYTES_PER_KEY_MAX` or all sessions'
    /// `MANIFEST_BYTES_HELD_MAX`. Given back with [`Admission::release_manifest`].
    pub fn hold_manifest(&mut self, key: &K, bytes: u64) -> Result<(), Refusal> {
        let mine = self.manifests_per_key.get(key).copied().unwrap_or(0);
        let mine = match mine.checked_add(bytes) {
            Some(m) if m <= MANIFEST_BYTES_PER_KEY_MAX => m,
            _ => return Err(Refusal::ManifestBytesPerKey),
        };
        match self.manifests.checked_add(bytes) {
            Some(held) if held <= MANIFEST_BYTES_HELD_MAX => {
                self.manifests = held;
                self.manifests_per_key.insert(key.clone(), mine);
                Ok(())
            }
            _ => Err(Refusal::ManifestBytes),
        }
    }

    pub fn release_manifest(&mut self, key: &K, bytes: u64) {
        self.manifests = self.manifests.saturating_sub(bytes);
        if let Some(mine) = self.manifests_per_key.get_mut(key) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                self.manifests_per_key.remove(key);
            }
        }
    }

    /// Connections and sessions held now, in total.
    pub fn held(&self) -> (usize, usize) {
        (self.connections.total, self.sessions.total)
    }
}

/// One kind of thing counted per key and in total. Keys with nothing held are removed,
/// so the table holds at most `total_max` keys whatever clients come and go.
#[derive(Debug)]
struct Counts<K> {
    per_key: HashMap<K, usize>,
    total: usize,
    per_key_max: usize,
    total_max: usize,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(per_key_max: usize, total_max: usize) -> Self {
        Counts {
            per_key: HashMap::new(),
            total: 0,
            per_key_max,
            total_max,
        }
    }

    /// Takes one for `key`; on refusal, whether the per-key limit (rather than the total)
    /// was the one reached.
    fn take(&mut self, key: &K) -> Result<(), bool> {
        let held = self.per_key.get(key).copied().unwrap_or(0);
        if held >= self.per_key_max {
            return Err(true);
        }
        if self.total >= self.total_max {
            return Err(false);
        }
        *self.per_key.entry(key.clone()).or_insert(0) += 1;
        self.total += 1;
        Ok(())
    }

    fn give_back(&mut self, key: &K) {
        let Some(held) = self.per_key.get_mut(key) else {
            debug_assert!(false, "given back more than was taken");
            return;
        };
        *held -= 1;
        if *held == 0 {
            self.per_key.remove(key);
        }
        self.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_meets_its_own_limit_and_all_keys_the_total() {
        let mut a = Admission::<u32>::default();
        for _ in 0..SESSIONS_PER_KEY_MAX {
            a.start_session(&1).unwrap();
        }
        assert_eq!(a.start_session(&1), Err(Refusal::SessionsPerKey));
        // Another key is not affected by the first one's limit.
        a.start_session(&2).unwrap();
        a.session_ended(&1);
        a.start_session(&1).unwrap();
        // Fill up to the total with more keys.
        let mut key = 3;
        while a.held().1 < SESSIONS_MAX {
            a.start_session(&key).unwrap();
            key += 1;
        }
        assert_eq!(a.start_session(&key), Err(Refusal::Sessions));
        assert_eq!(a.start_session(&1), Err(Refusal::SessionsPerKey));
        a.session_ended(&2);
        a.start_session(&key).unwrap();
    }

    #[test]
    fn connections_are_counted_apart_from_sessions_and_keys_are_forgotten() {
        let mut a = Admission::<u32>::default();
        for _ in 0..CONNECTIONS_PER_KEY_MAX {
            a.connect(&7).unwrap();
        }
        assert_eq!(a.connect(&7), Err(Refusal::ConnectionsPerKey));
        a.start_session(&7).unwrap();
        for _ in 0..CONNECTIONS_PER_KEY_MAX {
            a.connection_ended(&7);
        }
        a.session_ended(&7);
        assert_eq!(a.held(), (0, 0));
        assert!(a.connections.per_key.is_empty() && a.sessions.per_key.is_empty());
        for key in 0..CONNECTIONS_MAX as u32 {
            a.connect(&key).unwrap();
        }
        assert_eq!(a.connect(&u32::MAX), Err(Refusal::Connections));
        assert!(Refusal::Connections.message().contains("1024"));
    }

    #[test]
    fn manifests_are_held_up_to_each_keys_share_and_the_total() {
        use crate::wire::MANIFEST_BYTES_MAX;
        let mut a = Admission::<u32>::default();
        a.hold_manifest(&1, MANIFEST_BYTES_PER_KEY_MAX - 10)
            .unwrap();
        assert_eq!(a.hold_manifest(&1, 11), Err(Refusal::ManifestBytesPerKey));
        assert_eq!(
            a.hold_manifest(&1, u64::MAX),
            Err(Refusal::ManifestBytesPerKey)
        );
        a.hold_manifest(&1, 10).unwrap();
        // Other keys fill the total.
        let mut key = 2;
        while a.manifests + MANIFEST_BYTES_MAX <= MANIFEST_BYTES_HELD_MAX {
            a.hold_manifest(&key, MANIFEST_BYTES_MAX).unwrap();
            key += 1;
        }
        assert_eq!(
            a.hold_manifest(&key, MANIFEST_BYTES_MAX),
            Err(Refusal::ManifestBytes)
        );
        a.release_manifest(&1, MANIFEST_BYTES_PER_KEY_MAX);
        assert!(!a.manifests_per_key.contains_key(&1));
        a.hold_manifest(&key, MANIFEST_BYTES_MAX).unwrap();
    }
}
