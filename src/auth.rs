//! Mutual key authentication for QUIC/TLS 1.3: this end's key pair, the `authorized-clients`
//! and `known-servers` files of the state directory, and rustls/quinn-proto configs that
//! admit a peer by the BLAKE3 fingerprint of its public key.
//!
//! Trust is by key only, as in ssh. Certificates are self-signed carriers for the public
//! key: no CA, no names and no validity dates are checked. Each verifier checks the peer's
//! key fingerprint and then the TLS 1.3 `CertificateVerify` signature with that same key, so
//! a peer must prove it holds the private key of the fingerprint it is admitted by.
//!
//! State directory (default `$HOME/.tpc-xfer`, mode 0700; `%USERPROFILE%\.tpc-xfer` on
//! Windows), all plain text:
//!
//! - `key.pem`: PKCS#8 PEM Ed25519 private key, mode 0600, created on first use.
//! - `authorized-clients` (server side): one fingerprint per line, optionally followed by
//!   whitespace and a free comment. A missing file admits nobody.
//! - `known-servers` (client side): lines `HOST:PORT FINGERPRINT`, HOST exactly as given on
//!   the command line, IPv6 in brackets (`[::1]:7440`). A missing file knows nobody.
//!
//! In both files `#` starts a comment line and blank lines are ignored.

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use quinn_proto::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};

/// ALPN protocol id of the tpc-xfer protocol version this build speaks; both ends
/// require it.
pub use tpc_core::wire::ALPN;

/// Name in every certificate and the name clients pass to `connect` (it becomes SNI). It is
/// never checked: peers are identified by key fingerprint, not by name.
pub const SERVER_NAME: &str = "tpc-xfer";

/// Name of the default state directory under `$HOME`.
pub const STATE_DIR_NAME: &str = ".tpc-xfer";
/// This end's private key, in the state directory.
pub const KEY_FILE: &str = "key.pem";
/// Fingerprints of the clients a server admits, in the state directory.
pub const AUTHORIZED_CLIENTS_FILE: &str = "authorized-clients";
/// `HOST:PORT FINGERPRINT` of the servers a client trusts, in the state directory.
pub const KNOWN_SERVERS_FILE: &str = "known-servers";

/// Largest key file read. An Ed25519 PEM key is about 120 bytes, even RSA-4096 is ~3.3 KiB.
pub const KEY_FILE_BYTES_MAX: u64 = 16 * 1024;
/// Largest `authorized-clients` or `known-servers` file read (about 10,000 entries).
pub const STATE_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Longest line accepted in `authorized-clients` or `known-servers`.
pub const STATE_LINE_BYTES_MAX: usize = 4096;
/// Longest `HOST:PORT` accepted: a 253-byte DNS name, brackets and a port fit easily, and a
/// `known-servers` line with it and a fingerprint stays below `STATE_LINE_BYTES_MAX`.
pub const HOST_PORT_BYTES_MAX: usize = 1024;

/// Text form of a fingerprint: this prefix (which names the hash and input, so a future
/// scheme can be told apart), then 64 lowercase hex digits.
const FINGERPRINT_PREFIX: &str = "tpc1:";
const FINGERPRINT_BYTES: usize = 32;

/// Default state directory: `$HOME/.tpc-xfer` (`%USERPROFILE%` on Windows).
pub fn default_state_dir() -> Result<PathBuf, AuthError> {
    // Windows has no HOME; USERPROFILE is the user's home there.
    let home = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    match std::env::var_os(home) {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(STATE_DIR_NAME)),
        _ => Err(AuthError::NoHome),
    }
}

/// Identity of a public key: BLAKE3 of its DER SubjectPublicKeyInfo. Hashing the whole SPKI
/// (not just the key bits) binds the algorithm too, so one key cannot pose as another type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; FINGERPRINT_BYTES]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_public_key(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(*blake3::hash(spki_der).as_bytes())
    }

    /// Fingerprint of the public key in a DER certificate. The certificate is parsed by
    /// webpki (bounded, no panics); nothing else in it is looked at.
    pub fn of_certificate(certificate: &CertificateDer<'_>) -> Result<Fingerprint, rustls::Error> {
        let parsed = ParsedCertificate::try_from(certificate)?;
        Ok(Fingerprint::of_public_key(
            parsed.subject_public_key_info().as_ref(),
        ))
    }

    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_BYTES] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FINGERPRINT_PREFIX)?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Accepts exactly the Display form, so every file holds one canonical spelling that
    /// `grep` finds.
    fn from_str(text: &str) -> Result<Fingerprint, FingerprintError> {
        let digits = text
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or(FingerprintError::MissingPrefix)?;
        let count = digits.chars().count();
        if count != 2 * FINGERPRINT_BYTES {
            return Err(FingerprintError::Length { digits: count });
        }
        let mut bytes = [0u8; FINGERPRINT_BYTES];
        for (position, c) in digits.chars().enumerate() {
            let nibble = match c {
                '0'..='9' => c as u8 - b'0',
                'a'..='f' => c as u8 - b'a' + 10,
                _ => {
                    return Err(FingerprintError::Digit {
                        position: position + 1,
                    })
                }
            };
            // Even positions are the high nibble of their byte.
            let shift = if position % 2 == 0 { 4 } else { 0 };
            bytes[position / 2] |= nibble << shift;
        }
        Ok(Fingerprint(bytes))
    }
}

/// Why a text is not a fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FingerprintError {
    /// It does not start with `tpc1:`.
    MissingPrefix,
    /// It does not have exactly 64 characters after the prefix.
    Length { digits: usize },
    /// The character at this 1-based position after the prefix is not `0-9` or `a-f`.
    Digit { position: usize },
}

impl fmt::Display for FingerprintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FingerprintError::MissingPrefix => {
                write!(f, "a fingerprint starts with \"{FINGERPRINT_PREFIX}\"")
            }
            FingerprintError::Length { digits } => write!(
                f,
                "a fingerprint has {} hex digits after \"{FINGERPRINT_PREFIX}\", this one has {digits}",
                2 * FINGERPRINT_BYTES
            ),
            FingerprintError::Digit { position } => write!(
                f,
                "fingerprint digit {position} is not a lowercase hex digit (0-9, a-f)"
            ),
        }
    }
}

impl std::error::Error for FingerprintError {}

/// This end's key pair and the self-signed certificate that carries its public key.
pub struct Identity {
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// Loads `key.pem` from `state_dir`, creating the directory (0700) and the key (0600,
    /// Ed25519) on first use. Refuses a key that group or others may access, or that belongs
    /// to another user, as ssh does: someone else could have read or planted it.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, AuthError> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join(KEY_FILE);
        let pem = match read_key_file(&path)? {
            Some(pem) => pem,
            None => {
                create_key_file(state_dir, &path)?;
                read_key_file(&path)?.ok_or_else(|| AuthError::Io {
                    action: "read",
                    path: path.clone(),
                    source: io::ErrorKind::NotFound.into(),
                })?
            }
        };
        let key_pair = rcgen::KeyPair::from_pem(&pem).map_err(|source| AuthError::Key {
            path: path.clone(),
            source,
        })?;
        Identity::from_key_pair(&key_pair)
    }

    /// A fresh certificate is made at each start: it costs one signature, and keeping only
    /// the key on disk means there is no certificate to expire or fall out of step.
    fn from_key_pair(key_pair: &rcgen::KeyPair) -> Result<Identity, AuthError> {
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(AuthError::Certificate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, SERVER_NAME);
        let certificate = params
            .self_signed(key_pair)
            .map_err(AuthError::Certificate)?
            .der()
            .clone();
        // Computed from the certificate exactly as a peer will, so both agree by construction.
        let fingerprint = Fingerprint::of_certificate(&certificate).map_err(AuthError::Tls)?;
        Ok(Identity {
            certificate,
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Shows the fingerprint only: the private key must never reach a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The clients a server admits, from `authorized-clients`.
#[derive(Clone, Debug, Default)]
pub struct AuthorizedClients {
    /// Fingerprint → the comment after it on its line (often the client's name).
    clients: HashMap<Fingerprint, String>,
}

impl AuthorizedClients {
    /// Reads `state_dir/authorized-clients`; a missing file admits nobody.
    pub fn load(state_dir: &Path) -> Result<AuthorizedClients, AuthError> {
        let path = state_dir.join(AUTHORIZED_CLIENTS_FILE);
        match read_state_file(&path)? {
            Some(text) => AuthorizedClients::parse(&path, &text),
            None => Ok(AuthorizedClients::default()),
        }
    }

    /// Admits exactly these keys (for callers that do not read the state directory).
    pub fn from_fingerprints(
        fingerprints: impl IntoIterator<Item = Fingerprint>,
    ) -> AuthorizedClients {
        AuthorizedClients {
            clients: fingerprints
                .into_iter()
                .map(|fingerprint| (fingerprint, String::new()))
                .collect(),
        }
    }

    /// Parses the text of an authorized-clients file read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<AuthorizedClients, AuthError> {
        let mut clients = HashMap::new();
        parse_lines(path, text, |_, line| {
            let (first, comment) = match line.split_once(char::is_whitespace) {
                Some((first, rest)) => (first, rest.trim()),
                None => (line, ""),
            };
            let fingerprint = first.parse().map_err(LineError::Fingerprint)?;
            // A key listed twice keeps its first comment; listing twice is harmless.
            clients
                .entry(fingerprint)
                .or_insert_with(|| comment.to_string());
            Ok(())
        })?;
        Ok(AuthorizedClients { clients })
    }

    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.clients.contains_key(fingerprint)
    }

    /// The comment after an admitted key in the file ("" if none), for logs.
    pub fn comment(&self, fingerprint: &Fingerprint) -> Option<&str> {
        self.clients.get(fingerprint).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The servers a client trusts, from `known-servers`.
#[derive(Clone, Debug)]
pub struct KnownServers {
    /// Where they were read from, so errors can tell the user which file to edit.
    path: PathBuf,
    servers: HashMap<String, Fingerprint>,
}

impl KnownServers {
    /// Reads `state_dir/known-servers`; a missing file knows nobody.
    pub fn load(state_dir: &Path) -> Result<KnownServers, AuthError> {
        let path = state_dir.join(KNOWN_SERVERS_FILE);
        let servers = match read_state_file(&path)? {
            Some(text) => KnownServers::parse(&path, &text)?,
            None => HashMap::new(),
        };
        Ok(KnownServers { path, servers })
    }

    /// Parses the text of a known-servers file read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<HashMap<String, Fingerprint>, AuthError> {
        let mut servers: HashMap<String, (Fingerprint, usize)> = HashMap::new();
        parse_lines(path, text, |number, line| {
            let mut fields = line.split_whitespace();
            let host_port = fields.next().unwrap_or_default();
            check_host_port(host_port).map_err(LineError::HostPort)?;
            let fingerprint: Fingerprint = fields
                .next()
                .ok_or(LineError::MissingFingerprint)?
                .parse()
                .map_err(LineError::Fingerprint)?;
            if fields.next().is_some() {
                return Err(LineError::ExtraText);
            }
            match servers.entry(host_port.to_string()) {
                // Two keys for one server would make "which one is right" ambiguous.
                Entry::Occupied(entry) if entry.get().0 != fingerprint => {
                    Err(LineError::Conflict {
                        first_line: entry.get().1,
                    })
                }
                Entry::Occupied(_) => Ok(()),
                Entry::Vacant(entry) => {
                    entry.insert((fingerprint, number));
                    Ok(())
                }
            }
        })?;
        Ok(servers
            .into_iter()
            .map(|(host_port, (fingerprint, _))| (host_port, fingerprint))
            .collect())
    }

    /// The key recorded for `host_port` (compared exactly as written).
    pub fn lookup(&self, host_port: &str) -> Option<Fingerprint> {
        self.servers.get(host_port).copied()
    }

    /// The file these entries come from (it may not exist yet).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `HOST:PORT FINGERPRINT` to `state_dir/known-servers` (created 0600). One
    /// `O_APPEND` write, so concurrent clients never interleave within a line.
    pub fn record(
        state_dir: &Path,
        host_port: &str,
        fingerprint: Fingerprint,
    ) -> Result<(), AuthError> {
        check_host_port(host_port).map_err(|error| AuthError::HostPort {
            host_port: host_port.to_string(),
            error,
        })?;
        let path = state_dir.join(KNOWN_SERVERS_FILE);
        let io_error = |action, source| AuthError::Io {
            action,
            path: path.clone(),
            source,
        };
        let file = owner_only(OpenOptions::new().append(true).read(true).create(true))
            .open(&path)
            .map_err(|e| io_error("open", e))?;
        let metadata = file.metadata().map_err(|e| io_error("inspect", e))?;
        check_state_file_metadata(&path, &metadata)?;
        let mut line = String::new();
        // A hand-edited file may lack its final newline: start a new line rather than
        // extending the last entry.
        if metadata.len() > 0 {
            let mut last = [0u8; 1];
            tpc_engine::os::read_exact_at(&file, &mut last, metadata.len() - 1)
                .map_err(|e| io_error("read", e))?;
            if last[0] != b'\n' {
                line.push('\n');
            }
        }
        line.push_str(&format!("{host_port} {fingerprint}\n"));
        if metadata.len() + line.len() as u64 > STATE_FILE_BYTES_MAX {
            return Err(AuthError::TooLarge {
                path,
                bytes_max: STATE_FILE_BYTES_MAX,
            });
        }
        (&file)
            .write_all(line.as_bytes())
            .map_err(|e| io_error("write", e))?;
        file.sync_data().map_err(|e| io_error("sync", e))
    }
}

/// What a client expects of one server, and the shared slot where its verifier records what
/// it saw. Clones share the slot: pass one to [`client_crypto`], keep one to read
/// [`ServerTrust::outcome`] after the handshake (rustls only reports a verifier's refusal as
/// an opaque alert).
#[derive(Clone, Debug)]
pub struct ServerTrust {
    host_port: String,
    expected: Option<Fingerprint>,
    accept_new: bool,
    known_servers: PathBuf,
    outcome: Arc<Mutex<Option<ServerCheck>>>,
    /// The key accepted on first use, shared by every clone of this trust.
    first_use: Arc<Mutex<Option<Fingerprint>>>,
}

/// What the client's verifier decided about the server's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// The key matches the `known-servers` entry.
    Known(Fingerprint),
    /// The server was unknown and trust-on-first-use was allowed. Once the handshake has
    /// succeeded (which proves the server holds the key), record it with
    /// [`KnownServers::record`].
    AcceptedNew(Fingerprint),
    /// The server is unknown and trust-on-first-use was not allowed: refused.
    Unknown(Fingerprint),
    /// The server presented another key than the one recorded: refused.
    Changed {
        expected: Fingerprint,
        seen: Fingerprint,
    },
}

impl ServerTrust {
    /// Trust for `host_port` (as given on the command line) from `known`; `accept_new`
    /// allows trust on first use of an unknown server.
    pub fn new(
        known: &KnownServers,
        host_port: &str,
        accept_new: bool,
    ) -> Result<ServerTrust, AuthError> {
        check_host_port(host_port).map_err(|error| AuthError::HostPort {
            host_port: host_port.to_string(),
            error,
        })?;
        Ok(ServerTrust {
            host_port: host_port.to_string(),
            expected: known.lookup(host_port),
            accept_new,
            known_servers: known.path().to_path_buf(),
            outcome: Arc::new(Mutex::new(None)),
            first_use: Arc::new(Mutex::new(None)),
        })
    }

    pub fn host_port(&self) -> &str {
        &self.host_port
    }

    /// What the verifier decided in the latest handshake; `None` before it saw a key.
    pub fn outcome(&self) -> Option<ServerCheck> {
        *lock(&self.outcome)
    }

    /// The precise error when the verifier refused the server's key.
    pub fn failure(&self) -> Option<AuthError> {
        self.outcome().and_then(|check| self.refusal(check))
    }

    /// The key to append to `known-servers` after a successful handshake, if any.
    pub fn accepted_new(&self) -> Option<Fingerprint> {
        match self.outcome() {
            Some(ServerCheck::AcceptedNew(fingerprint)) => Some(fingerprint),
            _ => None,
        }
    }

    fn check(&self, seen: Fingerprint) -> Result<(), AuthError> {
        // A key accepted on first use binds this trust's later handshakes (a transfer's
        // other connections) to the same key: another key on them is a change.
        // One guard over the check and the set: two first handshakes cannot both win.
        let mut first_use = lock(&self.first_use);
        let check = match (self.expected, *first_use) {
            (Some(expected), _) if expected == seen => ServerCheck::Known(seen),
            (Some(expected), _) => ServerCheck::Changed { expected, seen },
            (None, Some(first)) if first == seen => ServerCheck::AcceptedNew(seen),
            (None, Some(first)) => ServerCheck::Changed {
                expected: first,
                seen,
            },
            (None, None) if self.accept_new => {
                *first_use = Some(seen);
                ServerCheck::AcceptedNew(seen)
            }
            (None, None) => ServerCheck::Unknown(seen),
        };
        drop(first_use);
        *lock(&self.outcome) = Some(check);
        match self.refusal(check) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn refusal(&self, check: ServerCheck) -> Option<AuthError> {
        match check {
            ServerCheck::Known(_) | ServerCheck::AcceptedNew(_) => None,
            ServerCheck::Unknown(seen) => Some(AuthError::UnknownServer {
                host_port: self.host_port.clone(),
                seen,
                known_servers: self.known_servers.clone(),
            }),
            ServerCheck::Changed { expected, seen } => Some(AuthError::ServerKeyChanged {
                host_port: self.host_port.clone(),
                expected,
                seen,
                known_servers: self.known_servers.clone(),
            }),
        }
    }
}

/// The clients a running server admits: `authorized-clients` as last read, re-read when
/// the operator asks (SIGHUP) or the file changes (`reload`), so that a key added or
/// removed takes effect without a restart. Cheap to clone; clones share the list.
#[derive(Clone, Debug)]
pub struct LiveClients {
    clients: Arc<RwLock<AuthorizedClients>>,
    /// Where the list comes from, and the file's (mtime, size, inode) when last read;
    /// `None` for a fixed list.
    source: Option<Arc<(PathBuf, Mutex<Option<FileStamp>>)>>,
}

/// What tells a changed file: modification time, size, inode.
type FileStamp = (std::time::SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    let md = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&md);
    #[cfg(not(unix))]
    let ino = 0;
    Some((md.modified().ok()?, md.len(), ino))
}

impl From<AuthorizedClients> for LiveClients {
    /// A fixed list, never re-read.
    fn from(clients: AuthorizedClients) -> LiveClients {
        LiveClients {
            clients: Arc::new(RwLock::new(clients)),
            source: None,
        }
    }
}

impl LiveClients {
    /// Reads `state_dir/authorized-clients` (a missing file admits nobody).
    pub fn load(state_dir: &Path) -> Result<LiveClients, AuthError> {
        let path = state_dir.join(AUTHORIZED_CLIENTS_FILE);
        let seen = stamp(&path);
        let clients = AuthorizedClients::load(state_dir)?;
        Ok(LiveClients {
            clients: Arc::new(RwLock::new(clients)),
            source: Some(Arc::new((path, Mutex::new(seen)))),
        })
    }

    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.read().contains(fingerprint)
    }

    /// The comment after an admitted key ("" if none), for logs.
    pub fn comment(&self, fingerprint: &Fingerprint) -> Option<String> {
        self.read().comment(fingerprint).map(str::to_owned)
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AuthorizedClients> {
        // A panic while holding the lock leaves the last list, which is still whole.
        self.clients.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the file again if `asked` (SIGHUP) or it changed since it was last read.
    /// `None` if nothing was read; the new number of keys; or why the file could not be
    /// used, in which case the list in force stays.
    pub fn reload(&self, asked: bool) -> Option<Result<usize, AuthError>> {
        let source = self.source.as_ref()?;
        let (path, seen) = &**source;
        let now = stamp(path);
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if !asked && now == *seen {
            return None;
        }
        *seen = now;
        let dir = path.parent().unwrap_or(Path::new("."));
        Some(AuthorizedClients::load(dir).map(|fresh| {
            let n = fresh.len();
            *self.clients.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            n
        }))
    }
}

/// Server TLS config: TLS 1.3 only, ALPN `wire::ALPN`, a client certificate required
/// and admitted iff its key is in `authorized` (as it stands at the handshake). A refused client receives the `access_denied`
/// alert (see [`refused_by_server`]).
pub fn server_crypto(
    identity: &Identity,
    authorized: impl Into<LiveClients>,
) -> Result<Arc<rustls::ServerConfig>, AuthError> {
    let authorized = authorized.into();
    let config = server_config_builder(authorized)?
        .with_single_cert(vec![identity.certificate.clone()], identity.private_key())
        .map_err(AuthError::Tls)?;
    Ok(finish_server_config(config))
}

/// Client TLS config: TLS 1.3 only, ALPN `wire::ALPN`, presents this identity's
/// certificate and accepts the server per `server` (known key, or trust on first use).
pub fn client_crypto(
    identity: &Identity,
    server: ServerTrust,
) -> Result<Arc<rustls::ClientConfig>, AuthError> {
    let config = client_config_builder(server)?
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.private_key())
        .map_err(AuthError::Tls)?;
    Ok(finish_client_config(config))
}

/// [`server_crypto`] wrapped for quinn-proto. Transport parameters are the caller's.
pub fn quic_server_config(
    identity: &Identity,
    authorized: AuthorizedClients,
) -> Result<quinn_proto::ServerConfig, AuthError> {
    let crypto = QuicServerConfig::try_from(server_crypto(identity, authorized)?)
        .map_err(AuthError::Quic)?;
    Ok(quinn_proto::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A [`server_crypto`] config wrapped for quinn-proto, so QUIC and TCP share one.
pub fn quic_server_config_from(
    crypto: Arc<rustls::ServerConfig>,
) -> Result<quinn_proto::ServerConfig, AuthError> {
    let crypto = QuicServerConfig::try_from(crypto).map_err(AuthError::Quic)?;
    Ok(quinn_proto::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// [`client_crypto`] wrapped for quinn-proto. Transport parameters are the caller's.
pub fn quic_client_config(
    identity: &Identity,
    server: ServerTrust,
) -> Result<quinn_proto::ClientConfig, AuthError> {
    let crypto =
        QuicClientConfig::try_from(client_crypto(identity, server)?).map_err(AuthError::Quic)?;
    Ok(quinn_proto::ClientConfig::new(Arc::new(crypto)))
}

/// Whether a client's TLS error means the server refused this client's key.
pub fn refused_by_server(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::AlertReceived(AlertDescription::AccessDenied)
    )
}

/// The peer's key fingerprint from quinn-proto's `crypto_session().peer_identity()`, which
/// holds the peer's certificate chain.
pub fn peer_fingerprint(peer_identity: &dyn Any) -> Option<Fingerprint> {
    let chain = peer_identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    Fingerprint::of_certificate(chain.first()?).ok()
}

/// Everything that can go wrong setting up or checking authentication.
#[derive(Debug)]
pub enum AuthError {
    /// `$HOME` is unset or empty, so there is no default state directory.
    NoHome,
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    NotADirectory {
        path: PathBuf,
    },
    NotAFile {
        path: PathBuf,
    },
    /// A state file or directory belongs to another user, who could change it.
    NotOwned {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    /// The private key may be read or written by group or others.
    KeyPermissions {
        path: PathBuf,
        mode: u32,
    },
    /// A trust file or the state directory may be written by group or others, who could
    /// then admit themselves.
    WritableByOthers {
        path: PathBuf,
        mode: u32,
    },
    TooLarge {
        path: PathBuf,
        bytes_max: u64,
    },
    /// The key file is not a PKCS#8 PEM key rcgen can use.
    Key {
        path: PathBuf,
        source: rcgen::Error,
    },
    /// Generating the key or the self-signed certificate failed.
    Certificate(rcgen::Error),
    Parse {
        path: PathBuf,
        line: usize,
        error: LineError,
    },
    HostPort {
        host_port: String,
        error: HostPortError,
    },
    Tls(rustls::Error),
    Quic(NoInitialCipherSuite),
    UnknownServer {
        host_port: String,
        seen: Fingerprint,
        known_servers: PathBuf,
    },
    ServerKeyChanged {
        host_port: String,
        expected: Fingerprint,
        seen: Fingerprint,
        known_servers: PathBuf,
    },
    /// The server refused this client's key (built by the caller on [`refused_by_server`]).
    NotAuthorized {
        host_port: String,
        client: Fingerprint,
    },
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::NoHome => write!(
                f,
                "HOME is not set, so there is no state directory for keys (~/{STATE_DIR_NAME})"
            ),
            AuthError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            AuthError::NotADirectory { path } => {
                write!(f, "{} is not a directory", path.display())
            }
            AuthError::NotAFile { path } => write!(f, "{} is not a regular file", path.display()),
            AuthError::NotOwned { path, owner, user } => write!(
                f,
                "{} belongs to uid {owner}, not to this user (uid {user}): refusing to use it",
                path.display()
            ),
            AuthError::KeyPermissions { path, mode } => write!(
                f,
                "private key {} is accessible by group or others (mode {mode:04o}): refusing \
                 to use it; run chmod 600 {}",
                path.display(),
                path.display()
            ),
            AuthError::WritableByOthers { path, mode } => write!(
                f,
                "{} is writable by group or others (mode {mode:04o}): refusing to use it; \
                 run chmod go-w {}",
                path.display(),
                path.display()
            ),
            AuthError::TooLarge { path, bytes_max } => write!(
                f,
                "{} is larger than the limit of {bytes_max} bytes",
                path.display()
            ),
            AuthError::Key { path, source } => write!(
                f,
                "{} is not a usable PKCS#8 PEM private key: {source}",
                path.display()
            ),
            AuthError::Certificate(source) => {
                write!(f, "cannot make the key or certificate: {source}")
            }
            AuthError::Parse { path, line, error } => {
                write!(f, "{}:{line}: {error}", path.display())
            }
            AuthError::HostPort { host_port, error } => {
                write!(f, "bad server address {host_port:?}: {error}")
            }
            AuthError::Tls(source) => write!(f, "TLS configuration: {source}"),
            AuthError::Quic(source) => write!(f, "QUIC configuration: {source}"),
            AuthError::UnknownServer {
                host_port,
                seen,
                known_servers,
            } => write!(
                f,
                "server {host_port} is not known (fingerprint {seen}); run again with \
                 --accept-new to trust it, or add it to {}",
                known_servers.display()
            ),
            AuthError::ServerKeyChanged {
                host_port,
                expected,
                seen,
                known_servers,
            } => write!(
                f,
                "server {host_port} key CHANGED: expected {expected}, got {seen} — refusing \
                 (if the change is expected, remove its line from {})",
                known_servers.display()
            ),
            AuthError::NotAuthorized { host_port, client } => write!(
                f,
                "this client is not authorized by the server {host_port}: ask its operator \
                 to add {client} to its {AUTHORIZED_CLIENTS_FILE} file"
            ),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Io { source, .. } => Some(source),
            AuthError::Key { source, .. } | AuthError::Certificate(source) => Some(source),
            AuthError::Parse { error, .. } => Some(error),
            AuthError::HostPort { error, .. } => Some(error),
            AuthError::Tls(source) => Some(source),
            AuthError::Quic(source) => Some(source),
            _ => None,
        }
    }
}

/// What is wrong with one line of `authorized-clients` or `known-servers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    TooLong {
        bytes: usize,
    },
    NotUtf8,
    Fingerprint(FingerprintError),
    HostPort(HostPortError),
    MissingFingerprint,
    ExtraText,
    /// The same `HOST:PORT` already has another fingerprint on this earlier line.
    Conflict {
        first_line: usize,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { bytes } => write!(
                f,
                "line of {bytes} bytes is longer than the limit of {STATE_LINE_BYTES_MAX}"
            ),
            LineError::NotUtf8 => f.write_str("not UTF-8 text"),
            LineError::Fingerprint(error) => error.fmt(f),
            LineError::HostPort(error) => error.fmt(f),
            LineError::MissingFingerprint => {
                f.write_str("expected HOST:PORT FINGERPRINT, the fingerprint is missing")
            }
            LineError::ExtraText => {
                f.write_str("expected HOST:PORT FINGERPRINT, found more text after it")
            }
            LineError::Conflict { first_line } => write!(
                f,
                "this server already has another fingerprint on line {first_line}"
            ),
        }
    }
}

impl std::error::Error for LineError {}

/// What is wrong with a `HOST:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPortError {
    TooLong {
        bytes: usize,
    },
    /// Whitespace, control characters and `#` would break the line format.
    BadCharacter(char),
    MissingPort,
    BadPort,
    EmptyHost,
    /// An IPv6 address must be in brackets, or its last `:` would be taken for the port.
    Ipv6Brackets,
}

impl fmt::Display for HostPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPortError::TooLong { bytes } => write!(
                f,
                "HOST:PORT of {bytes} bytes is longer than the limit of {HOST_PORT_BYTES_MAX}"
            ),
            HostPortError::BadCharacter(c) => write!(f, "HOST:PORT contains the character {c:?}"),
            HostPortError::MissingPort => f.write_str("expected HOST:PORT, the port is missing"),
            HostPortError::BadPort => f.write_str("the port must be a number from 1 to 65535"),
            HostPortError::EmptyHost => f.write_str("expected HOST:PORT, the host is empty"),
            HostPortError::Ipv6Brackets => {
                f.write_str("an IPv6 address must be written in brackets, e.g. [::1]:7440")
            }
        }
    }
}

impl std::error::Error for HostPortError {}

fn check_host_port(host_port: &str) -> Result<(), HostPortError> {
    if host_port.len() > HOST_PORT_BYTES_MAX {
        return Err(HostPortError::TooLong {
            bytes: host_port.len(),
        });
    }
    if let Some(c) = host_port
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '#')
    {
        return Err(HostPortError::BadCharacter(c));
    }
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or(HostPortError::MissingPort)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port != 0);
    if !port_ok {
        return Err(HostPortError::BadPort);
    }
    if host.is_empty() {
        return Err(HostPortError::EmptyHost);
    }
    match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner.strip_suffix(']').ok_or(HostPortError::Ipv6Brackets)?;
            if inner.is_empty() {
                return Err(HostPortError::EmptyHost);
            }
            if inner.contains(['[', ']']) {
                return Err(HostPortError::Ipv6Brackets);
            }
        }
        None if host.contains([':', '[', ']']) => return Err(HostPortError::Ipv6Brackets),
        None => {}
    }
    Ok(())
}

/// Calls `parse` with the 1-based number and trimmed text of each line that is neither
/// blank nor a comment, after checking its length; errors name the file and line.
fn parse_lines(
    path: &Path,
    text: &str,
    mut parse: impl FnMut(usize, &str) -> Result<(), LineError>,
) -> Result<(), AuthError> {
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let error = |error| AuthError::Parse {
            path: path.to_path_buf(),
            line: number,
            error,
        };
        if raw.len() > STATE_LINE_BYTES_MAX {
            return Err(error(LineError::TooLong { bytes: raw.len() }));
        }
        // trim also drops the '\r' of files written on Windows.
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        parse(number, line).map_err(error)?;
    }
    Ok(())
}

fn prepare_state_dir(state_dir: &Path) -> Result<(), AuthError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(state_dir).map_err(|source| AuthError::Io {
        action: "create",
        path: state_dir.to_path_buf(),
        source,
    })?;
    let metadata = fs::metadata(state_dir).map_err(|source| AuthError::Io {
        action: "inspect",
        path: state_dir.to_path_buf(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(AuthError::NotADirectory {
            path: state_dir.to_path_buf(),
        });
    }
    check_owner(state_dir, &metadata)?;
    check_not_writable_by_others(state_dir, &metadata)
}

/// The key file's text, `None` if it does not exist. Permissions are checked on the opened
/// file, so they are those of the bytes actually read.
fn read_key_file(path: &Path) -> Result<Option<String>, AuthError> {
    let Some(file) = open_if_exists(path)? else {
        return Ok(None);
    };
    let metadata = inspect(&file, path)?;
    if !metadata.is_file() {
        return Err(AuthError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, &metadata)?;
    check_private(path, &metadata)?;
    let bytes = read_bounded(file, path, metadata.len(), KEY_FILE_BYTES_MAX)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| AuthError::Key {
            path: path.to_path_buf(),
            source: rcgen::Error::CouldNotParseKeyPair,
        })
}

/// Writes a new key to a temporary file, makes it durable, then links it into place: a
/// crash never leaves a partial `key.pem`, and if another first run won the race its key is
/// kept (link fails with EEXIST) instead of being replaced under it.
fn create_key_file(state_dir: &Path, path: &Path) -> Result<(), AuthError> {
    let key_pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(AuthError::Certificate)?;
    let pem = key_pair.serialize_pem();
    let temp = state_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let io_error = |action, path: &Path, source| AuthError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    // A leftover from a crashed run with the same pid holds no key anyone uses.
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error("remove", &temp, e)),
        _ => {}
    }
    let written = owner_only(OpenOptions::new().write(true).create_new(true))
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(pem.as_bytes())?;
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error("write", &temp, e));
    }
    let placed = match fs::hard_link(&temp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        // No hard links on this filesystem: rename is still atomic, it can only replace a
        // key that a concurrent first run created in the same instant.
        Err(_) => fs::rename(&temp, path),
    };
    let _ = fs::remove_file(&temp);
    placed.map_err(|e| io_error("create", path, e))?;
    tpc_engine::os::sync_dir(state_dir).map_err(|e| io_error("sync", state_dir, e))
}

/// The text of a trust file, `None` if it does not exist.
fn read_state_file(path: &Path) -> Result<Option<String>, AuthError> {
    let Some(file) = open_if_exists(path)? else {
        return Ok(None);
    };
    let metadata = inspect(&file, path)?;
    check_state_file_metadata(path, &metadata)?;
    let bytes = read_bounded(file, path, metadata.len(), STATE_FILE_BYTES_MAX)?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(text)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            Err(AuthError::Parse {
                path: path.to_path_buf(),
                line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
                error: LineError::NotUtf8,
            })
        }
    }
}

fn check_state_file_metadata(path: &Path, metadata: &fs::Metadata) -> Result<(), AuthError> {
    if !metadata.is_file() {
        return Err(AuthError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, metadata)?;
    check_not_writable_by_others(path, metadata)
}

/// A new file's mode: the owner's alone (0600). Windows has no mode: a file takes the
/// ACL of its directory, which under the user's profile is the user's alone.
fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    options.mode(0o600);
    options
}

// Windows: std reads neither an owner nor mode bits, so the three checks below cannot be
// made there. The default state directory lies under the user's profile, whose ACL
// admits only that user (and administrators); the README says so.

/// A key file must be readable by its owner alone.
#[cfg(unix)]
fn check_private(path: &Path, metadata: &fs::Metadata) -> Result<(), AuthError> {
    if metadata.mode() & 0o077 != 0 {
        return Err(AuthError::KeyPermissions {
            path: path.to_path_buf(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

#[cfg(windows)]
fn check_private(_path: &Path, _metadata: &fs::Metadata) -> Result<(), AuthError> {
    Ok(())
}

#[cfg(windows)]
fn check_owner(_path: &Path, _metadata: &fs::Metadata) -> Result<(), AuthError> {
    Ok(())
}

#[cfg(windows)]
fn check_not_writable_by_others(_path: &Path, _metadata: &fs::Metadata) -> Result<(), AuthError> {
    Ok(())
}

#[cfg(unix)]
fn check_owner(path: &Path, metadata: &fs::Metadata) -> Result<(), AuthError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if metadata.uid() != user {
        return Err(AuthError::NotOwned {
            path: path.to_path_buf(),
            owner: metadata.uid(),
            user,
        });
    }
    Ok(())
}

#[cfg(unix)]
fn check_not_writable_by_others(path: &Path, metadata: &fs::Metadata) -> Result<(), AuthError> {
    if metadata.mode() & 0o022 != 0 {
        return Err(AuthError::WritableByOthers {
            path: path.to_path_buf(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

fn open_if_exists(path: &Path) -> Result<Option<File>, AuthError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuthError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn inspect(file: &File, path: &Path) -> Result<fs::Metadata, AuthError> {
    file.metadata().map_err(|source| AuthError::Io {
        action: "inspect",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads at most `bytes_max` bytes: the size is checked before reading and the read is
/// capped, in case the file grows in between.
fn read_bounded(file: File, path: &Path, len: u64, bytes_max: u64) -> Result<Vec<u8>, AuthError> {
    let too_large = || AuthError::TooLarge {
        path: path.to_path_buf(),
        bytes_max,
    };
    if len > bytes_max {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(bytes_max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| AuthError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > bytes_max {
        return Err(too_large());
    }
    Ok(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The slot holds plain data that is always whole: a panic elsewhere cannot corrupt it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Exactly one crypto provider, passed explicitly: with two compiled in, rustls's implicit
/// default panics (docs/ARCHITECTURE.md, "Facts measured"). Its TLS 1.3 suites with AES-128-GCM first (ring's default
/// puts AES-256-GCM first): every byte of a transfer is encrypted and decrypted once, and
/// 10 AES rounds instead of 14 took about 10% off that work, and about 3% off a loopback
/// push in one 8-round test (PERFORMANCE.md, "AES-128-GCM first"). It is what QUIC's own Initial packets use and
/// what `scp -c aes128-gcm` is measured with. The client's order decides (rustls servers
/// follow it), and all three suites stay on offer.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn server_config_builder(
    authorized: LiveClients,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, AuthError>
{
    let provider = provider();
    let verifier = AuthorizedClientVerifier {
        authorized,
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(AuthError::Tls)?
        .with_client_cert_verifier(Arc::new(verifier)))
}

fn finish_server_config(mut config: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session skips the certificate verifier, so a client removed
    // from authorized-clients could come back on an old ticket.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

fn client_config_builder(
    server: ServerTrust,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, AuthError>
{
    let provider = provider();
    let verifier = KnownServerVerifier {
        trust: server,
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(AuthError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

fn finish_client_config(mut config: rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every connection checks the server's key again.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Admits a client iff its key fingerprint is authorized and it signs with that key.
#[derive(Debug)]
struct AuthorizedClientVerifier {
    authorized: LiveClients,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AuthorizedClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: clients have exactly one certificate and always present it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Intermediates are ignored: trust comes from the key, not from a chain.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_certificate(end_entity)?;
        if self.authorized.contains(&fingerprint) {
            Ok(ClientCertVerified::assertion())
        } else {
            // The operator sees who was turned away, and can authorize the key.
            crate::log::line(format_args!(
                "tpc-xfer: refused key {fingerprint}: not in {AUTHORIZED_CLIENTS_FILE}"
            ));
            // Sent as the access_denied alert, which the client recognises.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    /// Proof of possession: `cert` is the certificate `verify_client_cert` admitted.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts a server iff its key is the known one for the address (or trust on first use is
/// allowed) and it signs with that key.
#[derive(Debug)]
struct KnownServerVerifier {
    trust: ServerTrust,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for KnownServerVerifier {
    /// Name, dates and chain are ignored: the key fingerprint is the whole identity.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_certificate(end_entity)?;
        match self.trust.check(fingerprint) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            // Sent as certificate_unknown; the precise reason stays in the trust's slot.
            Err(error) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(error)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    /// Proof of possession: `cert` is the certificate `verify_server_cert` accepted.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Unreachable while the configs offer TLS 1.3 only; refusing keeps it that way if someone
/// widens the versions.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("tpc-xfer speaks TLS 1.3 only".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpc_engine::transport::{quic_why, Why};

    #[test]
    fn aes_128_gcm_is_offered_first_and_the_other_tls13_suites_still_are() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        for other in [
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            assert!(suites.contains(&other), "{other:?} is no longer offered");
        }
    }

    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::{ClientConnection, Connection, ServerConnection};

    /// A fresh private directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "tpc-xfer-auth-{}-{tag}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
            TempDir(path)
        }

        fn state(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn write_private(path: &Path, text: &[u8]) {
        fs::write(path, text).unwrap();
        chmod(path, 0o600);
    }

    #[test]
    fn key_is_created_private_and_reused() {
        let temp = TempDir::new("key");
        let state = temp.state("state");
        let first = Identity::load_or_create(&state).unwrap();
        let key_path = state.join(KEY_FILE);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&key_path), 0o600);
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE], "no temporary file is left behind");

        let pem = fs::read_to_string(&key_path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let key_pair = rcgen::KeyPair::from_pem(&pem).unwrap();
        assert_eq!(key_pair.algorithm(), &rcgen::PKCS_ED25519);
        // The certificate's SPKI, as webpki extracts it, is the key's SPKI from rcgen.
        assert_eq!(
            first.fingerprint(),
            Fingerprint::of_public_key(&key_pair.public_key_der())
        );

        let second = Identity::load_or_create(&state).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(fs::read_to_string(&key_path).unwrap(), pem, "key untouched");

        let other = Identity::load_or_create(&temp.state("other")).unwrap();
        assert_ne!(first.fingerprint(), other.fingerprint());
        assert!(!format!("{first:?}").contains("key"), "{first:?}");
    }

    #[test]
    fn key_accessible_by_others_is_refused() {
        let temp = TempDir::new("perm");
        let state = temp.state("state");
        let fingerprint = Identity::load_or_create(&state).unwrap().fingerprint();
        let key_path = state.join(KEY_FILE);
        for bad in [0o644, 0o640, 0o604, 0o620] {
            chmod(&key_path, bad);
            match Identity::load_or_create(&state) {
                Err(AuthError::KeyPermissions { path, mode }) => {
                    assert_eq!(path, key_path);
                    assert_eq!(mode, bad);
                }
                other => panic!("mode {bad:o}: {other:?}"),
            }
        }
        let message = Identity::load_or_create(&state).unwrap_err().to_string();
        assert!(message.contains("chmod 600"), "{message}");
        chmod(&key_path, 0o400);
        assert_eq!(
            Identity::load_or_create(&state).unwrap().fingerprint(),
            fingerprint
        );
    }

    #[test]
    fn bad_key_files_and_state_dir_are_refused() {
        let temp = TempDir::new("badkey");
        let state = temp.state("state");
        Identity::load_or_create(&state).unwrap();
        let key_path = state.join(KEY_FILE);

        write_private(&key_path, b"-----BEGIN PRIVATE KEY-----\nnope\n");
        assert!(matches!(
            Identity::load_or_create(&state),
            Err(AuthError::Key { .. })
        ));
        write_private(&key_path, &[b'x'; KEY_FILE_BYTES_MAX as usize + 1]);
        assert!(matches!(
            Identity::load_or_create(&state),
            Err(AuthError::TooLarge {
                bytes_max: KEY_FILE_BYTES_MAX,
                ..
            })
        ));
        fs::remove_file(&key_path).unwrap();
        fs::create_dir(&key_path).unwrap();
        chmod(&key_path, 0o700);
        assert!(matches!(
            Identity::load_or_create(&state),
            Err(AuthError::NotAFile { .. })
        ));
        fs::remove_dir(&key_path).unwrap();

        chmod(&state, 0o777);
        assert!(matches!(
            Identity::load_or_create(&state),
            Err(AuthError::WritableByOthers { mode: 0o777, .. })
        ));
        chmod(&state, 0o700);
        let file = temp.state("plain-file");
        write_private(&file, b"");
        assert!(matches!(
            Identity::load_or_create(&file),
            Err(AuthError::Io { .. }) | Err(AuthError::NotADirectory { .. })
        ));
    }

    #[test]
    fn fingerprint_text_round_trips_and_rejects_bad_input() {
        let zero = Fingerprint([0; 32]);
        assert_eq!(zero.to_string(), format!("tpc1:{}", "0".repeat(64)));
        // Every nibble value appears, high and low: 07 0f 17 1f ... f7 ff.
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = i as u8 * 8 + 7;
        }
        let fingerprint = Fingerprint(bytes);
        let text = fingerprint.to_string();
        assert_eq!(
            text,
            "tpc1:070f171f272f373f474f575f676f777f878f979fa7afb7bfc7cfd7dfe7eff7ff"
        );
        assert_eq!(text.parse::<Fingerprint>(), Ok(fingerprint));
        assert_eq!(format!("{fingerprint:?}"), format!("Fingerprint({text})"));

        let digits = &text[5..];
        let cases = [
            (digits.to_string(), FingerprintError::MissingPrefix),
            (format!("TPC1:{digits}"), FingerprintError::MissingPrefix),
            (format!("tpc2:{digits}"), FingerprintError::MissingPrefix),
            ("tpc1:".to_string(), FingerprintError::Length { digits: 0 }),
            (
                format!("tpc1:{}", &digits[1..]),
                FingerprintError::Length { digits: 63 },
            ),
            (format!("{text}0"), FingerprintError::Length { digits: 65 }),
            (format!("{text} "), FingerprintError::Length { digits: 65 }),
            (
                format!("tpc1:{}", digits.to_uppercase()),
                FingerprintError::Digit { position: 4 },
            ),
            (
                format!("tpc1:{}g", &digits[1..]),
                FingerprintError::Digit { position: 64 },
            ),
            (
                format!("tpc1:0é{}", &digits[2..]),
                FingerprintError::Digit { position: 2 },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Fingerprint>(), Err(expected), "{input:?}");
        }
    }

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    #[test]
    fn authorized_clients_file() {
        let temp = TempDir::new("authz");
        let state = temp.0.clone();
        let path = state.join(AUTHORIZED_CLIENTS_FILE);
        assert!(
            AuthorizedClients::load(&state).unwrap().is_empty(),
            "missing file"
        );

        let text = format!(
            "# who may connect\n\n{}\r\n   {}\talice laptop  \n  # indented comment\n{} dup\n",
            fp(1),
            fp(2),
            fp(1)
        );
        write_private(&path, text.as_bytes());
        let clients = AuthorizedClients::load(&state).unwrap();
        assert_eq!(clients.len(), 2);
        assert!(clients.contains(&fp(1)) && clients.contains(&fp(2)));
        assert!(!clients.contains(&fp(3)));
        assert_eq!(clients.comment(&fp(1)), Some(""));
        assert_eq!(clients.comment(&fp(2)), Some("alice laptop"));

        let bad = format!("{}\n# ok\n\n{}x name\n", fp(1), fp(2));
        write_private(&path, bad.as_bytes());
        let error = AuthorizedClients::load(&state).unwrap_err();
        match &error {
            AuthError::Parse {
                path: at,
                line: 4,
                error: LineError::Fingerprint(FingerprintError::Length { digits: 65 }),
            } => assert_eq!(at, &path),
            other => panic!("{other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("authorized-clients:4: "), "{message}");

        write_private(
            &path,
            format!("{}\n{}\n", fp(1), "#".repeat(5000)).as_bytes(),
        );
        assert!(matches!(
            AuthorizedClients::load(&state),
            Err(AuthError::Parse {
                line: 2,
                error: LineError::TooLong { bytes: 5000 },
                ..
            })
        ));
        write_private(&path, b"# fine\n# also fine\n\xff\n");
        assert!(matches!(
            AuthorizedClients::load(&state),
            Err(AuthError::Parse {
                line: 3,
                error: LineError::NotUtf8,
                ..
            })
        ));
        write_private(&path, &vec![b'\n'; STATE_FILE_BYTES_MAX as usize + 1]);
        assert!(matches!(
            AuthorizedClients::load(&state),
            Err(AuthError::TooLarge { .. })
        ));
        write_private(&path, b"");
        chmod(&path, 0o620);
        assert!(matches!(
            AuthorizedClients::load(&state),
            Err(AuthError::WritableByOthers { mode: 0o620, .. })
        ));
        chmod(&path, 0o644);
        assert!(AuthorizedClients::load(&state).unwrap().is_empty());
    }

    #[test]
    fn known_servers_file() {
        let temp = TempDir::new("known");
        let state = temp.0.clone();
        let path = state.join(KNOWN_SERVERS_FILE);
        let known = KnownServers::load(&state).unwrap();
        assert_eq!(known.lookup("127.0.0.1:7440"), None, "missing file");
        assert_eq!(known.path(), path);

        let text = format!(
            "# servers\n127.0.0.1:7440 {}\n\n[::1]:7440\t{}\nhost.example:1 {}\nhost.example:1 {}\n",
            fp(1),
            fp(2),
            fp(3),
            fp(3)
        );
        write_private(&path, text.as_bytes());
        let known = KnownServers::load(&state).unwrap();
        assert_eq!(known.lookup("127.0.0.1:7440"), Some(fp(1)));
        assert_eq!(known.lookup("[::1]:7440"), Some(fp(2)));
        assert_eq!(known.lookup("host.example:1"), Some(fp(3)));
        assert_eq!(known.lookup("127.0.0.1:7441"), None);
        assert_eq!(known.lookup("HOST.example:1"), None, "compared as written");

        let f = fp(4);
        let cases = [
            (
                format!("::1:7440 {f}"),
                LineError::HostPort(HostPortError::Ipv6Brackets),
            ),
            (
                format!("[::1:7440 {f}"),
                LineError::HostPort(HostPortError::Ipv6Brackets),
            ),
            (
                format!("host {f}"),
                LineError::HostPort(HostPortError::MissingPort),
            ),
            (
                format!("host:0 {f}"),
                LineError::HostPort(HostPortError::BadPort),
            ),
            (
                format!("host:65536 {f}"),
                LineError::HostPort(HostPortError::BadPort),
            ),
            (
                format!("host:+1 {f}"),
                LineError::HostPort(HostPortError::BadPort),
            ),
            (
                format!(":7440 {f}"),
                LineError::HostPort(HostPortError::EmptyHost),
            ),
            ("host:7440".to_string(), LineError::MissingFingerprint),
            (format!("host:7440 {f} extra"), LineError::ExtraText),
            (
                "host:7440 tpc1:00".to_string(),
                LineError::Fingerprint(FingerprintError::Length { digits: 2 }),
            ),
            (
                format!("127.0.0.1:7440 {f}"),
                LineError::Conflict { first_line: 2 },
            ),
        ];
        for (line, expected) in cases {
            let text = format!("# servers\n127.0.0.1:7440 {}\n{line}\n", fp(1));
            write_private(&path, text.as_bytes());
            match KnownServers::load(&state) {
                Err(AuthError::Parse {
                    path: at,
                    line: 3,
                    error,
                }) => {
                    assert_eq!(at, path);
                    assert_eq!(error, expected, "{line:?}");
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn record_appends_to_a_private_file() {
        let temp = TempDir::new("record");
        let state = temp.0.clone();
        let path = state.join(KNOWN_SERVERS_FILE);
        KnownServers::record(&state, "127.0.0.1:7440", fp(1)).unwrap();
        assert_eq!(mode(&path), 0o600);
        KnownServers::record(&state, "[::1]:7440", fp(2)).unwrap();
        let known = KnownServers::load(&state).unwrap();
        assert_eq!(known.lookup("127.0.0.1:7440"), Some(fp(1)));
        assert_eq!(known.lookup("[::1]:7440"), Some(fp(2)));

        // A hand edit without a final newline must not swallow the next entry.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("# edited by hand");
        write_private(&path, text.as_bytes());
        KnownServers::record(&state, "host:9", fp(3)).unwrap();
        let known = KnownServers::load(&state).unwrap();
        assert_eq!(known.lookup("host:9"), Some(fp(3)));
        assert_eq!(known.lookup("127.0.0.1:7440"), Some(fp(1)));

        for bad in ["host", "host 1:9", "::1:7440", "a#b:1", "h:1\nx:2"] {
            assert!(
                matches!(
                    KnownServers::record(&state, bad, fp(4)),
                    Err(AuthError::HostPort { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(KnownServers::load(&state).unwrap().servers.len(), 3);
    }

    /// Two identities in their own state dirs, like two machines.
    struct Peers {
        _temp: TempDir,
        client_dir: PathBuf,
        client: Identity,
        server: Identity,
    }

    fn peers(tag: &str) -> Peers {
        let temp = TempDir::new(tag);
        let client_dir = temp.state("client");
        let client = Identity::load_or_create(&client_dir).unwrap();
        let server = Identity::load_or_create(&temp.state("server")).unwrap();
        Peers {
            _temp: temp,
            client_dir,
            client,
            server,
        }
    }

    const HOST_PORT: &str = "127.0.0.1:7440";

    /// Outcome of an in-memory TLS exchange.
    struct Handshake {
        client: Connection,
        server: Connection,
        client_error: Option<rustls::Error>,
        server_error: Option<rustls::Error>,
    }

    impl Handshake {
        fn assert_ok(&self) {
            assert_eq!(self.client_error, None);
            assert_eq!(self.server_error, None);
            assert!(!self.client.is_handshaking() && !self.server.is_handshaking());
        }
    }

    /// Runs a real TLS 1.3 handshake by moving bytes between the two ends until neither has
    /// anything to send, then (if both are up) sends one message each way.
    fn handshake(
        client_config: Arc<rustls::ClientConfig>,
        server_config: Arc<rustls::ServerConfig>,
    ) -> Handshake {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut run = Handshake {
            client: ClientConnection::new(client_config, name).unwrap().into(),
            server: ServerConnection::new(server_config).unwrap().into(),
            client_error: None,
            server_error: None,
        };
        pump(&mut run);
        if run.client_error.is_none() && run.server_error.is_none() {
            run.client.writer().write_all(b"ping").unwrap();
            run.server.writer().write_all(b"pong").unwrap();
            pump(&mut run);
            let mut got = Vec::new();
            let _ = run.server.reader().read_to_end(&mut got);
            assert_eq!(got, b"ping");
            got.clear();
            let _ = run.client.reader().read_to_end(&mut got);
            assert_eq!(got, b"pong");
        }
        run
    }

    fn pump(run: &mut Handshake) {
        for _ in 0..32 {
            let to_server = transfer(&mut run.client, &mut run.server, &mut run.server_error);
            let to_client = transfer(&mut run.server, &mut run.client, &mut run.client_error);
            if !to_server && !to_client {
                return;
            }
        }
        panic!("handshake did not settle");
    }

    /// Moves everything `from` wants to send into `to`; returns whether anything moved.
    /// Once `to` has failed, what it is sent is dropped, as a closed socket would.
    fn transfer(
        from: &mut Connection,
        to: &mut Connection,
        to_error: &mut Option<rustls::Error>,
    ) -> bool {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = &bytes[..];
        while to_error.is_none() && !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            if let Err(error) = to.process_new_packets() {
                *to_error = Some(error);
            }
        }
        !bytes.is_empty()
    }

    fn known_with(dir: &Path, fingerprint: Fingerprint) -> KnownServers {
        KnownServers::record(dir, HOST_PORT, fingerprint).unwrap();
        KnownServers::load(dir).unwrap()
    }

    #[test]
    fn authorized_client_and_known_server_connect() {
        let p = peers("tls-ok");
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let client_config = client_crypto(&p.client, trust.clone()).unwrap();
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let server_config = server_crypto(&p.server, authorized).unwrap();

        let run = handshake(client_config, server_config);
        run.assert_ok();
        assert_eq!(
            trust.outcome(),
            Some(ServerCheck::Known(p.server.fingerprint()))
        );
        assert!(trust.failure().is_none() && trust.accepted_new().is_none());
        assert_eq!(run.client.alpn_protocol(), Some(ALPN));
        assert_eq!(run.server.alpn_protocol(), Some(ALPN));
        assert_eq!(
            run.client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // The cipher both ends settle on is the one `provider` puts first.
        for suite in [
            run.client.negotiated_cipher_suite(),
            run.server.negotiated_cipher_suite(),
        ] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
        let seen_by_server = run.server.peer_certificates().unwrap();
        assert_eq!(
            Fingerprint::of_certificate(&seen_by_server[0]).unwrap(),
            p.client.fingerprint()
        );
        let seen_by_client = run.client.peer_certificates().unwrap();
        assert_eq!(
            Fingerprint::of_certificate(&seen_by_client[0]).unwrap(),
            p.server.fingerprint()
        );
    }

    #[test]
    fn unauthorized_client_is_refused_with_access_denied() {
        let p = peers("tls-unauthorized");
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let client_config = client_crypto(&p.client, trust.clone()).unwrap();
        // Someone else is authorized, not this client.
        let authorized = AuthorizedClients::from_fingerprints([p.server.fingerprint()]);
        let server_config = server_crypto(&p.server, authorized).unwrap();

        let run = handshake(client_config, server_config);
        assert_eq!(
            run.server_error,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        );
        let client_error = run.client_error.expect("client must see the refusal");
        assert!(refused_by_server(&client_error), "{client_error:?}");
        // The client did accept the server: the refusal is about the client alone.
        assert_eq!(
            trust.outcome(),
            Some(ServerCheck::Known(p.server.fingerprint()))
        );

        let message = AuthError::NotAuthorized {
            host_port: HOST_PORT.to_string(),
            client: p.client.fingerprint(),
        }
        .to_string();
        assert!(message.contains("not authorized"), "{message}");

        // Nobody authorized (missing file) refuses the same way.
        let nobody = AuthorizedClients::load(&p.client_dir).unwrap();
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let run = handshake(
            client_crypto(&p.client, trust).unwrap(),
            server_crypto(&p.server, nobody).unwrap(),
        );
        assert!(refused_by_server(run.client_error.as_ref().unwrap()));
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let p = peers("tls-nocert");
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let client_config =
            finish_client_config(client_config_builder(trust).unwrap().with_no_client_auth());
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let run = handshake(client_config, server_crypto(&p.server, authorized).unwrap());
        assert_eq!(
            run.server_error,
            Some(rustls::Error::NoCertificatesPresented)
        );
        assert!(run.client_error.is_some());
    }

    #[test]
    fn unknown_server_needs_accept_new() {
        let p = peers("tls-unknown");
        let known = KnownServers::load(&p.client_dir).unwrap();
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let server_config = server_crypto(&p.server, authorized).unwrap();

        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let run = handshake(
            client_crypto(&p.client, trust.clone()).unwrap(),
            server_config.clone(),
        );
        assert!(matches!(
            run.client_error,
            Some(rustls::Error::InvalidCertificate(CertificateError::Other(
                _
            )))
        ));
        assert_eq!(
            run.server_error,
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateUnknown
            ))
        );
        assert_eq!(
            trust.outcome(),
            Some(ServerCheck::Unknown(p.server.fingerprint()))
        );
        assert_eq!(trust.accepted_new(), None);
        let message = trust.failure().unwrap().to_string();
        assert_eq!(
            message,
            format!(
                "server {HOST_PORT} is not known (fingerprint {}); run again with --accept-new \
                 to trust it, or add it to {}",
                p.server.fingerprint(),
                p.client_dir.join(KNOWN_SERVERS_FILE).display()
            )
        );

        let trust = ServerTrust::new(&known, HOST_PORT, true).unwrap();
        let run = handshake(
            client_crypto(&p.client, trust.clone()).unwrap(),
            server_config.clone(),
        );
        run.assert_ok();
        assert_eq!(trust.accepted_new(), Some(p.server.fingerprint()));
        assert!(trust.failure().is_none());

        // What the caller does next: record, and from then on the server is known.
        KnownServers::record(
            &p.client_dir,
            trust.host_port(),
            trust.accepted_new().unwrap(),
        )
        .unwrap();
        let known = KnownServers::load(&p.client_dir).unwrap();
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        handshake(
            client_crypto(&p.client, trust.clone()).unwrap(),
            server_config,
        )
        .assert_ok();
        assert_eq!(
            trust.outcome(),
            Some(ServerCheck::Known(p.server.fingerprint()))
        );
    }

    #[test]
    fn changed_server_key_is_refused_even_with_accept_new() {
        let p = peers("tls-changed");
        let old = Fingerprint::of_public_key(b"the key this server used to have");
        let known = known_with(&p.client_dir, old);
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let server_config = server_crypto(&p.server, authorized).unwrap();
        for accept_new in [false, true] {
            let trust = ServerTrust::new(&known, HOST_PORT, accept_new).unwrap();
            let run = handshake(
                client_crypto(&p.client, trust.clone()).unwrap(),
                server_config.clone(),
            );
            assert!(run.client_error.is_some() && run.server_error.is_some());
            assert_eq!(
                trust.outcome(),
                Some(ServerCheck::Changed {
                    expected: old,
                    seen: p.server.fingerprint()
                })
            );
            let message = trust.failure().unwrap().to_string();
            let expected = format!(
                "server {HOST_PORT} key CHANGED: expected {old}, got {} — refusing",
                p.server.fingerprint()
            );
            assert!(message.starts_with(&expected), "{message}");
        }
    }

    #[test]
    fn a_key_accepted_on_first_use_binds_the_transfers_other_connections() {
        let p = peers("tls-first-use");
        let mallory = Identity::load_or_create(&p._temp.state("mallory")).unwrap();
        let known = KnownServers::load(&p.client_dir).unwrap();
        let authorized = || AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let trust = ServerTrust::new(&known, HOST_PORT, true).unwrap();
        let config = client_crypto(&p.client, trust.clone()).unwrap();
        // The first connection accepts the server's key; a second connection of the same
        // transfer with the same key is fine.
        for _ in 0..2 {
            handshake(
                config.clone(),
                server_crypto(&p.server, authorized()).unwrap(),
            )
            .assert_ok();
            assert_eq!(trust.accepted_new(), Some(p.server.fingerprint()));
        }
        // Another key on a later connection is a change, even under --accept-new, and
        // stays refused afterwards.
        for _ in 0..2 {
            let run = handshake(
                config.clone(),
                server_crypto(&mallory, authorized()).unwrap(),
            );
            assert!(run.client_error.is_some());
            assert_eq!(
                trust.outcome(),
                Some(ServerCheck::Changed {
                    expected: p.server.fingerprint(),
                    seen: mallory.fingerprint()
                })
            );
        }
    }

    /// A certified key that shows `shown`'s certificate but signs with `signer`'s key.
    fn impostor(shown: &Identity, signer: &Identity) -> Arc<rustls::sign::CertifiedKey> {
        let key = provider()
            .key_provider
            .load_private_key(signer.private_key())
            .unwrap();
        Arc::new(rustls::sign::CertifiedKey::new(
            vec![shown.certificate.clone()],
            key,
        ))
    }

    #[test]
    fn server_must_prove_it_holds_the_known_key() {
        let p = peers("tls-pop-server");
        let mallory = Identity::load_or_create(&p._temp.state("mallory")).unwrap();
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let resolver = rustls::sign::SingleCertAndKey::from(impostor(&p.server, &mallory));
        let server_config = finish_server_config(
            server_config_builder(authorized.into())
                .unwrap()
                .with_cert_resolver(Arc::new(resolver)),
        );
        let run = handshake(
            client_crypto(&p.client, trust.clone()).unwrap(),
            server_config,
        );
        // The fingerprint matched; the signature did not.
        assert_eq!(
            trust.outcome(),
            Some(ServerCheck::Known(p.server.fingerprint()))
        );
        assert_eq!(
            run.client_error,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        );
        assert!(run.server_error.is_some());
    }

    #[test]
    fn client_must_prove_it_holds_the_authorized_key() {
        let p = peers("tls-pop-client");
        let mallory = Identity::load_or_create(&p._temp.state("mallory")).unwrap();
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let resolver = rustls::sign::SingleCertAndKey::from(impostor(&p.client, &mallory));
        let client_config = finish_client_config(
            client_config_builder(trust)
                .unwrap()
                .with_client_cert_resolver(Arc::new(resolver)),
        );
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let run = handshake(client_config, server_crypto(&p.server, authorized).unwrap());
        assert_eq!(
            run.server_error,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        );
        assert!(run.client_error.is_some());
        assert!(!refused_by_server(run.client_error.as_ref().unwrap()));
    }

    /// Events each side of an in-memory QUIC connection reported.
    struct QuicRun {
        client: quinn_proto::Connection,
        server: Option<quinn_proto::Connection>,
        client_events: Vec<quinn_proto::Event>,
        server_events: Vec<quinn_proto::Event>,
    }

    /// Drives a quinn-proto client and server over a lossless in-memory "network" until the
    /// client gives up or both are connected. Simulated time only advances when nothing is
    /// in flight, to the next timer.
    fn quic_connect(
        client_config: quinn_proto::ClientConfig,
        server_config: quinn_proto::ServerConfig,
    ) -> QuicRun {
        use quinn_proto::{DatagramEvent, Endpoint, EndpointConfig, Event};
        use std::net::SocketAddr;
        use std::time::Instant;

        let client_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let server_addr: SocketAddr = HOST_PORT.parse().unwrap();
        let endpoint_config = Arc::new(EndpointConfig::default());
        let mut server_endpoint = Endpoint::new(
            endpoint_config.clone(),
            Some(Arc::new(server_config)),
            false,
            Some([1; 32]),
        );
        let mut client_endpoint = Endpoint::new(endpoint_config, None, false, Some([2; 32]));
        let mut now = Instant::now();
        let (client_handle, client) = client_endpoint
            .connect(now, client_config, server_addr, SERVER_NAME)
            .unwrap();
        let mut run = QuicRun {
            client,
            server: None,
            client_events: Vec::new(),
            server_events: Vec::new(),
        };
        let mut server_handle = None;
        let mut datagram = Vec::new();
        let mut response = Vec::new();
        let connected = |events: &[Event]| events.iter().any(|e| matches!(e, Event::Connected));
        let lost = |events: &[Event]| {
            events
                .iter()
                .any(|e| matches!(e, Event::ConnectionLost { .. }))
        };
        for _ in 0..1000 {
            let mut moved = false;
            datagram.clear();
            while let Some(transmit) = run.client.poll_transmit(now, 1, &mut datagram) {
                moved = true;
                let data = bytes::BytesMut::from(&datagram[..transmit.size]);
                datagram.clear();
                match server_endpoint.handle(now, client_addr, None, None, data, &mut response) {
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        match server_endpoint.accept(incoming, now, &mut response, None) {
                            Ok((handle, connection)) => {
                                server_handle = Some(handle);
                                run.server = Some(connection);
                            }
                            // Refused during the first flight (no common ALPN): the
                            // server's close goes back to the client.
                            Err(e) => {
                                if let Some(t) = e.response {
                                    let data = bytes::BytesMut::from(&response[..t.size]);
                                    let mut ignored = Vec::new();
                                    if let Some(DatagramEvent::ConnectionEvent(_, event)) =
                                        client_endpoint.handle(
                                            now,
                                            server_addr,
                                            None,
                                            None,
                                            data,
                                            &mut ignored,
                                        )
                                    {
                                        run.client.handle_event(event);
                                    }
                                }
                            }
                        }
                        response.clear();
                    }
                    Some(DatagramEvent::ConnectionEvent(_, event)) => {
                        run.server.as_mut().unwrap().handle_event(event)
                    }
                    Some(DatagramEvent::Response(_)) | None => {}
                }
            }
            if let (Some(server), Some(handle)) = (run.server.as_mut(), server_handle) {
                while let Some(transmit) = server.poll_transmit(now, 1, &mut datagram) {
                    moved = true;
                    let data = bytes::BytesMut::from(&datagram[..transmit.size]);
                    datagram.clear();
                    if let Some(DatagramEvent::ConnectionEvent(_, event)) =
                        client_endpoint.handle(now, server_addr, None, None, data, &mut response)
                    {
                        run.client.handle_event(event);
                    }
                }
                while let Some(event) = server.poll_endpoint_events() {
                    if let Some(event) = server_endpoint.handle_event(handle, event) {
                        server.handle_event(event);
                    }
                }
                while let Some(event) = server.poll() {
                    run.server_events.push(event);
                }
            }
            while let Some(event) = run.client.poll_endpoint_events() {
                if let Some(event) = client_endpoint.handle_event(client_handle, event) {
                    run.client.handle_event(event);
                }
            }
            while let Some(event) = run.client.poll() {
                run.client_events.push(event);
            }
            if lost(&run.client_events)
                || (connected(&run.client_events) && connected(&run.server_events) && !moved)
            {
                return run;
            }
            if !moved {
                let next = [
                    run.client.poll_timeout(),
                    run.server.as_mut().and_then(|s| s.poll_timeout()),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(next) = next else { return run };
                now = now.max(next);
                run.client.handle_timeout(now);
                if let Some(server) = run.server.as_mut() {
                    server.handle_timeout(now);
                }
            }
        }
        panic!("QUIC exchange did not settle");
    }

    #[test]
    fn quic_connection_authenticates_both_ends() {
        let p = peers("quic-ok");
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let mut run = quic_connect(
            quic_client_config(&p.client, trust.clone()).unwrap(),
            quic_server_config(&p.server, authorized).unwrap(),
        );
        let connected = |events: &[quinn_proto::Event]| {
            events
                .iter()
                .any(|e| matches!(e, quinn_proto::Event::Connected))
        };
        assert!(connected(&run.client_events), "{:?}", run.client_events);
        assert!(connected(&run.server_events), "{:?}", run.server_events);
        let server = run.server.as_mut().unwrap();
        let client_identity = server.crypto_session().peer_identity().unwrap();
        assert_eq!(
            peer_fingerprint(client_identity.as_ref()),
            Some(p.client.fingerprint())
        );
        let server_identity = run.client.crypto_session().peer_identity().unwrap();
        assert_eq!(
            peer_fingerprint(server_identity.as_ref()),
            Some(p.server.fingerprint())
        );
        let data = run.client.crypto_session().handshake_data().unwrap();
        let data = data
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .unwrap();
        assert_eq!(data.protocol.as_deref(), Some(ALPN));
        assert_eq!(
            trust.outcome(),
            Some(ServerCheck::Known(p.server.fingerprint()))
        );
    }

    /// Why the client's connection was lost; the test fails if it was not.
    fn lost_reason(run: &QuicRun) -> &quinn_proto::ConnectionError {
        run.client_events
            .iter()
            .find_map(|e| match e {
                quinn_proto::Event::ConnectionLost { reason } => Some(reason),
                _ => None,
            })
            .unwrap_or_else(|| panic!("client not refused: {:?}", run.client_events))
    }

    #[test]
    fn quic_refusal_is_recognised_by_the_client() {
        let p = peers("quic-refused");
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        let run = quic_connect(
            quic_client_config(&p.client, trust).unwrap(),
            quic_server_config(&p.server, AuthorizedClients::default()).unwrap(),
        );
        let reason = lost_reason(&run);
        assert_eq!(quic_why(reason), Why::Refused, "{reason:?}");
    }

    #[test]
    fn another_protocol_version_is_recognised_by_the_client() {
        let p = peers("quic-version");
        let known = known_with(&p.client_dir, p.server.fingerprint());
        let trust = ServerTrust::new(&known, HOST_PORT, false).unwrap();
        // A client of protocol version 3, as an older release would be.
        let mut old = (*client_crypto(&p.client, trust).unwrap()).clone();
        old.alpn_protocols = vec![b"tpc-xfer/3".to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(old)).unwrap();
        let authorized = AuthorizedClients::from_fingerprints([p.client.fingerprint()]);
        let run = quic_connect(
            quinn_proto::ClientConfig::new(Arc::new(crypto)),
            quic_server_config(&p.server, authorized).unwrap(),
        );
        let reason = lost_reason(&run);
        assert_eq!(quic_why(reason), Why::Version, "{reason:?}");
    }
}
