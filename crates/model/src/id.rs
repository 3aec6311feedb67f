//! Sandbox ids: 12 lowercase hex digits, made from OS randomness. The one
//! place their format is known; everything else makes, parses, stores and
//! routes a [`SandboxId`].

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// Hex digits in an id.
const LEN: usize = 12;

/// A sandbox's id. Parsing checks the format, so a value of this type
/// never holds a path, a name or anything else a caller made up.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SandboxId(String);

impl SandboxId {
    /// A new random id.
    pub fn random() -> SandboxId {
        let mut b = [0u8; LEN / 2];
        getrandom::fill(&mut b).expect("OS randomness");
        SandboxId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// Parse an id; anything that is not one is a sandbox that does not
    /// exist (`not_found`), as an unknown id is.
    pub fn parse(s: &str) -> Result<SandboxId> {
        if Self::is_valid(s) {
            Ok(SandboxId(s.to_string()))
        } else {
            Err(Error::not_found("sandbox", s))
        }
    }

    pub fn is_valid(s: &str) -> bool {
        s.len() == LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// In the OpenAPI document: a string of the id's format.
impl utoipa::PartialSchema for SandboxId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(format!("^[0-9a-f]{{{LEN}}}$")))
            .description(Some("A sandbox id: 12 lowercase hex digits"))
            .into()
    }
}

impl utoipa::ToSchema for SandboxId {}

impl Deref for SandboxId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SandboxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for SandboxId {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl Borrow<str> for SandboxId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for SandboxId {
    type Err = Error;
    fn from_str(s: &str) -> Result<SandboxId> {
        SandboxId::parse(s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

impl PartialEq<str> for SandboxId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SandboxId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for SandboxId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<SandboxId> for String {
    fn eq(&self, other: &SandboxId) -> bool {
        *self == other.0
    }
}

impl PartialEq<SandboxId> for &str {
    fn eq(&self, other: &SandboxId) -> bool {
        *self == other.0
    }
}

impl<'de> Deserialize<'de> for SandboxId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<SandboxId, D::Error> {
        let s = String::deserialize(d)?;
        SandboxId::parse(&s).map_err(|_| serde::de::Error::custom(format!("'{s}' is not a sandbox id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_ids_and_nothing_else() {
        let id = SandboxId::random();
        assert_eq!(id.len(), LEN);
        assert_eq!(SandboxId::parse(&id).unwrap(), id);
        for bad in ["", "0123456789a", "0123456789abc", "0123456789AB", "../../etc/pa", "0123456789ag", "01234567 9ab"]
        {
            let e = SandboxId::parse(bad).unwrap_err();
            assert_eq!(e.code(), "not_found", "{bad:?}");
        }
        assert_ne!(SandboxId::random(), SandboxId::random());
    }

    #[test]
    fn serde_is_a_plain_string_and_checks_the_format() {
        let id = SandboxId::parse("0123456789ab").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0123456789ab\"");
        assert_eq!(serde_json::from_str::<SandboxId>("\"0123456789ab\"").unwrap(), id);
        assert!(serde_json::from_str::<SandboxId>("\"../x\"").is_err());
        assert_eq!(format!("{id} {id:?}"), "0123456789ab \"0123456789ab\"");
    }
}
