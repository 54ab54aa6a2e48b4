//! Access tokens (`secret_…`, stored only as sha256 hashes), the admin account,
//! the agents' join token and their own [`credentials`], and Predict's
//! client-id check.

mod credentials;

use aibro_proto::transport::constant_time_eq;
use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::records::AgentBinding;
use crate::store::{Store, StoreError};

pub use credentials::{BootstrapRefused, Credentials};

pub const ADMIN_USER: &str = "admin";
pub const PUBLIC_CLIENT: &str = "public";
const TOKEN_PREFIX: &str = "secret_";
const JOIN_TOKEN_KEY: &str = "join_token";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing access token: send metadata `authorization: Bearer secret_…`")]
    Missing,
    #[error("invalid access token")]
    Invalid,
    #[error("only the admin may do this")]
    NotAdmin,
    #[error(
        "missing agent credential: agents send `authorization: Bearer agent_…` (the join \
             token or a bootstrap token only on an agent's first Register)"
    )]
    NoCredential,
    #[error("invalid or revoked agent credential")]
    BadCredential,
    #[error(transparent)]
    Bootstrap(#[from] BootstrapRefused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

impl User {
    pub fn is_admin(&self) -> bool {
        self.0 == ADMIN_USER
    }
}

pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", random_hex::<24>())
}

/// `N` random bytes, hex: tokens, console session ids and CSRF tokens.
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bearer token in the `authorization` header (gRPC metadata), if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Who calls the agent gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCaller {
    /// Holds the join token: may only join the pool (and get a credential).
    Joining,
    /// Holds a bootstrap token (not checked yet): may only trade it for its
    /// instance's credential.
    Bootstrapping(String),
    /// Holds a credential bound to this.
    Bound(AgentBinding),
}

#[derive(Clone)]
pub struct Auth {
    store: Store,
    join_token: String,
    credentials: Credentials,
}

impl Auth {
    /// Loads the join token and the credential secret, creating them on first start.
    pub async fn open(store: Store) -> Result<Self, AuthError> {
        let join_token = match store.meta(JOIN_TOKEN_KEY)? {
            Some(t) => t,
            None => {
                let t = new_token("join_");
                store.put_meta(JOIN_TOKEN_KEY, &t).await?;
                t
            }
        };
        let credentials = Credentials::open(store.clone()).await?;
        Ok(Auth {
            store,
            join_token,
            credentials,
        })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// Creates a token for `user`; only its hash is stored.
    pub async fn create_token(&self, user: &str) -> Result<String, AuthError> {
        let token = new_token(TOKEN_PREFIX);
        self.store.put_token(&hash(&token), user).await?;
        Ok(token)
    }

    /// The user whose token is in `headers` (gRPC metadata or HTTP headers).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<User, AuthError> {
        self.user_of(bearer(headers).ok_or(AuthError::Missing)?)
    }

    /// The user whose access token is `token` (the console's sign-in form).
    pub fn user_of(&self, token: &str) -> Result<User, AuthError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::Invalid);
        }
        self.store
            .token_user(&hash(token))?
            .map(User)
            .ok_or(AuthError::Invalid)
    }

    /// The agent calling: the join token, or a credential that is not revoked.
    pub fn agent_caller(&self, metadata: &MetadataMap) -> Result<AgentCaller, AuthError> {
        let token = bearer(metadata.as_ref()).ok_or(AuthError::NoCredential)?;
        if constant_time_eq(token, &self.join_token) {
            return Ok(AgentCaller::Joining);
        }
        if token.starts_with(credentials::BOOTSTRAP_PREFIX) {
            return Ok(AgentCaller::Bootstrapping(token.to_string()));
        }
        self.credentials
            .speaks_for(token)?
            .map(AgentCaller::Bound)
            .ok_or(AuthError::BadCredential)
    }
}

/// May `client_id` call a job whose client list is `allowed` (empty: public)?
pub fn client_allowed(allowed: &[String], client_id: &str) -> bool {
    let client_id = if client_id.is_empty() {
        PUBLIC_CLIENT
    } else {
        client_id
    };
    if allowed.is_empty() {
        client_id == PUBLIC_CLIENT
    } else {
        allowed.iter().any(|c| c == client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(client_allowed(&[], "public"));
        assert!(client_allowed(&[], ""));
        assert!(!client_allowed(&[], "alice"));
        let list = vec!["a".to_string(), "b".to_string()];
        assert!(client_allowed(&list, "b"));
        assert!(!client_allowed(&list, "public"));
        assert!(!client_allowed(&list, "c"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }

    #[tokio::test]
    async fn agents_call_with_the_join_token_or_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(Store::open(dir.path()).unwrap()).await.unwrap();
        let with = |token: &str| {
            let mut md = MetadataMap::new();
            md.insert("authorization", format!("Bearer {token}").parse().unwrap());
            md
        };
        let caller = |md: &MetadataMap| auth.agent_caller(md);
        assert_eq!(
            caller(&with(auth.join_token())).unwrap(),
            AgentCaller::Joining
        );
        let cred = auth.credentials().issue_instance("i1").await.unwrap();
        assert_eq!(
            caller(&with(&cred)).unwrap(),
            AgentCaller::Bound(AgentBinding::Instance("i1".into()))
        );
        let user = auth.create_token("alice").await.unwrap();
        assert!(matches!(
            caller(&with(&user)),
            Err(AuthError::BadCredential)
        ));
        assert!(matches!(
            caller(&MetadataMap::new()),
            Err(AuthError::NoCredential)
        ));
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let auth = Auth::open(store.clone()).await.unwrap();
        let token = auth.create_token("alice").await.unwrap();
        assert!(token.starts_with("secret_"));
        assert!(store.token_user(&token).unwrap().is_none());
        let mut md = MetadataMap::new();
        md.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(
            auth.authenticate(md.as_ref()).unwrap(),
            User("alice".into())
        );
        md.insert("authorization", "Bearer secret_nope".parse().unwrap());
        assert!(matches!(
            auth.authenticate(md.as_ref()),
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        ));
    }
}
