//! Operator overrides of one server, set at runtime on the admin listener
//! (`POST /pools/{pool}/servers/{name}`): an admin state (`ready`, `drain`, `maint`) and a weight.
//!
//! The overrides live in the runtime's registry by (pool, name), apart from the server's live state,
//! so they outlive reloads and address changes until an operator clears them (`{"state": "ready"}`,
//! `{"weight": null}`) or a reload removes the server. The admin state acts through one atomic that
//! readiness reads ([`crate::upstream::Upstream::is_ready`]), so strategies stay as they are; a weight
//! override rebuilds the snapshot, exactly as a config edit of the weight would.

use serde::Deserialize;
use std::sync::atomic::{AtomicU8, Ordering};

/// What an operator allows a server to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum AdminState {
    /// Normal service (health and limits permitting).
    #[default]
    Ready,
    /// No new requests, except those of sticky sessions already bound to it; requests in flight
    /// finish.
    Drain,
    /// No requests at all (sticky sessions move too); health checks keep running.
    Maint,
}

impl AdminState {
    /// `ready`, `drain` or `maint`: the word the API, `/status` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }

    /// The value of the `lb_upstream_admin_state` gauge: 0 ready, 1 drain, 2 maint.
    pub fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Drain,
            2 => Self::Maint,
            _ => Self::Ready,
        }
    }

    fn parse(word: &str) -> Option<Self> {
        match word {
            "ready" => Some(Self::Ready),
            "drain" => Some(Self::Drain),
            "maint" => Some(Self::Maint),
            _ => None,
        }
    }
}

/// A server's admin state as one atomic, read on every pick.
#[derive(Debug, Default)]
pub struct AdminCell(AtomicU8);

impl AdminCell {
    /// The state now.
    pub fn get(&self) -> AdminState {
        AdminState::from_code(self.0.load(Ordering::Relaxed))
    }

    /// Sets the state. Relaxed: a pick racing with the change may still choose the server once,
    /// exactly as with a health flip; nothing else is ordered by it.
    pub fn set(&self, state: AdminState) {
        self.0.store(state.code(), Ordering::Relaxed);
    }
}

/// The overrides in force for one server. Empty overrides are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    /// Set unless `ready`.
    pub state: Option<AdminState>,
    /// Weight used instead of the configured one.
    pub weight: Option<u32>,
}

impl Override {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.weight.is_none()
    }

    /// The override after `change`.
    pub fn with(self, change: Change) -> Self {
        let state = match change.state {
            Some(AdminState::Ready) => None,
            Some(s) => Some(s),
            None => self.state,
        };
        let weight = change.weight.unwrap_or(self.weight);
        Self { state, weight }
    }

    /// One line for `lb check --diff` and logs, e.g. `state drain, weight 5 (configured 1)`.
    pub fn describe(&self, configured_weight: Option<u32>) -> String {
        let mut parts = Vec::new();
        if let Some(state) = self.state {
            parts.push(format!("state {}", state.as_str()));
        }
        match (self.weight, configured_weight) {
            (Some(weight), Some(configured)) => {
                parts.push(format!("weight {weight} (configured {configured})"))
            }
            (Some(weight), None) => parts.push(format!("weight {weight}")),
            (None, _) => {}
        }
        parts.join(", ")
    }
}

/// One `POST /pools/{pool}/servers/{name}` request: what to change. At least one field is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// New admin state; `ready` clears the state override.
    pub state: Option<AdminState>,
    /// `Some(Some(w))` overrides the weight, `Some(None)` clears the override.
    pub weight: Option<Option<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChange {
    #[serde(default)]
    state: Option<String>,
    #[serde(default, deserialize_with = "present")]
    weight: Option<Option<i64>>,
}

/// Tells `"weight": null` (present, clears) from no `weight` key (absent, unchanged).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

impl Change {
    /// Parses a request body; the error says what is wrong, for a 400 answer.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let raw: RawChange = serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
        let state =
            match raw.state.as_deref() {
                None => None,
                Some(word) => Some(AdminState::parse(word).ok_or_else(|| {
                    format!("state: {word:?} is not one of \"ready\", \"drain\", \"maint\"")
                })?),
            };
        let max = crate::config::MAX_WEIGHT;
        let weight = match raw.weight {
            None => None,
            Some(None) => Some(None),
            Some(Some(w)) => match u32::try_from(w) {
                Ok(w) if w <= max => Some(Some(w)),
                _ => return Err(format!("weight: {w} is out of range 0..={max}")),
            },
        };
        if state.is_none() && weight.is_none() {
            return Err("set \"state\" and/or \"weight\", e.g. {\"state\": \"drain\"}".to_owned());
        }
        Ok(Self { state, weight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_into_changes() {
        let drain = Change::parse(br#"{"state":"drain"}"#).unwrap();
        assert_eq!(drain, Change { state: Some(AdminState::Drain), weight: None });
        let both = Change::parse(br#"{"state":"maint","weight":5}"#).unwrap();
        assert_eq!(both, Change { state: Some(AdminState::Maint), weight: Some(Some(5)) });
        let clear = Change::parse(br#"{"weight":null}"#).unwrap();
        assert_eq!(clear, Change { state: None, weight: Some(None) });
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let err = |body: &[u8]| Change::parse(body).unwrap_err();
        assert!(err(b"{}").contains("set \"state\""));
        assert!(err(br#"{"state":"off"}"#).contains("\"off\" is not one of"));
        assert!(err(br#"{"weight":-1}"#).contains("-1 is out of range 0..=1000"));
        assert!(err(br#"{"weight":1001}"#).contains("out of range"));
        assert!(err(br#"{"weight":"5"}"#).contains("invalid body"));
        assert!(err(br#"{"sate":"drain"}"#).contains("unknown field"));
        assert!(err(b"drain").contains("invalid body"));
    }

    #[test]
    fn ready_and_null_clear_overrides() {
        let set = Override::default()
            .with(Change { state: Some(AdminState::Drain), weight: None })
            .with(Change { state: None, weight: Some(Some(7)) });
        assert_eq!(set, Override { state: Some(AdminState::Drain), weight: Some(7) });
        assert_eq!(set.describe(Some(1)), "state drain, weight 7 (configured 1)");
        assert_eq!(set.describe(None), "state drain, weight 7");
        let cleared = set
            .with(Change { state: Some(AdminState::Ready), weight: None })
            .with(Change { state: None, weight: Some(None) });
        assert!(cleared.is_empty());
    }

    #[test]
    fn the_cell_round_trips_every_state() {
        let cell = AdminCell::default();
        assert_eq!(cell.get(), AdminState::Ready);
        for s in [AdminState::Drain, AdminState::Maint, AdminState::Ready] {
            cell.set(s);
            assert_eq!(cell.get(), s);
        }
    }
}
