//! [`StrMap`]: a small string-to-string map packed into one string.
//!
//! Every allocation in an IPAMBlock carries a few `secondary` attributes (`namespace`, `pod`,
//! `node`, `timestamp`). As a `BTreeMap` each of those maps cost a 544-byte tree node besides
//! its strings; as a vector of string pairs, 192 bytes plus eight small allocations (~500 bytes
//! in all). Packed into one string, the same four entries take one ~130-byte allocation: the
//! operator's block cache holds 50,000 of them at 1,000 blocks. Same semantics and JSON as a
//! `BTreeMap<String, String>`.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map of strings with `BTreeMap`'s semantics and JSON form (keys sorted, the last of
/// duplicate keys wins), stored compactly for maps of a handful of entries: keys and values in
/// key order, each as `<byte length>:<text>` (netstring-like, so any text is allowed).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StrMap(Box<str>);

/// The entries of a packed map, in order.
struct Entries<'a>(&'a str);

impl<'a> Entries<'a> {
    fn piece(&mut self) -> Option<&'a str> {
        let (len, rest) = self.0.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let (piece, rest) = rest.split_at(len);
        self.0 = rest;
        Some(piece)
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        Some((self.piece()?, self.piece()?))
    }
}

impl StrMap {
    pub fn new() -> StrMap {
        StrMap::default()
    }

    /// Packs entries already sorted by key with no duplicate keys.
    fn pack<'a>(sorted: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> StrMap {
        let digits = |n: usize| n.checked_ilog10().unwrap_or(0) as usize + 1;
        let size: usize = sorted
            .clone()
            .map(|(k, v)| digits(k.len()) + digits(v.len()) + 2 + k.len() + v.len())
            .sum();
        let mut s = String::with_capacity(size);
        for (k, v) in sorted {
            for piece in [k, v] {
                s.push_str(&piece.len().to_string());
                s.push(':');
                s.push_str(piece);
            }
        }
        StrMap(s.into_boxed_str())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        let old = self.get(&key).map(str::to_string);
        let mut entries: Vec<(&str, &str)> = self.iter().filter(|(k, _)| *k != key).collect();
        let at = entries.partition_point(|(k, _)| *k < key.as_str());
        entries.insert(at, (&key, &value));
        *self = StrMap::pack(entries.into_iter());
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let old = self.get(key)?.to_string();
        *self = StrMap::pack(self.iter().filter(|(k, _)| *k != key));
        Some(old)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        Entries(&self.0)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }
}

impl Clone for Entries<'_> {
    fn clone(&self) -> Self {
        Entries(self.0)
    }
}

impl std::ops::Index<&str> for StrMap {
    type Output = str;
    /// The value of `key`; panics when it is absent, as `BTreeMap`'s index does.
    fn index(&self, key: &str) -> &str {
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
        StrMap::pack(out.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
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
        fn behaves_as_a_btreemap(entries in prop::collection::vec(("[a-c1:]{0,3}", "[a-z0-9: é]{0,12}"), 0..12),
                                 probe in "[a-c1:]{0,3}") {
            let ours: StrMap = entries.iter().cloned().collect();
            let theirs: BTreeMap<String, String> = entries.iter().cloned().collect();
            prop_assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&theirs).unwrap());
            prop_assert_eq!(ours.get(&probe), theirs.get(&probe).map(String::as_str));
            prop_assert_eq!(ours.len(), theirs.len());
            let json = serde_json::to_string(&theirs).unwrap();
            prop_assert_eq!(&serde_json::from_str::<StrMap>(&json).unwrap(), &ours);
            let mut a = ours.clone();
            let mut b = theirs.clone();
            prop_assert_eq!(a.insert(probe.clone(), "x".into()), b.insert(probe.clone(), "x".into()));
            prop_assert_eq!(a.remove("a"), b.remove("a"));
            prop_assert_eq!(a.iter().collect::<Vec<_>>(), b.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
            prop_assert_eq!(serde_json::to_value(&a).unwrap(), serde_json::to_value(&b).unwrap());
        }
    }

    #[test]
    fn duplicate_json_keys_keep_the_last_value_as_serde_does_for_maps() {
        let m: StrMap = serde_json::from_str(r#"{"pod":"a","node":"n","pod":"b"}"#).unwrap();
        let b: BTreeMap<String, String> =
            serde_json::from_str(r#"{"pod":"a","node":"n","pod":"b"}"#).unwrap();
        assert_eq!(m.get("pod"), b.get("pod").map(String::as_str));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"node":"n","pod":"b"}"#);
    }
}
