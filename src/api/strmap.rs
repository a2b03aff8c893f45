//! [`StrMap`]: a small string-to-string map stored as one sorted vector.
//!
//! Every allocation in an IPAMBlock carries a few `secondary` attributes (`namespace`, `pod`,
//! `node`, `timestamp`). As a `BTreeMap` each of those maps cost a 544-byte tree node besides
//! its strings: 32 KiB of a 44 KiB block, most of the operator's block cache at 1,000 blocks.
//! A sorted vector holds the same four entries in 192 bytes and serializes to the same JSON.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map of strings with `BTreeMap`'s semantics and JSON form (keys sorted, the last of
/// duplicate keys wins), stored compactly for maps of a handful of entries.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StrMap(Vec<(String, String)>);

impl StrMap {
    pub fn new() -> StrMap {
        StrMap(Vec::new())
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl std::ops::Index<&str> for StrMap {
    type Output = String;
    /// The value of `key`; panics when it is absent, as `BTreeMap`'s index does.
    fn index(&self, key: &str) -> &String {
        self.get(key)
            .unwrap_or_else(|| panic!("no key {key:?} in StrMap"))
    }
}

impl fmt::Debug for StrMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, String)> for StrMap {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> StrMap {
        let mut entries: Vec<(String, String)> = iter.into_iter().collect();
        // Stable sort, then keep the last of equal keys: BTreeMap::from_iter's result.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(entries.len());
        for e in entries {
            match out.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => out.push(e),
            }
        }
        out.shrink_to_fit();
        StrMap(out)
    }
}

impl<const N: usize> From<[(String, String); N]> for StrMap {
    fn from(entries: [(String, String); N]) -> StrMap {
        entries.into_iter().collect()
    }
}

impl IntoIterator for StrMap {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for StrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrMap, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<StrMap, A::Error> {
                let mut entries = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(e) = a.next_entry::<String, String>()? {
                    entries.push(e);
                }
                Ok(entries.into_iter().collect())
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Same entries, same lookups and the same JSON as a BTreeMap, whatever the input order
        /// and duplicates.
        #[test]
        fn behaves_as_a_btreemap(entries in prop::collection::vec(("[a-e]{0,3}", "[a-z]{0,4}"), 0..12),
                                 probe in "[a-e]{0,3}") {
            let ours: StrMap = entries.iter().cloned().collect();
            let theirs: BTreeMap<String, String> = entries.iter().cloned().collect();
            prop_assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&theirs).unwrap());
            prop_assert_eq!(ours.get(&probe), theirs.get(&probe));
            prop_assert_eq!(ours.len(), theirs.len());
            let json = serde_json::to_string(&theirs).unwrap();
            prop_assert_eq!(&serde_json::from_str::<StrMap>(&json).unwrap(), &ours);
            let mut a = ours.clone();
            let mut b = theirs.clone();
            prop_assert_eq!(a.insert(probe.clone(), "x".into()), b.insert(probe.clone(), "x".into()));
            prop_assert_eq!(a.remove("a"), b.remove("a"));
            prop_assert_eq!(serde_json::to_value(&a).unwrap(), serde_json::to_value(&b).unwrap());
        }
    }

    #[test]
    fn duplicate_json_keys_keep_the_last_value_as_serde_does_for_maps() {
        let m: StrMap = serde_json::from_str(r#"{"pod":"a","node":"n","pod":"b"}"#).unwrap();
        let b: BTreeMap<String, String> =
            serde_json::from_str(r#"{"pod":"a","node":"n","pod":"b"}"#).unwrap();
        assert_eq!(m.get("pod"), b.get("pod"));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"node":"n","pod":"b"}"#);
    }
}
