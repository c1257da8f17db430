//! [`InlineKey`]: a session key kept inside the hash table that holds it when it is short, so
//! that finding it compares bytes already in the cache line the table probed, not behind a
//! pointer.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Keys up to this many bytes are kept inline (every key of the built-in strategies with
/// a namespace of up to 9 bytes: two 64-bit ids and a separator take 21).
const INLINE: usize = 30;

/// A session key, kept inside its table when short. Hashed and compared as its bytes, so a
/// table of them is looked up with `key.as_bytes()`.
#[derive(Clone)]
pub(crate) enum InlineKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl InlineKey {
    pub(crate) fn new(key: &str) -> Self {
        Self::concat(&[key])
    }

    /// The key that `parts` make one after the other, written straight into its place.
    pub(crate) fn concat(parts: &[&str]) -> Self {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        match u8::try_from(total) {
            Ok(len) if total <= INLINE => {
                let mut bytes = [0; INLINE];
                let mut at = 0;
                for part in parts {
                    bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
                    at += part.len();
                }
                InlineKey::Inline { len, bytes }
            }
            _ => InlineKey::Heap(parts.concat().into_boxed_str()),
        }
    }

    /// The key's bytes: what the table hashes and compares, so a lookup checks no UTF-8.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            InlineKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineKey::Heap(key) => key.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always the bytes of a `&str` (see `new`), so this never falls back.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl From<String> for InlineKey {
    /// Keeps a long key's own buffer.
    fn from(key: String) -> Self {
        if key.len() <= INLINE {
            InlineKey::new(&key)
        } else {
            InlineKey::Heap(key.into_boxed_str())
        }
    }
}

impl std::ops::Deref for InlineKey {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for InlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl Borrow<[u8]> for InlineKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for InlineKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for InlineKey {}

impl PartialOrd for InlineKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

// Byte order is the code point order of UTF-8, the order keys are listed in.
impl Ord for InlineKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::InlineKey;

    #[test]
    fn a_key_reads_back_as_given_inline_or_not() {
        for key in [
            "",
            "Count:1000001:1000001",
            &"k".repeat(30),
            &"é".repeat(40),
        ] {
            let inline = InlineKey::new(key);
            assert_eq!(inline.as_str(), key);
            assert_eq!(inline.as_bytes(), key.as_bytes());
            assert_eq!(
                matches!(inline, InlineKey::Inline { .. }),
                key.len() <= 30,
                "{key}"
            );
            let owned = InlineKey::from(key.to_owned());
            assert!(owned == inline && owned.as_str() == key);
            let (head, tail) = key.split_at(key.len() / 2 / 2 * 2);
            let parts = InlineKey::concat(&[head, "", tail]);
            assert!(parts == inline && parts.as_str() == key);
            assert_eq!(
                matches!(parts, InlineKey::Inline { .. }),
                key.len() <= 30,
                "{key}"
            );
        }
    }
}
