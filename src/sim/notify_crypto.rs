//! The cryptography of change notifications with resource data, as Graph documents it
//! ("Set up change notifications that include resource data"):
//!
//! - `encryptionCertificate`: base64 DER X.509 with an RSA key; its SHA-1 thumbprint is echoed
//!   as `encryptionCertificateThumbprint`.
//! - `encryptedContent`: a random 32-byte AES key; `data` = base64 AES-256-CBC, PKCS7, IV = the
//!   key's first 16 bytes; `dataKey` = base64 RSA-OAEP (SHA-1, MGF1-SHA-1) of the key under the
//!   certificate's public key; `dataSignature` = base64 HMAC-SHA256(key, decoded `data`).
//! - `validationTokens`: RS256 JWTs from the simulator's signing key (standing in for
//!   Microsoft's), issuer `https://sts.windows.net/{tenant}/`, audience the subscribing app,
//!   `azp`/`appid` the Graph change-notification publisher.
//!
//! The simulator keeps its own implementation so that it never depends on the archiver's.

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::RngCore;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// App id of "Microsoft Graph Change Tracking", the publisher named in validation tokens.
pub(crate) const PUBLISHER_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
/// Lifetime of a validation token.
const TOKEN_TTL_SECS: i64 = 3600;
/// Graph refuses encryption keys shorter than this.
const MIN_RSA_BITS: usize = 2048;
const SIGNING_KEY_BITS: usize = 2048;

/// The `encryptedContent` of one notification item.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EncryptedContent {
    pub data: String,
    #[serde(rename = "dataSignature")]
    pub data_signature: String,
    #[serde(rename = "dataKey")]
    pub data_key: String,
    #[serde(rename = "encryptionCertificateId")]
    pub certificate_id: String,
    #[serde(rename = "encryptionCertificateThumbprint")]
    pub certificate_thumbprint: String,
}

/// A subscription's encryption certificate, parsed.
#[derive(Clone)]
pub struct EncryptionCert {
    pub id: String,
    /// As the client sent it, echoed in the subscription.
    pub base64: String,
    /// Upper-case hex SHA-1 of the DER, as Graph prints thumbprints.
    pub thumbprint: String,
    key: RsaPublicKey,
}

impl std::fmt::Debug for EncryptionCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionCert")
            .field("id", &self.id)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl EncryptionCert {
    /// Parses `encryptionCertificate`; the error is the reason, for a 400.
    pub fn parse(base64: &str, id: &str) -> Result<EncryptionCert, String> {
        let der = STANDARD
            .decode(base64.trim())
            .map_err(|_| "encryptionCertificate is not valid base64".to_owned())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| {
            "encryptionCertificate is not a DER-encoded X.509 certificate".to_owned()
        })?;
        // The SPKI bit string of an RSA key is the PKCS#1 RSAPublicKey DER.
        let key = RsaPublicKey::from_pkcs1_der(&cert.public_key().subject_public_key.data)
            .map_err(|_| "encryptionCertificate must carry an RSA public key".to_owned())?;
        if key.size() * 8 < MIN_RSA_BITS {
            return Err(format!(
                "encryptionCertificate key must be at least {MIN_RSA_BITS} bits"
            ));
        }
        Ok(EncryptionCert {
            id: id.to_owned(),
            base64: base64.to_owned(),
            thumbprint: hex::encode_upper(Sha1::digest(&der)),
            key,
        })
    }

    /// Encrypts one resource as Graph does.
    pub fn encrypt(&self, plain: &[u8]) -> Result<EncryptedContent, String> {
        let mut rng = rand::thread_rng();
        let mut sym = [0u8; 32];
        rng.fill_bytes(&mut sym);
        let data = cbc::Encryptor::<aes::Aes256>::new_from_slices(&sym, &sym[..16])
            .map_err(|e| format!("AES key setup: {e}"))?
            .encrypt_padded_vec_mut::<Pkcs7>(plain);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&sym)
            .map_err(|e| format!("HMAC key setup: {e}"))?;
        mac.update(&data);
        let wrapped = self
            .key
            .encrypt(&mut rng, Oaep::new::<Sha1>(), &sym)
            .map_err(|e| format!("RSA-OAEP: {e}"))?;
        Ok(EncryptedContent {
            data: STANDARD.encode(&data),
            data_signature: STANDARD.encode(mac.finalize().into_bytes()),
            data_key: STANDARD.encode(wrapped),
            certificate_id: self.id.clone(),
            certificate_thumbprint: self.thumbprint.clone(),
        })
    }
}

/// The key validation tokens are signed with.
pub(crate) struct SigningKey {
    encoding: EncodingKey,
    /// SPKI PEM (`PUBLIC KEY`) for clients' validators.
    pub public_pem: String,
    /// base64url SHA-1 of the public key DER, as `kid` and `x5t`.
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Claims of a validation token, in the order and shape of Graph's.
#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    aio: String,
    appid: &'static str,
    appidacr: &'static str,
    azp: &'static str,
    idp: String,
    oid: &'a str,
    sub: &'a str,
    tid: &'a str,
    uti: String,
    ver: &'static str,
}

impl SigningKey {
    /// Reads a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM. The error never
    /// contains key material.
    pub(crate) fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| {
                "notifications.signing_key_pem is not an RSA private key in PKCS#8 or PKCS#1 PEM"
                    .to_owned()
            })?;
        SigningKey::from_key(&key)
    }

    /// A fresh key (slow: run it off the async threads).
    pub(crate) fn generate() -> Result<SigningKey, String> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), SIGNING_KEY_BITS)
            .map_err(|e| format!("cannot generate the notification signing key: {e}"))?;
        SigningKey::from_key(&key)
    }

    fn from_key(key: &RsaPrivateKey) -> Result<SigningKey, String> {
        let bad = |what: &str| format!("notification signing key: cannot encode {what}");
        let private = key
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|_| bad("the private key"))?;
        let encoding =
            EncodingKey::from_rsa_pem(private.as_bytes()).map_err(|_| bad("the private key"))?;
        let public = key.to_public_key();
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| bad("the public key"))?;
        let der = public
            .to_public_key_der()
            .map_err(|_| bad("the public key"))?;
        Ok(SigningKey {
            encoding,
            public_pem,
            kid: URL_SAFE_NO_PAD.encode(Sha1::digest(der.as_bytes())),
        })
    }

    /// One validation token for `app_id` in `tenant_id`; `publisher_oid` is the service
    /// principal of the publisher in the tenant.
    pub(crate) fn validation_token(
        &self,
        tenant_id: &str,
        app_id: &str,
        publisher_oid: &str,
    ) -> Result<String, String> {
        let now = chrono::Utc::now().timestamp();
        let iss = format!("https://sts.windows.net/{tenant_id}/");
        let claims = Claims {
            aud: app_id,
            idp: iss.clone(),
            iss,
            iat: now,
            nbf: now,
            exp: now + TOKEN_TTL_SECS,
            aio: random_b64(48),
            appid: PUBLISHER_APP_ID,
            appidacr: "2",
            azp: PUBLISHER_APP_ID,
            oid: publisher_oid,
            sub: publisher_oid,
            tid: tenant_id,
            uti: random_b64(16),
            ver: "1.0",
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.x5t = Some(self.kid.clone());
        encode(&header, &claims, &self.encoding).map_err(|e| format!("signing: {e}"))
    }
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
