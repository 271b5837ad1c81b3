//! Decryption of resource data in change notifications (Graph "notifications with resource
//! data"): `dataKey` is a 32-byte AES key encrypted with RSA-OAEP (SHA-1, MGF1-SHA-1) under our
//! certificate's public key; `dataSignature` is base64(HMAC-SHA256(key, base64decode(data)));
//! `data` is AES-256-CBC with PKCS7 padding and IV = the key's first 16 bytes.
//!
//! The HMAC is checked (in constant time) before anything is decrypted, so a forged or
//! tampered payload never reaches the block cipher's padding check.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rsa::{Oaep, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Largest `data` accepted, base64 characters (an aiInteraction is a few KiB; a body limit
/// bounds it first anyway).
const MAX_DATA_CHARS: usize = 4 * 1024 * 1024;

/// `encryptedContent` of a notification item.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct EncryptedContent {
    pub data: String,
    #[serde(rename = "dataSignature")]
    pub data_signature: String,
    #[serde(rename = "dataKey")]
    pub data_key: String,
    #[serde(rename = "encryptionCertificateId", default)]
    pub certificate_id: Option<String>,
    #[serde(rename = "encryptionCertificateThumbprint", default)]
    pub certificate_thumbprint: Option<String>,
}

/// Why resource data could not be decrypted. Never carries key material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("encryptedContent.{field} is not valid base64")]
    Base64 { field: &'static str },
    #[error("encryptedContent.data is larger than {MAX_DATA_CHARS} characters")]
    TooLarge,
    #[error(
        "encryptedContent.dataKey cannot be decrypted with the private key of certificate \
         '{certificate_id}' (wrong certificate, or the key was not encrypted with RSA-OAEP SHA-1)"
    )]
    DataKey { certificate_id: String },
    #[error("the decrypted data key is {0} bytes; AES-256 needs 32")]
    KeyLength(usize),
    #[error("encryptedContent.dataSignature does not match the data (tampered or forged)")]
    Signature,
    #[error("encryptedContent.data does not decrypt (bad length or padding)")]
    Cipher,
}

/// Checks the signature and decrypts `content` with `key`; returns the plaintext bytes.
pub fn decrypt(
    content: &EncryptedContent,
    key: &RsaPrivateKey,
    certificate_id: &str,
) -> Result<Vec<u8>, CryptoError> {
    if content.data.len() > MAX_DATA_CHARS {
        return Err(CryptoError::TooLarge);
    }
    let data = b64(&content.data, "data")?;
    let signature = b64(&content.data_signature, "dataSignature")?;
    let wrapped = b64(&content.data_key, "dataKey")?;
    let sym = key
        .decrypt(Oaep::new::<sha1::Sha1>(), &wrapped)
        .map_err(|_| CryptoError::DataKey {
            certificate_id: certificate_id.to_owned(),
        })?;
    if sym.len() != 32 {
        return Err(CryptoError::KeyLength(sym.len()));
    }
    verify_signature(&sym, &data, &signature)?;
    let iv = &sym[..16];
    Aes256CbcDec::new_from_slices(&sym, iv)
        .map_err(|_| CryptoError::KeyLength(sym.len()))?
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .map_err(|_| CryptoError::Cipher)
}

fn verify_signature(key: &[u8], data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| CryptoError::Signature)?;
    mac.update(data);
    // verify_slice compares in constant time.
    mac.verify_slice(signature)
        .map_err(|_| CryptoError::Signature)
}

fn b64(s: &str, field: &'static str) -> Result<Vec<u8>, CryptoError> {
    STANDARD
        .decode(s.trim())
        .map_err(|_| CryptoError::Base64 { field })
}

/// Encrypts `plain` the way Graph does. Used by tests; the simulator has its own copy so that
/// it stays independent of the archiver's code.
#[cfg(test)]
pub(crate) fn encrypt_for_test(
    plain: &[u8],
    public: &rsa::RsaPublicKey,
    cert_id: &str,
) -> EncryptedContent {
    use aes::cipher::BlockEncryptMut;
    use rand::RngCore;
    let mut sym = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut sym);
    let data = cbc::Encryptor::<aes::Aes256>::new_from_slices(&sym, &sym[..16])
        .expect("32-byte key, 16-byte iv")
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&sym).expect("any key length");
    mac.update(&data);
    let wrapped = public
        .encrypt(&mut rand::thread_rng(), Oaep::new::<sha1::Sha1>(), &sym)
        .expect("32 bytes fit a 2048-bit OAEP block");
    EncryptedContent {
        data: STANDARD.encode(&data),
        data_signature: STANDARD.encode(mac.finalize().into_bytes()),
        data_key: STANDARD.encode(wrapped),
        certificate_id: Some(cert_id.to_owned()),
        certificate_thumbprint: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// One 2048-bit key for the whole test binary: generating keys is slow.
    pub(crate) fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generate a test RSA key")
        })
    }

    fn other_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generate a test RSA key")
        })
    }

    const PLAIN: &[u8] =
        br#"{"id":"1731701801008","etag":"1731701801008","body":{"content":"hi"}}"#;

    #[test]
    fn round_trip_gives_the_exact_bytes() {
        let key = test_key();
        let enc = encrypt_for_test(PLAIN, &key.to_public_key(), "c1");
        assert_eq!(decrypt(&enc, key, "c1").unwrap(), PLAIN);
    }

    #[test]
    fn tampered_ciphertext_fails_the_signature_before_decryption() {
        let key = test_key();
        let mut enc = encrypt_for_test(PLAIN, &key.to_public_key(), "c1");
        let mut raw = STANDARD.decode(&enc.data).unwrap();
        raw[3] ^= 1;
        enc.data = STANDARD.encode(raw);
        assert_eq!(decrypt(&enc, key, "c1"), Err(CryptoError::Signature));
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let key = test_key();
        let mut enc = encrypt_for_test(PLAIN, &key.to_public_key(), "c1");
        enc.data_signature = STANDARD.encode([0u8; 32]);
        assert_eq!(decrypt(&enc, key, "c1"), Err(CryptoError::Signature));
    }

    #[test]
    fn a_key_for_another_certificate_is_refused_without_leaking_it() {
        let enc = encrypt_for_test(PLAIN, &other_key().to_public_key(), "c2");
        let err = decrypt(&enc, test_key(), "c1").unwrap_err();
        assert!(matches!(err, CryptoError::DataKey { .. }));
        assert!(!err.to_string().contains(&enc.data_key));
    }

    #[test]
    fn bad_base64_names_the_field() {
        let key = test_key();
        let mut enc = encrypt_for_test(PLAIN, &key.to_public_key(), "c1");
        enc.data_key = "***".into();
        assert_eq!(
            decrypt(&enc, key, "c1"),
            Err(CryptoError::Base64 { field: "dataKey" })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Arbitrary content never panics and never decrypts to anything.
        #[test]
        fn arbitrary_content_never_panics(data in ".{0,200}", sig in ".{0,64}", k in ".{0,400}") {
            let enc = EncryptedContent {
                data, data_signature: sig, data_key: k,
                certificate_id: None, certificate_thumbprint: None,
            };
            prop_assert!(decrypt(&enc, test_key(), "c1").is_err());
        }

        /// Flipping any bit of a genuine ciphertext is caught.
        #[test]
        fn any_bit_flip_is_caught(pos in 0usize..96, bit in 0u8..8) {
            let key = test_key();
            let mut enc = encrypt_for_test(PLAIN, &key.to_public_key(), "c1");
            let mut raw = STANDARD.decode(&enc.data).unwrap();
            let i = pos % raw.len();
            raw[i] ^= 1 << bit;
            enc.data = STANDARD.encode(raw);
            prop_assert_eq!(decrypt(&enc, key, "c1"), Err(CryptoError::Signature));
        }
    }
}
