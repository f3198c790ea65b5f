//! Token signing keys at rest and in memory: the key-encryption key and the key ring.
//!
//! Why it looks like this:
//!
//! - The ring lives in the event store (`signing-keys`, see [`crate::domain::signing_keys`]) so
//!   every replica signs with the same keys and rotation is one append that all of them see. But
//!   the event store is copied everywhere (backups, the NATS relay, analysts' read models), so a
//!   private key never enters it in the clear: it is sealed with AES-256-GCM under a
//!   [`KeyEncryptionKey`] (KEK) that lives only in a 0600 file on each replica (or in the
//!   environment). Whoever reads the stream without the KEK learns the public keys, nothing more.
//! - The key id is the AEAD's associated data, so a sealed key moved onto another key id (by
//!   someone able to append to the stream) fails to open instead of signing under a name it does
//!   not own; the unsealed key must also match the published public key.
//! - Sealed keys record the id of the KEK that sealed them. A replica configured with another KEK
//!   cannot sign with them: [`KeyRing::open`] refuses to start when the current signing key is
//!   one of those (naming both KEK ids), and keys it merely cannot use yet are logged.
//! - Tokens are signed on the request path, so [`KeyRing`] keeps the folded ring and the unsealed
//!   keys in memory; [`KeyRing::reload`] re-reads the stream, because other replicas rotate.
//! - Instants given to the ring are cut to whole seconds: tokens carry `iat` in whole seconds and
//!   verifiers refuse a token issued before its key's `not_before`, so a key activated at
//!   12:00:00.5 would otherwise refuse to sign for half a second.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use rand_core::{OsRng, RngCore};
use repit_event_store::aggregate::ExecuteOptions;
use repit_event_store::{EventStore, Repository, RepositoryError, StreamName};
use repit_platform::auth::{KeySet, SigningKey, VerifyingKey};
use repit_platform::time::timestamp;
use repit_proto::repit::user::v1 as pb;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::domain::signing_keys::{
    NewKey, RingKey, SigningKeyCodec, SigningKeyCommand, SigningKeyError, SigningKeyEvent,
    SigningKeyRing,
};

/// The one stream of the signing-key ring.
pub const STREAM: &str = "signing-keys";

/// AES-GCM's standard 96-bit nonce, prepended to every sealed key.
const NONCE_LEN: usize = 12;
/// The GCM authentication tag appended by the cipher.
const TAG_LEN: usize = 16;
/// The longest key-encryption key id; ids are stored in every sealed key's event.
const MAX_KEK_ID_LEN: usize = 64;

/// Why a key could not be loaded, sealed, unsealed, stored or rotated.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the key-encryption key file {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Malformed(String),
    #[error("the operating system's random source failed")]
    Random,
    #[error("cannot seal signing key {kid}")]
    Seal { kid: String },
    #[error("cannot unseal signing key {kid} with key-encryption key {kek_id}: {reason}")]
    Unseal {
        kid: String,
        kek_id: String,
        reason: String,
    },
    #[error("signing key ring: {0}")]
    Store(String),
    #[error("a key generated earlier is not active yet")]
    RotationInProgress,
    #[error("the signing key ring has no active key")]
    NoSigningKey,
}

/// The AES-256 key that seals signing keys at rest, with the id recorded next to what it sealed.
/// The key is zeroed when dropped and never printed.
#[derive(Clone)]
pub struct KeyEncryptionKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyEncryptionKey {
    /// A fresh key from the operating system's random source; its id is `kek-` followed by the
    /// first 8 hex digits of the key's SHA-256 (so two replicas given the same key agree on it).
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(key.as_mut())
            .map_err(|_| KeyError::Random)?;
        let digest = Sha256::digest(key.as_ref());
        Ok(Self {
            id: format!("kek-{}", hex(&digest[..4])),
            key,
        })
    }

    /// A key given as standard base64 of its 32 bytes, under `id` (1 to 64 characters of A-Z,
    /// a-z, 0-9, '-', '_' and '.').
    pub fn from_base64(id: impl Into<String>, text: &str) -> Result<Self, KeyError> {
        let id = id.into();
        let id_ok = !id.is_empty()
            && id.len() <= MAX_KEK_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(KeyError::Malformed(
                "a key-encryption key id is 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'"
                    .to_owned(),
            ));
        }
        // Never echo the text: it is the secret.
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
            KeyError::Malformed(format!(
                "key-encryption key {id} is not standard base64 of 32 bytes"
            ))
        })?);
        if bytes.len() != 32 {
            return Err(KeyError::Malformed(format!(
                "key-encryption key {id} is {} bytes long, not 32",
                bytes.len()
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(Self { id, key })
    }

    /// A key written as `<id>:<base64 key>` (the form of the key file, and of an environment
    /// variable holding one).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (id, key) = text.trim().split_once(':').ok_or_else(|| {
            KeyError::Malformed("a key-encryption key is written <id>:<base64 key>".to_owned())
        })?;
        Self::from_base64(id, key)
    }

    /// The key in the file at `path` (`<id>:<base64 key>`). When the file is missing, a fresh
    /// key is written there first, readable by its owner only (0600), its directory created.
    /// Two processes racing to create it end up with the same key: the file appears atomically
    /// and the loser reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let kek = Self::generate()?;
        let line = Zeroizing::new(format!(
            "{}:{}\n",
            kek.id,
            STANDARD.encode(kek.key.as_ref())
        ));
        match write_new_private_file(path, line.as_bytes()) {
            Ok(()) => {
                tracing::info!(path = %path.display(), kek_id = %kek.id, "created a key-encryption key");
                Ok(kek)
            }
            Err(source) if source.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(source) => Err(KeyError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn load(path: &Path) -> Result<Self, KeyError> {
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_error)?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .map_err(io_error)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "the key-encryption key file is readable by others; chmod 600 it"
                );
            }
        }
        Self::parse(&text).map_err(|error| match error {
            KeyError::Malformed(message) => {
                KeyError::Malformed(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// The id stored with everything this key seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `plaintext` sealed with AES-256-GCM under a fresh random nonce (prepended), bound to `kid`
    /// as associated data.
    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| KeyError::Random)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Seal {
                kid: kid.to_owned(),
            })?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// What [`KeyEncryptionKey::seal`] sealed for `kid`. Another key, another kid, or any
    /// change to `sealed` is refused with [`KeyError::Unseal`].
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let refused = || KeyError::Unseal {
            kid: kid.to_owned(),
            kek_id: self.id.clone(),
            reason: "wrong key-encryption key or key id, or the sealed key was altered".to_owned(),
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: kid.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| refused())
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_ref()))
    }
}

/// Writes `contents` to a new file at `path`, mode 0600, all or nothing: a temporary file in
/// the same directory is written and synced, then hard-linked into place (which fails with
/// `AlreadyExists` rather than replace a file another process made meanwhile).
fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut suffix = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut suffix)
        .map_err(io::Error::other)?;
    let temporary = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex(&suffix)));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        #[cfg(unix)]
        {
            // The umask only clears bits, but may clear the owner's too.
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::hard_link(&temporary, path)
    })();
    // Best effort: the temporary name is random, so a leftover harms nothing.
    let _ = std::fs::remove_file(&temporary);
    written?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn store_error(error: impl fmt::Display) -> KeyError {
    KeyError::Store(error.to_string())
}

/// What [`KeyRing::rotate_with`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotated {
    /// The new key (`signing` once it is active).
    pub new_key: pb::PublicKey,
    /// The key it replaces, with the instant it stops verifying; `None` after `revoke_previous`.
    pub previous_key: Option<pb::PublicKey>,
    /// The ring's stream revision after the rotation.
    pub revision: u64,
}

/// The signing-key ring as this replica sees it: the folded `signing-keys` stream, the unsealed
/// keys it may sign with, and what verifiers should trust. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    /// Holds the store (`Arc<dyn EventStore>`) the ring is read from and appended to.
    repository: Repository<SigningKeyRing, SigningKeyCodec>,
    stream: StreamName,
    kek: KeyEncryptionKey,
    snapshot: RwLock<Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    ring: SigningKeyRing,
    revision: Option<u64>,
    /// Unsealed keys by kid; only kids still in `ring`.
    unsealed: HashMap<String, Arc<SigningKey>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.read();
        let kids: Vec<&str> = snapshot.ring.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("KeyRing")
            .field("stream", &self.inner.stream)
            .field("kek", &self.inner.kek)
            .field("revision", &snapshot.revision)
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// The ring stored in `store`, bootstrapped with a fresh Ed25519 key when empty (if another
    /// replica bootstraps at the same moment, its key is used). Unseals the key that signs at
    /// `now` and any scheduled after it; refuses to start if the signing key cannot be unsealed
    /// with `kek` (sealed under another KEK id, or not by this one).
    pub async fn open(
        store: Arc<dyn EventStore>,
        kek: KeyEncryptionKey,
        now: DateTime<Utc>,
    ) -> Result<Self, KeyError> {
        let now = now.trunc_subsecs(0);
        let ring = Self {
            inner: Arc::new(Inner {
                repository: Repository::new(store, SigningKeyCodec),
                stream: StreamName::parse(STREAM).map_err(store_error)?,
                kek,
                snapshot: RwLock::default(),
            }),
        };
        let mut loaded = ring.inner.repository.load(&ring.inner.stream).await;
        if loaded.as_ref().is_ok_and(|l| l.state.keys.is_empty()) {
            ring.bootstrap(now).await?;
            loaded = ring.inner.repository.load(&ring.inner.stream).await;
        }
        let loaded = loaded.map_err(store_error)?;
        ring.install(loaded.state, loaded.revision);

        // What may sign from now on: the current key (or, should this clock lag the one that
        // bootstrapped, the first) and those scheduled after it. Retiring keys never sign again.
        let candidates: Vec<RingKey> = {
            let snapshot = ring.read();
            let keys = &snapshot.ring.keys;
            let from = snapshot
                .ring
                .signing_key(now)
                .and_then(|current| keys.iter().position(|k| k.kid == current.kid))
                .unwrap_or(0);
            keys.iter().skip(from).cloned().collect()
        };
        let (signing, scheduled) = candidates.split_first().ok_or(KeyError::NoSigningKey)?;
        ring.unsealed(signing)?;
        for key in scheduled {
            if let Err(error) = ring.unsealed(key) {
                tracing::warn!(kid = %key.kid, %error, "a scheduled signing key cannot be unsealed; it will not sign on this replica");
            }
        }
        tracing::info!(
            kek_id = %ring.inner.kek.id,
            kid = %signing.kid,
            keys = ring.read().ring.keys.len(),
            "signing key ring loaded"
        );
        Ok(ring)
    }

    async fn bootstrap(&self, now: DateTime<Utc>) -> Result<(), KeyError> {
        let key = self.new_key(now)?;
        let kid = key.kid.clone();
        let command = SigningKeyCommand::Bootstrap { key, now };
        match self
            .inner
            .repository
            .execute(&self.inner.stream, &command)
            .await
        {
            Ok(_) => {
                tracing::info!(%kid, "bootstrapped the signing key ring");
                Ok(())
            }
            // Another replica got there first: its key is as good as ours.
            Err(RepositoryError::Domain(SigningKeyError::AlreadyBootstrapped)) => Ok(()),
            Err(error) => Err(store_error(error)),
        }
    }

    /// Re-reads the stream (other replicas rotate) and unseals keys that appeared since, logging
    /// the ones this replica cannot use.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let loaded = self
            .inner
            .repository
            .load(&self.inner.stream)
            .await
            .map_err(store_error)?;
        for key in self.install(loaded.state, loaded.revision) {
            self.warm(&key);
        }
        Ok(())
    }

    /// The id of the key-encryption key this ring seals with.
    pub fn kek_id(&self) -> &str {
        &self.inner.kek.id
    }

    /// The ring's stream revision as last read; `None` before the first key.
    pub fn revision(&self) -> Option<u64> {
        self.read().revision
    }

    /// The key that signs at `now` (the newest active one), unsealed once and then shared.
    pub async fn signing_key(&self, now: DateTime<Utc>) -> Result<Arc<SigningKey>, KeyError> {
        let key = {
            let snapshot = self.read();
            let key = snapshot
                .ring
                .signing_key(now)
                .ok_or(KeyError::NoSigningKey)?;
            if let Some(unsealed) = snapshot.unsealed.get(&key.kid) {
                return Ok(Arc::clone(unsealed));
            }
            key.clone()
        };
        self.unsealed(&key)
    }

    /// What verifiers trust at `now`: every key a token may verify with (active, scheduled,
    /// retired within its grace), valid from its activation until its expiry.
    pub async fn key_set(&self, now: DateTime<Utc>) -> Result<KeySet, KeyError> {
        let snapshot = self.read();
        let keys = snapshot
            .ring
            .verifying_keys(now)
            .map(verifying_key)
            .collect::<Result<Vec<_>, _>>()?;
        KeySet::new(keys).map_err(|error| KeyError::Malformed(format!("signing key ring: {error}")))
    }

    /// The keys `GetPublicKeys` publishes at `now` (those of [`KeyRing::key_set`]); `signing`
    /// marks the one that signs now. A key that does not parse is left out with a warning.
    pub async fn public_keys(&self, now: DateTime<Utc>) -> Vec<pb::PublicKey> {
        let snapshot = self.read();
        let signing = snapshot.ring.signing_key(now).map(|k| k.kid.as_str());
        snapshot
            .ring
            .verifying_keys(now)
            .filter_map(|key| {
                public_key(key, signing)
                    .inspect_err(|error| tracing::warn!(kid = %key.kid, %error, "not publishing a signing key"))
                    .ok()
            })
            .collect()
    }

    /// Adds a fresh key that signs after `activation_delay`; the previous key keeps verifying for
    /// `previous_grace` after that, or is dropped at once with `revoke_previous` (the new key then
    /// signs at once). Refused with [`KeyError::RotationInProgress`] while an earlier new key is
    /// still waiting to activate (unless revoking).
    pub async fn rotate(
        &self,
        activation_delay: TimeDelta,
        previous_grace: TimeDelta,
        revoke_previous: bool,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<pb::PublicKey, KeyError> {
        self.rotate_with(
            activation_delay,
            previous_grace,
            revoke_previous,
            actor,
            now,
            &ExecuteOptions::default(),
        )
        .await
        .map(|rotated| rotated.new_key)
    }

    /// [`KeyRing::rotate`] with event metadata and idempotency settings, answering with the
    /// previous key and the revision too (what `RotateSigningKeyResponse` carries).
    pub async fn rotate_with(
        &self,
        activation_delay: TimeDelta,
        previous_grace: TimeDelta,
        revoke_previous: bool,
        actor: &str,
        now: DateTime<Utc>,
        options: &ExecuteOptions,
    ) -> Result<Rotated, KeyError> {
        // A negative grace would give the previous key an expiry before its activation, which
        // no verifier accepts: the stream would hold a ring no replica can publish.
        if activation_delay < TimeDelta::zero() || previous_grace < TimeDelta::zero() {
            return Err(KeyError::Malformed(
                "the activation delay and the previous key's grace must not be negative".to_owned(),
            ));
        }
        let now = now.trunc_subsecs(0);
        let key = self.new_key(now)?;
        let kid = key.kid.clone();
        let command = SigningKeyCommand::Rotate {
            key,
            activation_delay,
            previous_grace,
            revoke_previous,
            actor: actor.to_owned(),
            now,
        };
        let executed = match self
            .inner
            .repository
            .execute_with(&self.inner.stream, &command, options)
            .await
        {
            Ok(executed) => executed,
            Err(RepositoryError::Domain(SigningKeyError::RotationInProgress)) => {
                return Err(KeyError::RotationInProgress);
            }
            Err(error) => return Err(store_error(error)),
        };
        let previous_kid = executed.events.iter().find_map(|event| match event {
            SigningKeyEvent::Rotated(rotated) if rotated.kid == kid => {
                Some(rotated.previous_kid.as_str())
            }
            _ => None,
        });
        let ring = &executed.state;
        let signing = ring.signing_key(now).map(|k| k.kid.as_str());
        let new = ring
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| KeyError::Store(format!("rotated key {kid} is not in the ring")))?;
        let new_key = public_key(new, signing)?;
        let previous_key = previous_kid
            .filter(|previous| !previous.is_empty())
            .and_then(|previous| ring.keys.iter().find(|k| k.kid == previous))
            .map(|previous| public_key(previous, signing))
            .transpose()?;
        let rotated = Rotated {
            new_key,
            previous_key,
            revision: executed.revision.unwrap_or_default(),
        };
        tracing::info!(
            %kid,
            previous = previous_kid.unwrap_or_default(),
            revoke_previous,
            actor,
            "rotated the signing key"
        );
        // The state the append produced is what a reload would read (or older): no second read.
        for key in self.install(executed.state, executed.revision) {
            self.warm(&key);
        }
        Ok(rotated)
    }

    /// A fresh Ed25519 key, sealed under the KEK, for the ring.
    fn new_key(&self, now: DateTime<Utc>) -> Result<NewKey, KeyError> {
        let mut random = [0u8; 8];
        OsRng
            .try_fill_bytes(&mut random)
            .map_err(|_| KeyError::Random)?;
        let kid = format!("k-{}", hex(&random));
        let malformed = |error| KeyError::Malformed(format!("new signing key {kid}: {error}"));
        let key = SigningKey::generate(kid.clone(), now).map_err(malformed)?;
        let der = key.to_pkcs8_der().map_err(malformed)?;
        let sealed_private_key = self.inner.kek.seal(&kid, &der)?;
        Ok(NewKey {
            public_key_spki_der: key.verifying().spki_der(),
            sealed_private_key,
            sealing_key_id: self.inner.kek.id.clone(),
            kid,
        })
    }

    /// Replaces the snapshot unless it is newer than `ring` (a slower read lost a race), drops
    /// unsealed keys that left the ring, and returns the keys that are new to this replica.
    fn install(&self, ring: SigningKeyRing, revision: Option<u64>) -> Vec<RingKey> {
        let mut snapshot = self.write();
        if revision < snapshot.revision {
            return Vec::new();
        }
        let fresh = ring
            .keys
            .iter()
            .filter(|key| !snapshot.ring.keys.iter().any(|old| old.kid == key.kid))
            .cloned()
            .collect();
        snapshot
            .unsealed
            .retain(|kid, _| ring.keys.iter().any(|key| &key.kid == kid));
        snapshot.ring = ring;
        snapshot.revision = revision;
        fresh
    }

    /// Unseals a key ahead of its use, so a replica that cannot use it says so early.
    fn warm(&self, key: &RingKey) {
        if let Err(error) = self.unsealed(key) {
            tracing::warn!(kid = %key.kid, %error, "a new signing key cannot be unsealed; it will not sign on this replica");
        }
    }

    /// `key` unsealed, from the cache or opened now (and then cached while it is in the ring).
    fn unsealed(&self, key: &RingKey) -> Result<Arc<SigningKey>, KeyError> {
        if let Some(unsealed) = self.read().unsealed.get(&key.kid) {
            return Ok(Arc::clone(unsealed));
        }
        let kek = &self.inner.kek;
        let refused = |reason: String| KeyError::Unseal {
            kid: key.kid.clone(),
            kek_id: kek.id.clone(),
            reason,
        };
        if key.sealing_key_id != kek.id {
            return Err(refused(format!(
                "it is sealed under key-encryption key {}",
                key.sealing_key_id
            )));
        }
        let der = kek.open(&key.kid, &key.sealed_private_key)?;
        let signing = SigningKey::from_pkcs8_der(key.kid.clone(), &der, key.activates_at)
            .map_err(|_| refused("it is not a pkcs#8 ed25519 private key".to_owned()))?;
        // A key that does not match what was published would sign tokens no one can verify.
        if signing.verifying().spki_der() != key.public_key_spki_der {
            return Err(refused(
                "it does not match the published public key".to_owned(),
            ));
        }
        let signing = Arc::new(signing);
        let mut snapshot = self.write();
        if snapshot.ring.keys.iter().any(|k| k.kid == key.kid) {
            let cached = snapshot
                .unsealed
                .entry(key.kid.clone())
                .or_insert_with(|| Arc::clone(&signing));
            return Ok(Arc::clone(cached));
        }
        Ok(signing)
    }

    fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Snapshot> {
        self.inner
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn verifying_key(key: &RingKey) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_spki_der(
        key.kid.clone(),
        &key.public_key_spki_der,
        key.activates_at,
        key.expires_at,
    )
    .map_err(|error| KeyError::Malformed(format!("signing key {}: {error}", key.kid)))
}

fn public_key(key: &RingKey, signing_kid: Option<&str>) -> Result<pb::PublicKey, KeyError> {
    let verifying = verifying_key(key)?;
    Ok(pb::PublicKey {
        kid: key.kid.clone(),
        algorithm: pb::SigningAlgorithm::Ed25519 as i32,
        spki_der: verifying.spki_der(),
        jwk_json: verifying.jwk_json(),
        not_before: Some(timestamp(key.activates_at)),
        expires_at: key.expires_at.map(timestamp),
        signing: signing_kid == Some(key.kid.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use repit_event_store::{EventCodec as _, ReadStreamOptions, SqliteEventStore};
    use repit_platform::auth::{Caller, Subject, TokenError, TokenIssuer, Verifier};
    use tempfile::TempDir;

    use super::*;

    const ISSUER: &str = "repit-user";
    const AUDIENCE: &str = "repit";

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + TimeDelta::minutes(minutes)
    }

    async fn store(dir: &TempDir) -> Arc<dyn EventStore> {
        Arc::new(
            SqliteEventStore::open(dir.path().join("events.db"))
                .await
                .expect("store"),
        )
    }

    fn kek() -> KeyEncryptionKey {
        KeyEncryptionKey::generate().expect("kek")
    }

    fn issue(key: &SigningKey, now: DateTime<Utc>) -> String {
        let issuer =
            TokenIssuer::new(ISSUER, AUDIENCE, Duration::from_secs(15 * 60)).expect("issuer");
        let subject = Subject {
            user_id: "u1".into(),
            session_id: "s1".into(),
            roles: vec![],
            children: vec![],
            amr: vec!["pwd".into()],
            auth_time: now,
            time_zone: String::new(),
        };
        issuer.issue(key, &subject, now).expect("issue").token
    }

    async fn verify(ring: &KeyRing, token: &str, now: DateTime<Utc>) -> Result<Caller, TokenError> {
        Verifier::new(ISSUER, AUDIENCE, ring.key_set(now).await.expect("key set"))
            .verify(token, now)
    }

    async fn kids(ring: &KeyRing, now: DateTime<Utc>) -> Vec<String> {
        let set = ring.key_set(now).await.expect("key set");
        set.iter().map(|k| k.kid().to_owned()).collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[test]
    fn a_sealed_key_opens_only_with_the_same_kek_and_kid_and_unaltered() {
        let kek = kek();
        let secret = b"a pkcs#8 document".as_slice();
        let sealed = kek.seal("k-1", secret).expect("seal");
        assert_eq!(kek.open("k-1", &sealed).expect("open").as_slice(), secret);
        assert_ne!(
            kek.seal("k-1", secret).expect("seal"),
            sealed,
            "fresh nonce"
        );
        assert!(!contains(&sealed, secret));

        assert!(matches!(
            kek.open("k-2", &sealed),
            Err(KeyError::Unseal { .. })
        ));
        assert!(matches!(
            other_kek_open(&sealed),
            Err(KeyError::Unseal { .. })
        ));
        for index in [0, NONCE_LEN, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[index] ^= 1;
            assert!(
                matches!(kek.open("k-1", &tampered), Err(KeyError::Unseal { .. })),
                "byte {index} altered"
            );
        }
        for length in [0, 5, NONCE_LEN + TAG_LEN - 1, sealed.len() - 1] {
            assert!(
                matches!(
                    kek.open("k-1", &sealed[..length]),
                    Err(KeyError::Unseal { .. })
                ),
                "cut to {length}"
            );
        }
    }

    fn other_kek_open(sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        kek().open("k-1", sealed)
    }

    #[test]
    fn a_kek_parses_only_a_valid_id_and_32_bytes_and_never_prints_them() {
        let key = STANDARD.encode([7u8; 32]);
        let kek = KeyEncryptionKey::parse(&format!("kek-test:{key}\n")).expect("parse");
        assert_eq!(kek.id(), "kek-test");
        let shown = format!("{kek:?}");
        assert!(shown.contains("kek-test") && !shown.contains('[') && !shown.contains(&key));
        for (id, text) in [
            ("kek-test", "not base64!"),
            ("kek-test", STANDARD.encode([7u8; 31]).as_str()),
            ("", key.as_str()),
            ("kek test", key.as_str()),
        ] {
            let error = KeyEncryptionKey::from_base64(id, text).expect_err("refused");
            assert!(matches!(error, KeyError::Malformed(_)), "{id:?} {text:?}");
            assert!(!error.to_string().contains(&key));
        }
        assert!(KeyEncryptionKey::parse(&key).is_err(), "no id");
    }

    #[test]
    fn load_or_create_writes_a_private_key_file_and_reads_the_same_key_back() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("nested").join("signing-keys.kek");
        let created = KeyEncryptionKey::load_or_create(&path).expect("create");
        assert!(created.id().starts_with("kek-") && created.id().len() == 12);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(&format!("{}:", created.id())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = KeyEncryptionKey::load_or_create(&path).expect("load");
        assert_eq!(loaded.id(), created.id());
        let sealed = created.seal("k-1", b"secret").expect("seal");
        assert_eq!(
            loaded.open("k-1", &sealed).expect("open").as_slice(),
            b"secret"
        );
        let leftovers = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn a_damaged_key_file_is_refused_naming_the_file() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("kek");
        std::fs::write(&path, "kek-x:short").expect("write");
        let error = KeyEncryptionKey::load_or_create(&path).expect_err("refused");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn opening_an_empty_store_bootstraps_one_key_that_a_second_open_reuses() {
        let dir = TempDir::new().expect("tempdir");
        let store = store(&dir).await;
        let kek = kek();
        let first = KeyRing::open(Arc::clone(&store), kek.clone(), at(0))
            .await
            .expect("open");
        let kid = first
            .signing_key(at(0))
            .await
            .expect("signing")
            .kid()
            .to_owned();
        assert!(kid.starts_with("k-") && kid.len() == 18, "{kid}");
        assert_eq!(first.revision(), Some(0));

        let second = KeyRing::open(store, kek, at(1)).await.expect("open again");
        assert_eq!(second.signing_key(at(1)).await.expect("signing").kid(), kid);
        assert_eq!(second.revision(), Some(0));
        assert_eq!(kids(&second, at(1)).await, [kid.as_str()]);
        let public = second.public_keys(at(1)).await;
        assert_eq!(public.len(), 1);
        assert!(public[0].signing && public[0].kid == kid && public[0].expires_at.is_none());
        assert_eq!(public[0].algorithm, pb::SigningAlgorithm::Ed25519 as i32);
    }

    #[tokio::test]
    async fn a_token_signed_with_the_ring_key_verifies_with_its_key_set() {
        let dir = TempDir::new().expect("tempdir");
        // Mid-second: the key must still sign at once (tokens carry whole seconds).
        let now = at(0) + TimeDelta::milliseconds(700);
        let ring = KeyRing::open(store(&dir).await, kek(), now)
            .await
            .expect("open");
        let token = issue(&ring.signing_key(now).await.expect("signing"), now);
        assert_eq!(
            verify(&ring, &token, now).await.expect("verifies").user_id,
            "u1"
        );
    }

    #[tokio::test]
    async fn a_delayed_rotation_signs_with_the_old_key_until_activation_and_both_verify() {
        let dir = TempDir::new().expect("tempdir");
        let ring = KeyRing::open(store(&dir).await, kek(), at(0))
            .await
            .expect("open");
        let old = ring
            .signing_key(at(0))
            .await
            .expect("signing")
            .kid()
            .to_owned();
        let new = ring
            .rotate(
                TimeDelta::minutes(10),
                TimeDelta::minutes(15),
                false,
                "admin",
                at(60),
            )
            .await
            .expect("rotate");
        assert!(!new.signing);
        assert_eq!(new.not_before, Some(timestamp(at(70))));

        let before = ring.signing_key(at(65)).await.expect("signing");
        assert_eq!(before.kid(), old);
        let old_token = issue(&before, at(65));
        assert_eq!(kids(&ring, at(65)).await, [old.clone(), new.kid.clone()]);
        let published = ring.public_keys(at(65)).await;
        let old_published = published.iter().find(|k| k.kid == old).expect("old");
        assert!(old_published.signing);
        assert_eq!(old_published.expires_at, Some(timestamp(at(85))));

        let after = ring.signing_key(at(70)).await.expect("signing");
        assert_eq!(after.kid(), new.kid);
        let new_token = issue(&after, at(70));
        verify(&ring, &old_token, at(71))
            .await
            .expect("old key still verifies");
        verify(&ring, &new_token, at(71))
            .await
            .expect("new key verifies");
        assert_eq!(kids(&ring, at(85)).await, [new.kid.as_str()]);
    }

    #[tokio::test]
    async fn a_rotation_revoking_the_previous_key_switches_at_once_and_drops_it() {
        let dir = TempDir::new().expect("tempdir");
        let ring = KeyRing::open(store(&dir).await, kek(), at(0))
            .await
            .expect("open");
        let old = ring.signing_key(at(0)).await.expect("signing");
        let old_token = issue(&old, at(59));
        let rotated = ring
            .rotate_with(
                TimeDelta::minutes(10),
                TimeDelta::minutes(15),
                true,
                "admin",
                at(60),
                &ExecuteOptions::default(),
            )
            .await
            .expect("rotate");
        assert!(rotated.new_key.signing && rotated.previous_key.is_none());
        assert_eq!(rotated.revision, 2, "bootstrap, rotated, revoked");
        assert_eq!(
            ring.signing_key(at(60)).await.expect("signing").kid(),
            rotated.new_key.kid
        );
        assert_eq!(kids(&ring, at(60)).await, [rotated.new_key.kid.as_str()]);
        assert_eq!(
            verify(&ring, &old_token, at(60)).await.map(|c| c.user_id),
            Err(TokenError::UnknownKey)
        );
        let token = issue(&ring.signing_key(at(60)).await.expect("signing"), at(60));
        verify(&ring, &token, at(60))
            .await
            .expect("new key verifies");
    }

    #[tokio::test]
    async fn a_second_rotation_before_the_first_activates_is_refused() {
        let dir = TempDir::new().expect("tempdir");
        let ring = KeyRing::open(store(&dir).await, kek(), at(0))
            .await
            .expect("open");
        let first = ring
            .rotate_with(
                TimeDelta::minutes(10),
                TimeDelta::minutes(15),
                false,
                "admin",
                at(60),
                &ExecuteOptions::default(),
            )
            .await
            .expect("rotate");
        let previous = first.previous_key.expect("previous");
        assert!(previous.signing && previous.expires_at == Some(timestamp(at(85))));
        let again = ring
            .rotate(
                TimeDelta::minutes(10),
                TimeDelta::minutes(15),
                false,
                "admin",
                at(65),
            )
            .await;
        assert!(
            matches!(again, Err(KeyError::RotationInProgress)),
            "{again:?}"
        );
        let negative = ring
            .rotate(
                TimeDelta::minutes(-1),
                TimeDelta::zero(),
                true,
                "admin",
                at(65),
            )
            .await;
        assert!(
            matches!(negative, Err(KeyError::Malformed(_))),
            "{negative:?}"
        );
    }

    #[tokio::test]
    async fn a_replica_signs_with_another_replicas_rotation_after_reloading() {
        let dir = TempDir::new().expect("tempdir");
        let store = store(&dir).await;
        let kek = kek();
        let a = KeyRing::open(Arc::clone(&store), kek.clone(), at(0))
            .await
            .expect("open a");
        let b = KeyRing::open(store, kek, at(0)).await.expect("open b");
        let new = a
            .rotate(
                TimeDelta::zero(),
                TimeDelta::minutes(15),
                false,
                "admin",
                at(60),
            )
            .await
            .expect("rotate");
        assert_ne!(b.signing_key(at(60)).await.expect("stale").kid(), new.kid);
        b.reload().await.expect("reload");
        let signing = b.signing_key(at(60)).await.expect("signing");
        assert_eq!(signing.kid(), new.kid);
        verify(&a, &issue(&signing, at(60)), at(60))
            .await
            .expect("a verifies b's token");
    }

    #[tokio::test]
    async fn a_ring_sealed_under_another_kek_refuses_to_open_naming_both_ids() {
        let dir = TempDir::new().expect("tempdir");
        let store = store(&dir).await;
        let sealing = kek();
        KeyRing::open(Arc::clone(&store), sealing.clone(), at(0))
            .await
            .expect("open");
        let other = kek();
        let error = KeyRing::open(store, other.clone(), at(1))
            .await
            .expect_err("refused");
        let message = error.to_string();
        assert!(matches!(error, KeyError::Unseal { .. }), "{message}");
        assert!(
            message.contains(sealing.id()) && message.contains(other.id()),
            "{message}"
        );

        // The same id with another key (a replaced key file) cannot open it either.
        let impostor =
            KeyEncryptionKey::from_base64(sealing.id(), &STANDARD.encode([9u8; 32])).expect("kek");
        let dir2 = TempDir::new().expect("tempdir");
        let store2 = self::store(&dir2).await;
        KeyRing::open(Arc::clone(&store2), sealing, at(0))
            .await
            .expect("open");
        assert!(matches!(
            KeyRing::open(store2, impostor, at(1)).await,
            Err(KeyError::Unseal { .. })
        ));
    }

    #[tokio::test]
    async fn the_stream_never_holds_a_private_key_in_the_clear() {
        let dir = TempDir::new().expect("tempdir");
        let store = store(&dir).await;
        let ring = KeyRing::open(Arc::clone(&store), kek(), at(0))
            .await
            .expect("open");
        ring.rotate(
            TimeDelta::zero(),
            TimeDelta::minutes(15),
            false,
            "admin",
            at(60),
        )
        .await
        .expect("rotate");
        let mut secrets: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for now in [at(0), at(60)] {
            let key = ring.signing_key(now).await.expect("signing");
            secrets.push(key.to_pkcs8_der().expect("der"));
        }

        let mut events = store.read_stream(
            &StreamName::parse(STREAM).expect("name"),
            ReadStreamOptions::forwards(),
        );
        let mut rotated = 0;
        while let Some(recorded) = std::future::poll_fn(|cx| events.as_mut().poll_next(cx)).await {
            let recorded = recorded.expect("read");
            let SigningKeyEvent::Rotated(event) =
                SigningKeyCodec.decode(&recorded).expect("decode")
            else {
                continue;
            };
            rotated += 1;
            for der in &secrets {
                // The whole document, and the 32-byte secret seed inside it (RFC 8410: after the
                // algorithm identifier, an OCTET STRING wrapping an OCTET STRING of 32 bytes; a
                // v2 document then carries the public key, which is no secret).
                assert_eq!(der.get(14..16), Some([0x04, 0x20].as_slice()));
                let seed = &der[16..48];
                assert!(!contains(&event.sealed_private_key, der));
                assert!(!contains(&recorded.data, der) && !contains(&recorded.data, seed));
                assert!(!contains(&recorded.metadata, seed));
            }
        }
        assert_eq!(rotated, 2);
    }
}
