//! SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) as MongoDB speaks them: stored
//! credentials, and the server side of a `saslStart`/`saslContinue` conversation.
//!
//! MongoDB's variations, from the drivers' auth specification: SCRAM-SHA-1 hashes the
//! password as `HEX(MD5(user + ":mongo:" + password))` before salting; SCRAM-SHA-256 applies
//! SASLprep to it. Credentials are stored salted and iterated (`storedKey`, `serverKey`),
//! never the password. A conversation for a user that does not exist runs just like one
//! for a user that does, with a salt derived from the name, and fails at the same step with
//! the same error, so nobody can tell the two apart.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bson::{Document, doc};
use errors::{ErrorCode, MongoError, Result};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use rand::RngCore;
use sha1::{Digest, Sha1};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The fewest iterations a credential may have (the drivers' specification).
pub const MIN_ITERATIONS: u32 = 4096;
/// MongoDB's `scramIterationCount` default.
pub const DEFAULT_SHA1_ITERATIONS: u32 = 10_000;
/// MongoDB's `scramSHA256IterationCount` default.
pub const DEFAULT_SHA256_ITERATIONS: u32 = 15_000;

/// A SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Sha1,
    Sha256,
}

impl Mechanism {
    /// Both, in the order MongoDB lists them.
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha1, Mechanism::Sha256];

    /// The mechanism's name (`SCRAM-SHA-1`, `SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha1 => "SCRAM-SHA-1",
            Mechanism::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism a name stands for.
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-1" => Some(Mechanism::Sha1),
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            _ => None,
        }
    }

    /// Salt length, as MongoDB generates them (the hash's length less four).
    fn salt_len(self) -> usize {
        match self {
            Mechanism::Sha1 => 16,
            Mechanism::Sha256 => 28,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => Sha1::digest(data).to_vec(),
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => {
                let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(key)
                    .expect("HMAC takes any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mechanism::Sha256 => {
                let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
                    .expect("HMAC takes any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => {
                let mut out = vec![0; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
            Mechanism::Sha256 => {
                let mut out = vec![0; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
        }
    }

    /// The password as this mechanism salts it: for SCRAM-SHA-1 MongoDB's digest of the
    /// user name and password, for SCRAM-SHA-256 the password after SASLprep.
    ///
    /// # Errors
    /// BadValue for a password SASLprep refuses (prohibited characters).
    pub fn prepare_password(self, user: &str, password: &str) -> Result<String> {
        match self {
            Mechanism::Sha1 => {
                let digest = Md5::digest(format!("{user}:mongo:{password}").as_bytes());
                Ok(hex_lower(&digest))
            }
            Mechanism::Sha256 => stringprep::saslprep(password)
                .map(|p| p.into_owned())
                .map_err(|_| MongoError::bad_value("Error preparing the password with SASLprep")),
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 0x0F)] as char);
    }
    s
}

/// A stored credential: `{iterationCount, salt, storedKey, serverKey}`, the last three in
/// base64, as in MongoDB's `system.users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// A credential for `password` with a fresh random salt.
    ///
    /// # Errors
    /// As [`Mechanism::prepare_password`].
    pub fn new(mech: Mechanism, user: &str, password: &str, iterations: u32) -> Result<Credential> {
        let mut salt = vec![0; mech.salt_len()];
        rand::rng().fill_bytes(&mut salt);
        Credential::with_salt(mech, user, password, iterations, salt)
    }

    /// A SCRAM-SHA-1 credential from a password already digested as MongoDB's SCRAM-SHA-1
    /// digests it (`createUser` with `digestPassword: false`).
    pub fn from_digest(digest: &str, iterations: u32) -> Credential {
        let mut salt = vec![0; Mechanism::Sha1.salt_len()];
        rand::rng().fill_bytes(&mut salt);
        let iterations = iterations.max(MIN_ITERATIONS);
        let m = Mechanism::Sha1;
        let salted = m.salted_password(digest, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        Credential {
            iterations,
            stored_key: m.hash(&client_key),
            server_key: m.hmac(&salted, b"Server Key"),
            salt,
        }
    }

    fn with_salt(
        mech: Mechanism,
        user: &str,
        password: &str,
        iterations: u32,
        salt: Vec<u8>,
    ) -> Result<Credential> {
        let iterations = iterations.max(MIN_ITERATIONS);
        let prepared = mech.prepare_password(user, password)?;
        let salted = mech.salted_password(&prepared, &salt, iterations);
        let client_key = mech.hmac(&salted, b"Client Key");
        Ok(Credential {
            iterations,
            stored_key: mech.hash(&client_key),
            server_key: mech.hmac(&salted, b"Server Key"),
            salt,
        })
    }

    /// The credential as `system.users` stores it.
    pub fn to_document(&self) -> Document {
        doc! {
            "iterationCount": i32::try_from(self.iterations).unwrap_or(i32::MAX),
            "salt": B64.encode(&self.salt),
            "storedKey": B64.encode(&self.stored_key),
            "serverKey": B64.encode(&self.server_key),
        }
    }

    /// Reads a stored credential.
    ///
    /// # Errors
    /// A malformed record (InternalError: `system.users` is written only by the server).
    pub fn from_document(d: &Document) -> Result<Credential> {
        let bad = || MongoError::internal("malformed SCRAM credential in system.users");
        let bytes = |k: &str| {
            d.get_str(k)
                .ok()
                .and_then(|s| B64.decode(s).ok())
                .ok_or_else(bad)
        };
        let iterations = d
            .get_i32("iterationCount")
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)?;
        Ok(Credential {
            iterations,
            salt: bytes("salt")?,
            stored_key: bytes("storedKey")?,
            server_key: bytes("serverKey")?,
        })
    }
}

/// The error every failed authentication gets, whatever failed: MongoDB's.
pub fn auth_failed() -> MongoError {
    MongoError::new(ErrorCode::AuthenticationFailed, "Authentication failed.")
}

/// A conversation after the server's first message, waiting for the client's final one.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub mechanism: Mechanism,
    /// The user name as the client gave it.
    pub user: String,
    /// The credential (a stand-in for a user that does not exist).
    credential: Credential,
    /// Whether the user exists with this mechanism.
    genuine: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// What a conversation step answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The server's final message: the client is authenticated. With `skipEmptyExchange`
    /// the conversation is done; otherwise the client sends one more, empty, message.
    Verified(Vec<u8>),
}

/// Parses a SCRAM attribute list (`a=1,b=2`) into its (attribute, value) pairs.
fn attributes(msg: &str) -> Vec<(char, &str)> {
    msg.split(',')
        .filter_map(|part| {
            let mut chars = part.chars();
            let a = chars.next()?;
            let rest = chars.as_str();
            rest.strip_prefix('=').map(|v| (a, v))
        })
        .collect()
}

/// SCRAM's `saslname` escaping of `=` and `,` undone.
fn unescape_name(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "3D" => '=',
            "2C" => ',',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl Conversation {
    /// Starts a conversation from the client's first message. `lookup` gives the stored
    /// credential of the named user for this mechanism (`None` when the user does not
    /// exist, or has no credential for it). Returns the conversation and the server's first
    /// message.
    ///
    /// # Errors
    /// BadValue for a message that is not SCRAM; never because of who the user is.
    pub fn start(
        mechanism: Mechanism,
        payload: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
        server_secret: &[u8],
    ) -> Result<(Conversation, Vec<u8>)> {
        let bad = |what: &str| {
            MongoError::bad_value(format!("Invalid SCRAM client-first message: {what}"))
        };
        let msg = std::str::from_utf8(payload).map_err(|_| bad("not UTF-8"))?;
        // gs2-header: no channel binding ("n,,"), or "y,," (supported by the client, not
        // used); then the bare message.
        let bare = msg
            .strip_prefix("n,,")
            .or_else(|| msg.strip_prefix("y,,"))
            .ok_or_else(|| bad("channel binding is not supported"))?;
        let attrs = attributes(bare);
        let user = attrs
            .iter()
            .find(|(a, _)| *a == 'n')
            .and_then(|(_, v)| unescape_name(v))
            .ok_or_else(|| bad("no user name"))?;
        let client_nonce = attrs
            .iter()
            .find(|(a, _)| *a == 'r')
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad("no nonce"))?;
        if attrs.iter().any(|(a, _)| *a == 'm') {
            return Err(bad("extensions are not supported"));
        }
        let (credential, genuine) = match lookup(&user) {
            Some(c) => (c, true),
            None => (stand_in(mechanism, &user, server_secret), false),
        };
        let mut server_nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let c = Conversation {
            mechanism,
            user,
            credential,
            genuine,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((c, server_first.into_bytes()))
    }

    /// Checks the client's final message (its proof).
    ///
    /// # Errors
    /// AuthenticationFailed for a wrong proof, for a user that does not exist, and for a
    /// malformed message alike.
    pub fn finish(&self, payload: &[u8]) -> Result<Step> {
        let msg = std::str::from_utf8(payload).map_err(|_| auth_failed())?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or_else(auth_failed)?;
        let attrs = attributes(without_proof);
        let nonce = attrs.iter().find(|(a, _)| *a == 'r').map(|(_, v)| *v);
        let binding = attrs.iter().find(|(a, _)| *a == 'c').map(|(_, v)| *v);
        // The channel binding must repeat the gs2 header ("n,," or "y,,").
        if nonce != Some(self.nonce.as_str()) || !matches!(binding, Some("biws" | "eSws")) {
            return Err(auth_failed());
        }
        let proof = B64.decode(proof).map_err(|_| auth_failed())?;
        let m = self.mechanism;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = m.hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(auth_failed());
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let matches: bool = m
            .hash(&client_key)
            .ct_eq(&self.credential.stored_key)
            .into();
        if !(matches && self.genuine) {
            return Err(auth_failed());
        }
        let server_signature = m.hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(Step::Verified(
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// The client's side of a SCRAM conversation (a member authenticating to another with
/// the key file, as `__system`).
pub struct Client {
    mechanism: Mechanism,
    /// The user name as sent (SCRAM-escaped) and as given.
    user: String,
    raw_user: String,
    client_nonce: String,
    /// The server signature expected in its final message, once the proof is sent.
    expect: Option<Vec<u8>>,
}

impl Client {
    /// Starts a conversation as `user`: the client and its first message.
    pub fn start(mechanism: Mechanism, user: &str) -> (Client, Vec<u8>) {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let client_nonce = B64.encode(nonce);
        let name = user.replace('=', "=3D").replace(',', "=2C");
        let first = format!("n,,n={name},r={client_nonce}");
        (
            Client {
                mechanism,
                user: name,
                raw_user: user.to_string(),
                client_nonce,
                expect: None,
            },
            first.into_bytes(),
        )
    }

    /// Answers the server's first message with the proof of `password`.
    ///
    /// # Errors
    /// AuthenticationFailed for a server message that is not SCRAM's, or that does not
    /// continue this client's nonce; BadValue for a password SASLprep refuses.
    pub fn respond(&mut self, server_first: &[u8], password: &str) -> Result<Vec<u8>> {
        let m = self.mechanism;
        let sf = std::str::from_utf8(server_first).map_err(|_| auth_failed())?;
        let attrs = attributes(sf);
        let get = |c| attrs.iter().find(|(a, _)| *a == c).map(|(_, v)| *v);
        let nonce = get('r')
            .filter(|n| n.starts_with(&self.client_nonce) && n.len() > self.client_nonce.len())
            .ok_or_else(auth_failed)?;
        let salt = get('s')
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(auth_failed)?;
        let iterations: u32 = get('i')
            .and_then(|i| i.parse().ok())
            .filter(|&i| i >= MIN_ITERATIONS)
            .ok_or_else(auth_failed)?;
        let prepared = m.prepare_password(&self.raw_user, password)?;
        let salted = m.salted_password(&prepared, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "n={},r={},{sf},{without_proof}",
            self.user, self.client_nonce
        );
        let sig = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = m.hmac(&salted, b"Server Key");
        self.expect = Some(m.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: that it knew the password too.
    ///
    /// # Errors
    /// AuthenticationFailed when its signature is not the one expected.
    pub fn verify(&self, server_final: &[u8]) -> Result<()> {
        let got = std::str::from_utf8(server_final)
            .ok()
            .and_then(|s| s.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok());
        match (&self.expect, got) {
            (Some(e), Some(g)) if bool::from(e.ct_eq(&g)) => Ok(()),
            _ => Err(auth_failed()),
        }
    }
}

/// The credential a user that does not exist gets, so that its conversation looks like any
/// other: the salt is derived from the name and a secret of this server, so a repeated
/// attempt sees the same salt, as it would for a real user.
fn stand_in(mech: Mechanism, user: &str, server_secret: &[u8]) -> Credential {
    let mut salt = mech.hmac(server_secret, user.as_bytes());
    salt.truncate(mech.salt_len());
    let mut stored_key = vec![0; salt.len() + 4];
    rand::rng().fill_bytes(&mut stored_key);
    Credential {
        iterations: match mech {
            Mechanism::Sha1 => DEFAULT_SHA1_ITERATIONS,
            Mechanism::Sha256 => DEFAULT_SHA256_ITERATIONS,
        },
        salt,
        server_key: stored_key.clone(),
        stored_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side drives the server.
    fn client(mech: Mechanism, user: &str, password: &str, server: &Credential) -> bool {
        let secret = b"secret";
        let (mut c, first) = Client::start(mech, user);
        let lookup = |_: &str| Some(server.clone());
        let (conv, server_first) = Conversation::start(mech, &first, lookup, secret).unwrap();
        let fin = c.respond(&server_first, password).unwrap();
        match conv.finish(&fin) {
            Ok(Step::Verified(v)) => {
                c.verify(&v).unwrap();
                assert!(c.verify(b"v=AAAA").is_err());
                true
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::AuthenticationFailed as i32);
                false
            }
        }
    }

    #[test]
    fn right_password_passes_and_wrong_fails() {
        for mech in Mechanism::ALL {
            let cred = Credential::new(mech, "alice", "pencil", 4096).unwrap();
            assert!(client(mech, "alice", "pencil", &cred));
            assert!(!client(mech, "alice", "pen", &cred));
        }
    }

    /// RFC 7677's test vector, with the password as MongoDB takes it (SASLprep only).
    #[test]
    fn sha256_matches_rfc_7677() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = Credential::with_salt(Mechanism::Sha256, "user", "pencil", 4096, salt).unwrap();
        let salted = Mechanism::Sha256.salted_password("pencil", &c.salt, 4096);
        let server_key = Mechanism::Sha256.hmac(&salted, b"Server Key");
        assert_eq!(c.server_key, server_key);
        // ServerSignature of the RFC's exchange.
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = Mechanism::Sha256.hmac(&server_key, auth.as_bytes());
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    /// The drivers' specification: SCRAM-SHA-1 salts MongoDB's digest of user and password.
    #[test]
    fn sha1_digests_user_and_password() {
        assert_eq!(
            Mechanism::Sha1.prepare_password("user", "pencil").unwrap(),
            "1c33006ec1ffd90f9cadcbcc0e118200"
        );
    }

    /// Users "IX" and "\u{2168}" (Roman numeral nine) of the specification: SASLprep maps
    /// the numeral to "IX", so both spellings of the password give the same credential.
    #[test]
    fn saslprep_normalises_passwords() {
        let m = Mechanism::Sha256;
        assert_eq!(m.prepare_password("", "\u{2168}").unwrap(), "IX");
        assert_eq!(m.prepare_password("", "I\u{00AD}X").unwrap(), "IX");
        let cred = Credential::new(m, "\u{2168}", "\u{2163}", 4096).unwrap();
        assert!(client(m, "\u{2168}", "IV", &cred));
        assert!(client(m, "\u{2168}", "\u{2163}", &cred));
    }

    /// A user that does not exist gets a conversation like any other and the same error at
    /// the same step; the salt it sees is the same each time.
    #[test]
    fn unknown_users_look_like_known_ones() {
        let first = b"n,,n=nobody,r=abcdefghijkl";
        let (c1, s1) = Conversation::start(Mechanism::Sha256, first, |_| None, b"k").unwrap();
        let (_, s2) = Conversation::start(Mechanism::Sha256, first, |_| None, b"k").unwrap();
        let salt = |s: &[u8]| {
            let s = String::from_utf8(s.to_vec()).unwrap();
            attributes(&s)
                .iter()
                .find(|(a, _)| *a == 's')
                .unwrap()
                .1
                .to_string()
        };
        assert_eq!(salt(&s1), salt(&s2));
        assert_eq!(B64.decode(salt(&s1)).unwrap().len(), 28);
        let fin = format!("c=biws,r={},p={}", c1.nonce, B64.encode([0u8; 32]));
        let e = c1.finish(fin.as_bytes()).unwrap_err();
        assert_eq!(e.message, "Authentication failed.");
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"n,,",
            b"p=tls-unique,,n=a,r=b",
            b"n,,n=a",
            b"\xff",
        ] {
            assert!(Conversation::start(Mechanism::Sha1, bad, |_| None, b"k").is_err());
        }
        assert_eq!(unescape_name("a=3Db=2Cc").as_deref(), Some("a=b,c"));
        assert_eq!(unescape_name("a=4"), None);
        let cred = Credential::new(Mechanism::Sha1, "u", "p", 4096).unwrap();
        let (c, _) =
            Conversation::start(Mechanism::Sha1, b"n,,n=u,r=xyz", |_| Some(cred), b"k").unwrap();
        for bad in ["", "c=biws", "c=biws,r=wrong,p=AAAA", "c=biws,r=x,p=%%%"] {
            assert!(c.finish(bad.as_bytes()).is_err());
        }
    }

    #[test]
    fn credentials_round_trip_and_keep_the_minimum_iterations() {
        let c = Credential::new(Mechanism::Sha256, "u", "p", 10).unwrap();
        assert_eq!(c.iterations, MIN_ITERATIONS);
        assert_eq!(Credential::from_document(&c.to_document()).unwrap(), c);
    }
}
