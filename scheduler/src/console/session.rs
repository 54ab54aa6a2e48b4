//! Console sessions, kept in memory: a random id (the cookie's value, never
//! the access token) maps to the signed-in user and the session's CSRF
//! token. A session ends at sign-out or after [`IDLE`] unused; at most
//! [`MAX_SESSIONS`] live at once (the least recently used goes first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aibro_proto::transport::constant_time_eq;

use crate::auth::{random_hex, User};

/// A session unused this long is over.
pub(super) const IDLE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions held at once.
const MAX_SESSIONS: usize = 10_000;
/// The cookie that carries the session id.
pub(super) const COOKIE: &str = "aibro_session";

/// A signed-in session.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) user: User,
    /// Every state-changing form carries it (hidden input `csrf`).
    pub(super) csrf: String,
}

struct Held {
    session: Session,
    last_used: Instant,
}

#[derive(Default)]
pub(super) struct Sessions {
    held: Mutex<HashMap<String, Held>>,
}

impl Sessions {
    /// A new session for `user`, making room when full.
    pub(super) fn start(&self, user: User) -> Session {
        let session = Session {
            id: random_hex::<32>(),
            user,
            csrf: random_hex::<32>(),
        };
        let mut held = self.held.lock().expect("sessions lock");
        let now = Instant::now();
        if held.len() >= MAX_SESSIONS {
            held.retain(|_, h| now.duration_since(h.last_used) < IDLE);
        }
        if held.len() >= MAX_SESSIONS {
            let oldest = held
                .iter()
                .min_by_key(|(_, h)| h.last_used)
                .map(|(id, _)| id.clone());
            oldest.map(|id| held.remove(&id));
        }
        held.insert(
            session.id.clone(),
            Held {
                session: session.clone(),
                last_used: now,
            },
        );
        session
    }

    /// The live session `id`, marked as used now.
    pub(super) fn find(&self, id: &str) -> Option<Session> {
        let mut held = self.held.lock().expect("sessions lock");
        let now = Instant::now();
        let h = held.get_mut(id)?;
        if now.duration_since(h.last_used) >= IDLE {
            held.remove(id);
            return None;
        }
        h.last_used = now;
        Some(h.session.clone())
    }

    /// Is session `id` still on (without counting this as a use)?
    pub(super) fn is_live(&self, id: &str) -> bool {
        let held = self.held.lock().expect("sessions lock");
        held.get(id).is_some_and(|h| h.last_used.elapsed() < IDLE)
    }

    pub(super) fn end(&self, id: &str) {
        self.held.lock().expect("sessions lock").remove(id);
    }
}

impl Session {
    /// Does a form's `csrf` field match this session's?
    pub(super) fn csrf_ok(&self, sent: Option<&str>) -> bool {
        sent.is_some_and(|sent| constant_time_eq(sent, &self.csrf))
    }
}

/// The `Set-Cookie` value that holds `session_id` (`Secure` over TLS).
pub(super) fn cookie(session_id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={session_id}; HttpOnly; SameSite=Strict; Path=/console{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub(super) fn cleared_cookie(secure: bool) -> String {
    format!("{}; Max-Age=0", cookie("", secure))
}

/// The session id in a `Cookie` header's value, if any.
pub(super) fn session_id(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_and_their_ids_are_random() {
        let sessions = Sessions::default();
        let a = sessions.start(User("alice".into()));
        let b = sessions.start(User("alice".into()));
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 64);
        assert_eq!(sessions.find(&a.id).unwrap().user, User("alice".into()));
        sessions.end(&a.id);
        assert!(sessions.find(&a.id).is_none());
        assert!(sessions.find(&b.id).is_some());
        assert!(b.csrf_ok(Some(&b.csrf)));
        assert!(!b.csrf_ok(Some(&a.csrf)));
        assert!(!b.csrf_ok(None));
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        assert_eq!(session_id("a=1; aibro_session=xyz; b=2"), Some("xyz"));
        assert_eq!(session_id("aibro_sessionx=1"), None);
        assert!(cookie("x", true).ends_with("; Secure"));
        assert!(cookie("x", false).contains("HttpOnly; SameSite=Strict; Path=/console"));
    }
}
