//! The per-persona key-value store: in the host's memory, shared by every call of a persona and
//! kept across hot reloads of it. In memory because personas are files synced to every host
//! instance and calls are short: durable, shared state belongs behind the persona's own API
//! (reached through `http`), not in a store each instance would have to replicate.

use std::collections::HashMap;
use std::sync::Mutex;

use super::bindings::kv_api::KvError;

pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 64 << 10;
pub const MAX_TOTAL_BYTES: usize = 1 << 20;
pub const MAX_KEYS: usize = 1024;

#[derive(Debug, Default)]
pub struct KvStore {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, String>,
    bytes: usize,
}

impl KvStore {
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().map.get(key).cloned()
    }

    pub fn set(&self, key: String, value: String) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge);
        }
        let mut e = self.lock();
        let old = e.map.get(&key).map_or(0, |v| key.len() + v.len());
        let bytes = e.bytes - old + key.len() + value.len();
        let keys = e.map.len() + usize::from(!e.map.contains_key(&key));
        if bytes > MAX_TOTAL_BYTES || keys > MAX_KEYS {
            return Err(KvError::Full);
        }
        e.bytes = bytes;
        e.map.insert(key, value);
        Ok(())
    }

    pub fn delete(&self, key: &str) {
        let mut e = self.lock();
        if let Some(v) = e.map.remove(key) {
            e.bytes -= key.len() + v.len();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave the map inconsistent with `bytes` beyond
        // one entry; keep serving rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_delete_and_caps() {
        let kv = KvStore::default();
        kv.set("a".into(), "1".into()).unwrap();
        kv.set("a".into(), "22".into()).unwrap();
        assert_eq!(kv.get("a").as_deref(), Some("22"));
        assert_eq!(kv.len(), 1);
        kv.delete("a");
        kv.delete("a");
        assert!(kv.is_empty());
        assert_eq!(kv.set("k".repeat(MAX_KEY_BYTES + 1), String::new()), Err(KvError::TooLarge));
        assert_eq!(kv.set("k".into(), "v".repeat(MAX_VALUE_BYTES + 1)), Err(KvError::TooLarge));
        for i in 0..MAX_KEYS {
            kv.set(format!("{i}"), String::new()).unwrap();
        }
        assert_eq!(kv.set("one-more".into(), String::new()), Err(KvError::Full));
        kv.set("0".into(), "replacing is fine".into()).unwrap();
    }

    #[test]
    fn total_bytes_are_capped() {
        let kv = KvStore::default();
        let big = "v".repeat(MAX_VALUE_BYTES);
        let mut stored = 0;
        while kv.set(format!("{stored}"), big.clone()).is_ok() {
            stored += 1;
        }
        assert_eq!(stored, MAX_TOTAL_BYTES / (MAX_VALUE_BYTES + 2));
        kv.delete("0");
        kv.set("0".into(), big).unwrap();
    }
}
