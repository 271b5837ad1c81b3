//! The encryption certificate of change notifications with resource data: Graph encrypts each
//! notification's data key with this certificate's public key; the archiver decrypts it with
//! the private key. `m365-archiver cert new` makes a key pair and a self-signed certificate
//! (Graph does not check the chain: any RSA certificate works); configuration loads and checks
//! them (`notifications.certificate`, `notifications.private_key`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Datelike, Duration as ChronoDuration, Utc};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Key size of `cert new` (Graph's examples and the simulator use 2048-bit RSA).
const KEY_BITS: usize = 2048;
/// Longest validity `cert new` accepts (ten years).
pub const MAX_DAYS: u32 = 3650;
pub const CERT_FILE: &str = "certificate.pem";
pub const KEY_FILE: &str = "private-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a PEM X.509 certificate: {0}")]
    Certificate(String),
    #[error("the certificate's key is not RSA (Graph encrypts data keys with RSA-OAEP)")]
    NotRsa,
    #[error("not a PEM RSA private key (PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\")")]
    PrivateKey,
    #[error("the private key does not belong to the certificate")]
    Mismatch,
    #[error("the certificate expired on {0}; make a new one with `m365-archiver cert new`")]
    Expired(DateTime<Utc>),
    #[error("cannot generate the key pair or certificate: {0}")]
    Generate(String),
    #[error("{path} already exists; refusing to overwrite it (choose another --out directory)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded encryption certificate.
#[derive(Clone)]
pub struct EncryptionCertificate {
    pub der: Vec<u8>,
    pub public_key: RsaPublicKey,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl std::fmt::Debug for EncryptionCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionCertificate")
            .field("sha256", &self.thumbprint_sha256())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl EncryptionCertificate {
    /// Parses the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let bad = |e: String| CertError::Certificate(e);
        let (_, block) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let cert = block.parse_x509().map_err(|e| bad(e.to_string()))?;
        let public_key = RsaPublicKey::from_public_key_der(cert.public_key().raw)
            .map_err(|_| CertError::NotRsa)?;
        let time = |t: x509_parser::time::ASN1Time| {
            DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        Ok(EncryptionCertificate {
            der: block.contents.clone(),
            public_key,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }

    /// `encryptionCertificate` of a subscription: base64 of the DER certificate.
    pub fn base64(&self) -> String {
        STANDARD.encode(&self.der)
    }

    pub fn thumbprint_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// The private key belongs to this certificate.
    pub fn check_key(&self, key: &RsaPrivateKey) -> Result<(), CertError> {
        let public = key.to_public_key();
        if public.n() == self.public_key.n() && public.e() == self.public_key.e() {
            Ok(())
        } else {
            Err(CertError::Mismatch)
        }
    }

    /// Refuses a certificate that has expired at `now`.
    pub fn check_valid(&self, now: DateTime<Utc>) -> Result<(), CertError> {
        if self.not_after <= now {
            return Err(CertError::Expired(self.not_after));
        }
        Ok(())
    }
}

/// Parses an RSA private key in PKCS#8 or PKCS#1 PEM.
pub fn private_key_from_pem(pem: &str) -> Result<RsaPrivateKey, CertError> {
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| CertError::PrivateKey)
}

/// A freshly made key pair and certificate.
pub struct NewCertificate {
    pub certificate_pem: String,
    pub private_key_pem: SecretString,
    /// A suggested `notifications.certificate_id`: names this certificate in notifications.
    pub certificate_id: String,
    pub not_after: DateTime<Utc>,
}

/// Makes an RSA-2048 key and a self-signed certificate valid from yesterday (clock skew) for
/// `days` days, with `subject` as its common name.
pub fn generate(subject: &str, days: u32, now: DateTime<Utc>) -> Result<NewCertificate, CertError> {
    let gen = |e: &dyn std::fmt::Display| CertError::Generate(e.to_string());
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(CertError::Generate(format!(
            "--days must be between 1 and {MAX_DAYS}"
        )));
    }
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS).map_err(|e| gen(&e))?;
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| gen(&e))?;
    let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| gen(&e))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| gen(&e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    let not_after = now + ChronoDuration::days(i64::from(days));
    // Month and day come from a valid chrono date, and `days` is bounded, so rcgen's own
    // range checks cannot fail.
    let ymd = |t: DateTime<Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    params.not_before = ymd(now - ChronoDuration::days(1));
    params.not_after = ymd(not_after);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DataEncipherment,
    ];
    let cert = params.self_signed(&pair).map_err(|e| gen(&e))?;
    let digest = hex::encode(Sha256::digest(cert.der()));
    Ok(NewCertificate {
        certificate_pem: cert.pem(),
        private_key_pem: SecretString::from(key_pem.to_string()),
        certificate_id: format!("m365-archiver-{}", &digest[..16]),
        not_after,
    })
}

/// Writes `certificate.pem` (0644) and `private-key.pem` (0600) into `dir`, creating it
/// (0700) if needed; refuses to overwrite either file. Returns both paths.
pub fn write(dir: &Path, new: &NewCertificate) -> Result<(PathBuf, PathBuf), CertError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { path, source }
    };
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CertError::Exists { path: path.clone() });
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    // The key first: if it cannot be written, no certificate without its key is left behind.
    create_new(
        &key_path,
        0o600,
        new.private_key_pem.expose_secret().as_bytes(),
    )
    .map_err(io(&key_path))?;
    create_new(&cert_path, 0o644, new.certificate_pem.as_bytes()).map_err(io(&cert_path))?;
    Ok((cert_path, key_path))
}

fn create_new(path: &Path, mode: u32, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `cert new`: generates, writes, and returns what to tell the operator.
pub fn run_new(dir: &Path, days: u32, subject: &str) -> Result<String, CertError> {
    let new = generate(subject, days, Utc::now())?;
    let (cert_path, key_path) = write(dir, &new)?;
    Ok(format!(
        "wrote {cert} (certificate, 0644) and {key} (private key, 0600)\n\
         certificate id: {id} (valid until {until})\n\n\
         Add to the configuration:\n\n\
         [notifications]\n\
         certificate = \"{cert}\"\n\
         private_key = \"{key}\"\n\
         certificate_id = \"{id}\"\n\n\
         The service user must be able to read the private key; nothing else should.\n\
         Before {until}: make a new pair, configure it and restart; the daemon replaces\n\
         the subscriptions made with the old certificate.\n",
        cert = cert_path.display(),
        key = key_path.display(),
        id = new.certificate_id,
        until = new.not_after.format("%Y-%m-%d"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifications::crypto;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cert_new_writes_a_matching_pair_that_decrypts_what_is_encrypted_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("notif");
        let text = run_new(&out, 30, "archiver.contoso.com").unwrap();
        assert!(text.contains("certificate_id = \"m365-archiver-"), "{text}");

        let cert_pem = std::fs::read_to_string(out.join(CERT_FILE)).unwrap();
        let key_pem = std::fs::read_to_string(out.join(KEY_FILE)).unwrap();
        let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);

        let cert = EncryptionCertificate::from_pem(&cert_pem).unwrap();
        let key = private_key_from_pem(&key_pem).unwrap();
        cert.check_key(&key).unwrap();
        cert.check_valid(Utc::now()).unwrap();
        assert!(cert.not_after > Utc::now() + ChronoDuration::days(29));
        assert!(cert.not_before < Utc::now());

        // Encrypt with the certificate's public key as Graph does; decrypt with the key file.
        let plain = br#"{"id":"1731701801008","etag":"1731701801008"}"#;
        let enc = crypto::encrypt_for_test(plain, &cert.public_key, "c");
        assert_eq!(crypto::decrypt(&enc, &key, "c").unwrap(), plain);

        // Never overwritten.
        let again = run_new(&out, 30, "x").unwrap_err();
        assert!(matches!(again, CertError::Exists { .. }), "{again}");
        assert_eq!(
            std::fs::read_to_string(out.join(KEY_FILE)).unwrap(),
            key_pem
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = generate("a", 1, Utc::now()).unwrap();
        let b = generate("b", 1, Utc::now()).unwrap();
        let cert = EncryptionCertificate::from_pem(&a.certificate_pem).unwrap();
        let other = private_key_from_pem(b.private_key_pem.expose_secret()).unwrap();
        assert!(matches!(cert.check_key(&other), Err(CertError::Mismatch)));
        let later = Utc::now() + ChronoDuration::days(3);
        assert!(matches!(
            cert.check_valid(later),
            Err(CertError::Expired(_))
        ));
        assert!(EncryptionCertificate::from_pem("nope").is_err());
        assert!(private_key_from_pem(&a.certificate_pem).is_err());
    }
}
