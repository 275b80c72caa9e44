//! The API key, wrapped so it cannot leak: `Debug` prints a placeholder, there is no `Display`, and the
//! only way to read it is the explicit `expose()` used when building the `Authorization` header.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Trims surrounding whitespace (keys read from mounted files usually end in a newline).
    /// Returns `None` for an empty key.
    pub fn new(raw: impl Into<String>) -> Option<Self> {
        let s: String = raw.into();
        let t = s.trim();
        if t.is_empty() {
            None
        } else {
            Some(ApiKey(t.to_string()))
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let k = ApiKey::new("sk-secret-123\n").unwrap();
        assert_eq!(k.expose(), "sk-secret-123");
        let dbg = format!("{k:?} {:?}", Some(&k));
        assert!(!dbg.contains("sk-secret"), "{dbg}");
    }

    #[test]
    fn empty_key_is_none() {
        assert!(ApiKey::new("  \n").is_none());
    }
}
