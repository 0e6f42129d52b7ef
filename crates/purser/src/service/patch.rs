//! The three-state field of update requests (absent / explicit `null` / value) and the
//! `null`-means-default field helper. Request types are service types deserialised by the HTTP
//! layer, so this sits below `api` where both layers may use it.
//! Invariant: `Patch::Absent` only ever comes from `#[serde(default)]` (a missing field);
//! an explicit JSON `null` is always `Patch::Null`.

use serde::{Deserialize, Deserializer};

/// A field of an update request: absent (leave unchanged), `null` (clear), or a value.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Patch<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Patch<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Patch::Absent)
    }

    pub fn is_present(&self) -> bool {
        !self.is_absent()
    }

    /// The new column value if the field was sent: `Some(None)` clears, `Some(Some(v))` sets.
    pub fn as_update(&self) -> Option<Option<&T>> {
        match self {
            Patch::Absent => None,
            Patch::Null => Some(None),
            Patch::Value(v) => Some(Some(v)),
        }
    }

    pub fn value(&self) -> Option<&T> {
        match self {
            Patch::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Applies the patch to a current value.
    pub fn apply_to(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Absent => current,
            Patch::Null => None,
            Patch::Value(v) => Some(v),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(v) => Patch::Value(v),
        })
    }
}

/// Accepts JSON `null` for a field that defaults when absent (pydantic's `list = []` style).
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
