//! Per-agent credentials (`agent_…`), each bound to what it may speak for: an
//! instance (a local agent) or a pool agent id. A credential is
//! HMAC-SHA256(secret, binding) with the secret in the store's meta, so the
//! scheduler can always derive what to send an agent (also after a restart)
//! while the store keeps only each credential's sha256; revoking deletes it.
//! A cloud instance's agent starts with a one-time bootstrap token (`boot_…`,
//! in its boot script) and trades it for the instance's credential.

use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::hash;
use crate::records::{AgentBinding, BootstrapRecord, PoolCredentialRecord, RECORD_VERSION};
use crate::store::{Store, StoreError};

pub const CREDENTIAL_PREFIX: &str = "agent_";
pub const BOOTSTRAP_PREFIX: &str = "boot_";

/// Why a bootstrap token was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapRefused {
    #[error("the bootstrap token is unknown or was used already: it is good for one registration")]
    Unknown,
    #[error("the bootstrap token is for instance {0}, not `{1}`")]
    OtherInstance(String, String),
    #[error("the bootstrap token expired {0} s ago")]
    Expired(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}
const SECRET_KEY: &str = "credential_secret";

/// HMAC-SHA256 (RFC 2104) with a 32-byte key.
fn hmac(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[derive(Clone)]
pub struct Credentials {
    store: Store,
    secret: Arc<[u8; 32]>,
}

impl Credentials {
    /// Loads the secret credentials are derived with, creating it on first start.
    pub async fn open(store: Store) -> Result<Self, StoreError> {
        let stored = store.meta(SECRET_KEY)?;
        let secret = match stored.as_deref().map(hex::decode) {
            Some(Ok(bytes)) => <[u8; 32]>::try_from(bytes)
                .map_err(|_| StoreError::Corrupt("the credential secret".into()))?,
            Some(Err(e)) => return Err(StoreError::Corrupt(format!("the credential secret: {e}"))),
            None => {
                let mut secret = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut secret);
                store.put_meta(SECRET_KEY, &hex::encode(secret)).await?;
                secret
            }
        };
        Ok(Credentials {
            store,
            secret: Arc::new(secret),
        })
    }

    fn derive(&self, binding: &str) -> String {
        let mac = hmac(&self.secret, binding.as_bytes());
        format!("{CREDENTIAL_PREFIX}{}", hex::encode(&mac[..24]))
    }

    /// The credential of the agent launched for `instance_id`.
    pub fn instance(&self, instance_id: &str) -> String {
        self.derive(&format!("instance:{instance_id}"))
    }

    /// Makes the instance's credential valid (again: a restarted agent gets
    /// the same one) and returns it.
    pub async fn issue_instance(&self, instance_id: &str) -> Result<String, StoreError> {
        let credential = self.instance(instance_id);
        let record = crate::records::CredentialRecord::instance(instance_id);
        self.store
            .put_credential(&hash(&credential), &record)
            .await?;
        Ok(credential)
    }

    /// The instance has ended: its credential is refused from now on.
    pub async fn revoke_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        self.store
            .revoke_credential(&hash(&self.instance(instance_id)))
            .await
    }

    /// A new one-time bootstrap token for the agent of `instance_id`, good
    /// for one registration within `ttl` (one issued before is revoked).
    pub async fn issue_bootstrap(
        &self,
        instance_id: &str,
        ttl: std::time::Duration,
    ) -> Result<String, StoreError> {
        let token = super::new_token(BOOTSTRAP_PREFIX);
        let record = BootstrapRecord {
            v: RECORD_VERSION,
            instance_id: instance_id.to_string(),
            expires_ms: crate::clock::now_ms() + ttl.as_millis() as u64,
        };
        self.store.put_bootstrap(&hash(&token), &record).await?;
        Ok(token)
    }

    /// Whether `token` would let the agent of `instance_id` register now.
    pub fn check_bootstrap(&self, token: &str, instance_id: &str) -> Result<(), BootstrapRefused> {
        let record = self
            .store
            .bootstrap(&hash(token))?
            .ok_or(BootstrapRefused::Unknown)?;
        valid_for(&record, instance_id)
    }

    /// Uses up `token` (once, however many present it) and returns the
    /// instance's credential.
    pub async fn redeem_bootstrap(
        &self,
        token: &str,
        instance_id: &str,
    ) -> Result<String, BootstrapRefused> {
        let record = self
            .store
            .take_bootstrap(&hash(token))
            .await?
            .ok_or(BootstrapRefused::Unknown)?;
        valid_for(&record, instance_id)?;
        Ok(self.issue_instance(instance_id).await?)
    }

    /// The instance has ended: its credential and any unused bootstrap token
    /// are refused from now on.
    pub async fn revoke_all_of(&self, instance_id: &str) -> Result<(), StoreError> {
        self.store.revoke_bootstrap_of(instance_id).await?;
        self.revoke_instance(instance_id).await
    }

    /// A new credential for the pool agent; the one it had is revoked.
    pub async fn issue_pool(&self, agent_id: &str) -> Result<String, StoreError> {
        let epoch = self
            .store
            .pool_credential(agent_id)?
            .map_or(0, |r| r.epoch + 1);
        let credential = self.derive(&format!("pool:{epoch}:{agent_id}"));
        let record = PoolCredentialRecord {
            v: RECORD_VERSION,
            epoch,
            hash: hash(&credential),
        };
        self.store.rotate_pool_credential(agent_id, &record).await?;
        Ok(credential)
    }

    /// The pool agent's current credential; None if it never joined.
    pub fn pool(&self, agent_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .pool_credential(agent_id)?
            .map(|r| self.derive(&format!("pool:{}:{agent_id}", r.epoch))))
    }

    /// What a presented credential speaks for; None: unknown or revoked.
    pub fn speaks_for(&self, credential: &str) -> Result<Option<AgentBinding>, StoreError> {
        if !credential.starts_with(CREDENTIAL_PREFIX) {
            return Ok(None);
        }
        Ok(self
            .store
            .credential(&hash(credential))?
            .map(|r| r.speaks_for))
    }
}

fn valid_for(record: &BootstrapRecord, instance_id: &str) -> Result<(), BootstrapRefused> {
    if record.instance_id != instance_id {
        return Err(BootstrapRefused::OtherInstance(
            record.instance_id.clone(),
            instance_id.to_string(),
        ));
    }
    let now = crate::clock::now_ms();
    if now >= record.expires_ms {
        return Err(BootstrapRefused::Expired((now - record.expires_ms) / 1000));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 uses a 4-byte key; zero-padding it to 32
        // bytes gives the same HMAC (keys are zero-padded to the block).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn credentials_are_derived_stored_hashed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let creds = Credentials::open(store.clone()).await.unwrap();
        let inst = creds.issue_instance("inst-1").await.unwrap();
        assert!(inst.starts_with("agent_") && inst.len() == 6 + 48, "{inst}");
        assert_eq!(creds.issue_instance("inst-1").await.unwrap(), inst);
        assert!(store.credential(&inst).unwrap().is_none(), "stored hashed");
        assert_eq!(
            creds.speaks_for(&inst).unwrap(),
            Some(AgentBinding::Instance("inst-1".into()))
        );
        creds.revoke_instance("inst-1").await.unwrap();
        assert_eq!(creds.speaks_for(&inst).unwrap(), None);

        assert_eq!(creds.pool("a1").unwrap(), None);
        let first = creds.issue_pool("a1").await.unwrap();
        assert_eq!(creds.pool("a1").unwrap().as_deref(), Some(first.as_str()));
        let second = creds.issue_pool("a1").await.unwrap();
        assert_ne!(first, second);
        assert_eq!(creds.speaks_for(&first).unwrap(), None, "revoked");
        assert_eq!(
            creds.speaks_for(&second).unwrap(),
            Some(AgentBinding::Pool("a1".into()))
        );
        // The same secret after a restart: the same credentials.
        drop(creds);
        let again = Credentials::open(store).await.unwrap();
        assert_eq!(again.pool("a1").unwrap(), Some(second));
        assert_eq!(again.instance("inst-1"), inst);
    }

    #[tokio::test]
    async fn a_bootstrap_token_is_good_once_for_its_instance_in_time() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let creds = Credentials::open(store.clone()).await.unwrap();
        let token = creds
            .issue_bootstrap("i1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(token.starts_with(BOOTSTRAP_PREFIX));
        assert!(store.bootstrap(&token).unwrap().is_none(), "stored hashed");
        assert!(matches!(
            creds.redeem_bootstrap(&token, "i2").await,
            Err(BootstrapRefused::OtherInstance(..))
        ));
        // Presented for another instance, it is used up all the same.
        assert!(matches!(
            creds.redeem_bootstrap(&token, "i1").await,
            Err(BootstrapRefused::Unknown)
        ));
        let token = creds
            .issue_bootstrap("i1", Duration::from_secs(60))
            .await
            .unwrap();
        creds.check_bootstrap(&token, "i1").unwrap();
        let credential = creds.redeem_bootstrap(&token, "i1").await.unwrap();
        assert_eq!(credential, creds.instance("i1"));
        assert!(matches!(
            creds.redeem_bootstrap(&token, "i1").await,
            Err(BootstrapRefused::Unknown)
        ));
        let late = creds.issue_bootstrap("i1", Duration::ZERO).await.unwrap();
        assert!(matches!(
            creds.check_bootstrap(&late, "i1"),
            Err(BootstrapRefused::Expired(_))
        ));
        let revoked = creds
            .issue_bootstrap("i1", Duration::from_secs(60))
            .await
            .unwrap();
        creds.revoke_all_of("i1").await.unwrap();
        assert!(matches!(
            creds.check_bootstrap(&revoked, "i1"),
            Err(BootstrapRefused::Unknown)
        ));
        assert_eq!(creds.speaks_for(&credential).unwrap(), None);
    }
}
