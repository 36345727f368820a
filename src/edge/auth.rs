//! HTTP basic authentication for a route, from an htpasswd file of bcrypt hashes (`htpasswd -B`).
//! The file is read with the config, so a reload re-reads it. A password is checked by the bcrypt
//! library (its own constant-time comparison) on the blocking pool, a few at a time, so a flood of
//! guesses costs CPU but never stalls the request path; a successful check is remembered (by a
//! digest of the credentials) so a client that sends the same header on every request pays once.

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Credentials remembered as verified, at most; the set is emptied when full.
const REMEMBERED: usize = 4096;

/// How long a request waits for its turn at bcrypt before it is answered 503: guesses flooding in
/// must not queue without end, nor hold genuine logins behind them for long.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A route's basic auth.
pub struct BasicAuth {
    /// The htpasswd file, as configured.
    pub path: String,
    /// SHA-256 of the file as read: a change is a change to reload.
    pub digest: [u8; 32],
    /// The realm in `WWW-Authenticate`.
    pub realm: String,
    /// Whether the client's `Authorization` header goes on to the server (default: no).
    pub forward: bool,
    users: HashMap<String, String>,
    /// A hash of the file's highest cost, checked when the user is unknown, so that an unknown user
    /// costs what a known one does and the time taken does not tell which names exist.
    decoy: String,
    challenge: HeaderValue,
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Basic` header, or one that does not decode to `user:password`.
    Missing,
    /// Unknown user or wrong password.
    Wrong,
    /// Too many checks waiting: no turn within the wait.
    Busy,
}

impl BasicAuth {
    /// Reads `file`. Every line is `user:hash` (blank lines and `#` comments aside) with a bcrypt
    /// hash; anything else is an error naming the line.
    pub fn load(path: &str, realm: &str, forward: bool) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{path} line {}", i + 1);
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("{at}: expected \"user:hash\""));
            };
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!("{at}: user {user:?} has no bcrypt hash; make one with `htpasswd -B`"));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(format!("{at}: user {user:?} appears twice"));
            }
        }
        if users.is_empty() {
            return Err(format!("{path} names no user"));
        }
        // bcrypt's cost sits in the hash (`$2y$05$...`): `htpasswd -B` writes 5 unless told otherwise.
        let cost = users
            .values()
            .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let decoy = bcrypt::hash("not a password", cost.clamp(4, 31)).map_err(|e| format!("{path}: {e}"))?;
        let realm_text = realm.replace(['"', '\\'], "");
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm_text}\", charset=\"UTF-8\""))
            .map_err(|_| format!("realm {realm:?} is not a valid header value"))?;
        Ok(Self {
            path: path.to_owned(),
            digest: crate::config::Digest::of(&[&bytes]).0,
            realm: realm.to_owned(),
            forward,
            users,
            decoy,
            challenge,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }

    /// Checks the request's `Authorization` header.
    pub async fn check(self: &Arc<Self>, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Err(Refusal::Missing) };
        let Some((user, password)) = decode(value.as_bytes()) else { return Err(Refusal::Missing) };
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if self.verified.lock().is_ok_and(|v| v.contains(&digest)) {
            return Ok(());
        }
        let hash = self.users.get(&user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.clone());
        // The turn moves into the check: a client that goes away does not free it while its bcrypt
        // still runs, so at most one check per core runs at any time.
        let turn = match tokio::time::timeout(TURN_WAIT, Arc::clone(bcrypt_turns()).acquire_owned()).await {
            Ok(Ok(turn)) => turn,
            _ => return Err(Refusal::Busy),
        };
        let ok = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !(ok && known) {
            return Err(Refusal::Wrong);
        }
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= REMEMBERED {
                v.clear();
            }
            v.insert(digest);
        }
        Ok(())
    }

    /// The users, by name (for `lb check --diff`).
    fn user_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// bcrypt checks run at most this many at once: one per core.
fn bcrypt_turns() -> &'static Arc<tokio::sync::Semaphore> {
    static TURNS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| {
        Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    })
}

/// `Basic base64(user:password)` -> (user, password).
fn decode(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes.
        f.debug_struct("BasicAuth")
            .field("path", &self.path)
            .field("realm", &self.realm)
            .field("forward", &self.forward)
            .field("users", &self.user_names())
            .finish()
    }
}

impl PartialEq for BasicAuth {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.digest == other.digest
            && self.realm == other.realm
            && self.forward == other.forward
            && self.users == other.users
    }
}

impl Eq for BasicAuth {}

impl fmt::Display for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "basic auth {} ({} users, file {short}", self.path, self.users.len())?;
        if self.forward {
            f.write_str(", forwarded")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn header(user_password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password));
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn right_password_in_wrong_ones_out() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let f = file(&format!("# admins\nalice:{hash}\n\n"));
        let auth = Arc::new(BasicAuth::load(f.path().to_str().unwrap(), "admin", false).unwrap());
        assert_eq!(auth.check(&header("alice:s3cret")).await, Ok(()));
        assert_eq!(auth.check(&header("alice:s3cret")).await, Ok(()), "remembered");
        assert_eq!(auth.check(&header("alice:wrong")).await, Err(Refusal::Wrong));
        assert_eq!(auth.check(&header("bob:s3cret")).await, Err(Refusal::Wrong));
        assert_eq!(auth.check(&HeaderMap::new()).await, Err(Refusal::Missing));
        let mut bearer = HeaderMap::new();
        bearer.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(auth.check(&bearer).await, Err(Refusal::Missing));
        let mut garbage = HeaderMap::new();
        garbage.insert(http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(auth.check(&garbage).await, Err(Refusal::Missing));
        assert_eq!(auth.challenge(), "Basic realm=\"admin\", charset=\"UTF-8\"");
        assert!(!format!("{auth:?}").contains("$2"), "no hash in debug output");
    }

    #[test]
    fn files_without_bcrypt_hashes_are_refused() {
        let f = file("alice:$apr1$abc$def\n");
        assert!(BasicAuth::load(f.path().to_str().unwrap(), "r", false)
            .unwrap_err()
            .contains("line 1: user \"alice\" has no bcrypt hash"));
        let f = file("no colon here\n");
        assert!(BasicAuth::load(f.path().to_str().unwrap(), "r", false)
            .unwrap_err()
            .contains("expected \"user:hash\""));
        assert!(BasicAuth::load("/nonexistent/htpasswd", "r", false).unwrap_err().contains("cannot read"));
    }
}
