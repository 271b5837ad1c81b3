//! Certificate credentials: the signed JWT client assertion that replaces a client secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::error::GraphError;

/// Lifetime of a client assertion. Entra ID accepts up to 10 minutes; it is used once, at once.
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// Which header form the certificate assertion JWT uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AssertionForm {
    /// PS256 with `x5t#S256` (SHA-256 thumbprint): what Microsoft's current docs describe.
    #[default]
    Ps256X5tS256,
    /// RS256 with `x5t` (SHA-1 thumbprint): the older documented form.
    Rs256X5t,
}

/// Signs client assertions with the certificate's private key.
pub(crate) struct CertSigner {
    key: EncodingKey,
    form: AssertionForm,
    x5t: String,
    x5t_s256: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl CertSigner {
    /// Loads and cross-checks the certificate and key, so that a mismatch is reported at
    /// startup in plain words rather than later as an AADSTS code.
    pub(crate) fn new(
        cert_pem: &str,
        key_pem: &SecretString,
        form: AssertionForm,
    ) -> Result<Self, GraphError> {
        let cert_der = certificate_der(cert_pem)?;
        let key = private_key(key_pem)?;
        check_key_matches(&cert_der, &key)?;
        let pkcs1 = key.to_pkcs1_der().map_err(|_| {
            GraphError::Config("the certificate private key cannot be re-encoded".into())
        })?;
        Ok(Self {
            key: EncodingKey::from_rsa_der(pkcs1.as_bytes()),
            form,
            x5t: thumbprint::<Sha1>(&cert_der),
            x5t_s256: thumbprint::<Sha256>(&cert_der),
        })
    }

    /// A fresh client assertion for `token_url` (the audience).
    pub(crate) fn assertion(
        &self,
        token_url: &str,
        client_id: &str,
    ) -> Result<SecretString, GraphError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        let jwt = jsonwebtoken::encode(&self.header(), &claims, &self.key).map_err(|_| {
            GraphError::Config(
                "cannot sign the client assertion with the certificate private key".into(),
            )
        })?;
        Ok(SecretString::from(jwt))
    }

    fn header(&self) -> Header {
        match self.form {
            AssertionForm::Ps256X5tS256 => {
                let mut header = Header::new(Algorithm::PS256);
                header.x5t_s256 = Some(self.x5t_s256.clone());
                header
            }
            AssertionForm::Rs256X5t => {
                let mut header = Header::new(Algorithm::RS256);
                header.x5t = Some(self.x5t.clone());
                header
            }
        }
    }
}

/// base64url (no padding) of a digest of the DER certificate, as `x5t` / `x5t#S256` want.
pub(crate) fn thumbprint<D: Digest>(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(D::digest(der))
}

/// DER of the first certificate of a PEM (the leaf, if a chain was pasted).
pub(crate) fn certificate_der(cert_pem: &str) -> Result<Vec<u8>, GraphError> {
    let bad = |what: &str| GraphError::Config(format!("graph certificate: {what}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|_| bad("not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad("the PEM block is not a CERTIFICATE"));
    }
    X509Certificate::from_der(&pem.contents)
        .map_err(|_| bad("the certificate cannot be parsed as X.509"))?;
    Ok(pem.contents)
}

/// The RSA private key, PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`). Parse errors are
/// reported without their detail: it could echo key material.
fn private_key(key_pem: &SecretString) -> Result<RsaPrivateKey, GraphError> {
    let pem = key_pem.expose_secret();
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| {
            GraphError::Config(
                "graph certificate private key: not an unencrypted RSA private key in PEM \
                 (PKCS#8 'PRIVATE KEY' or PKCS#1 'RSA PRIVATE KEY')"
                    .into(),
            )
        })
}

fn check_key_matches(cert_der: &[u8], key: &RsaPrivateKey) -> Result<(), GraphError> {
    let mismatch = || {
        GraphError::Config(
            "graph certificate: the private key does not belong to the certificate \
             (or the certificate is not an RSA certificate)"
                .into(),
        )
    };
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| mismatch())?;
    warn_if_not_valid_now(&cert);
    let cert_modulus = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => strip_leading_zeros(rsa.modulus).to_vec(),
        _ => return Err(mismatch()),
    };
    let key_modulus = key.n().to_bytes_be();
    if strip_leading_zeros(&key_modulus) != cert_modulus.as_slice() {
        return Err(mismatch());
    }
    Ok(())
}

/// An expired certificate still loads (Entra ID is the judge, and rotation may be under way),
/// but the operator should hear about it before the AADSTS error does the talking.
fn warn_if_not_valid_now(cert: &X509Certificate<'_>) {
    if !cert.validity().is_valid() {
        tracing::warn!(
            not_before = %cert.validity().not_before,
            not_after = %cert.validity().not_after,
            "graph certificate is outside its validity period; Entra ID will reject it"
        );
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}
