//! `validationTokens`: JWTs Graph adds to notifications with resource data, one per app and
//! tenant. A post is genuine only if every token is signed by one of the configured signing
//! keys (RS256), names `https://sts.windows.net/{tenant}/` as issuer, our app id as audience
//! and Microsoft Graph's change notification publisher as the party it was issued to (`azp`,
//! or `appid` in v1 tokens), and is within its validity (exp/nbf, small leeway).

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock skew tolerated on exp and nbf.
const LEEWAY_SECS: u64 = 60;
/// App id of Microsoft Graph's change notification publisher: a token Microsoft's keys signed
/// for another app (any Entra app can get one with our app id as audience) is not Graph's.
const GRAPH_PUBLISHER: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
/// Longer tokens are refused before any parsing (real ones are about 1.5 KB).
const MAX_TOKEN_CHARS: usize = 16 * 1024;

/// Why a validation token was refused; says which check failed, never echoes the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the notification carries encrypted resource data but no validationTokens")]
    Missing,
    #[error("a validation token is not a well-formed JWT")]
    Malformed,
    #[error("a validation token is signed with {0:?}; only RS256 is accepted")]
    Algorithm(Algorithm),
    #[error("a validation token's signature matches none of the configured signing keys")]
    Signature,
    #[error("a validation token has expired or is not yet valid")]
    Expired,
    #[error("a validation token's issuer is not https://sts.windows.net/<tenant id>/")]
    Issuer,
    #[error("a validation token's audience is not this application's client id")]
    Audience,
    #[error(
        "a validation token was not issued to Microsoft Graph's change notification publisher \
         (azp/appid {GRAPH_PUBLISHER})"
    )]
    Publisher,
}

#[derive(Deserialize)]
struct Claims {
    azp: Option<String>,
    appid: Option<String>,
}

impl Claims {
    fn publisher(&self) -> Result<(), TokenError> {
        let party = self.azp.as_deref().or(self.appid.as_deref());
        match party {
            Some(p) if p.eq_ignore_ascii_case(GRAPH_PUBLISHER) => Ok(()),
            _ => Err(TokenError::Publisher),
        }
    }
}

/// Checks validation tokens against the configured keys, tenant and app.
#[derive(Clone)]
pub struct TokenValidator {
    keys: Vec<DecodingKey>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenValidator {
    pub fn new(keys: Vec<DecodingKey>, tenant_id: &str, app_id: &str) -> Self {
        TokenValidator {
            keys,
            issuer: format!("https://sts.windows.net/{tenant_id}/"),
            audience: app_id.to_owned(),
        }
    }

    /// All tokens must be valid, and there must be at least one.
    pub fn check_all(&self, tokens: &[String]) -> Result<(), TokenError> {
        if tokens.is_empty() {
            return Err(TokenError::Missing);
        }
        tokens.iter().try_for_each(|t| self.check(t))
    }

    /// One token: the first key whose signature verifies decides the other checks.
    pub fn check(&self, token: &str) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Algorithm(header.alg));
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = TokenError::Signature;
        for key in &self.keys {
            match decode::<Claims>(token, key, &v) {
                Ok(data) => return data.claims.publisher(),
                Err(e) => match map_error(e.kind()) {
                    TokenError::Signature => last = TokenError::Signature,
                    other => return Err(other),
                },
            }
        }
        Err(last)
    }
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature | K::InvalidKeyFormat | K::InvalidRsaKey(_) => TokenError::Signature,
        K::ExpiredSignature | K::ImmatureSignature => TokenError::Expired,
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidAudience => TokenError::Audience,
        K::MissingRequiredClaim(c) if c == "exp" => TokenError::Expired,
        K::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
        K::MissingRequiredClaim(_) => TokenError::Audience,
        _ => TokenError::Malformed,
    }
}

/// Reads signing keys from PEM text: public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`) or X.509
/// certificates, several per file.
pub fn keys_from_pem(pem: &str) -> Result<Vec<DecodingKey>, String> {
    let mut out = Vec::new();
    for block in pem_blocks(pem) {
        let key = if block.contains("CERTIFICATE") {
            cert_key(&block)?
        } else {
            DecodingKey::from_rsa_pem(block.as_bytes())
                .map_err(|e| format!("not an RSA public key: {e}"))?
        };
        out.push(key);
    }
    if out.is_empty() {
        return Err("no PEM public key or certificate found".into());
    }
    Ok(out)
}

fn cert_key(block: &str) -> Result<DecodingKey, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(block.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = cert.public_key().subject_public_key.data.to_vec();
    Ok(DecodingKey::from_rsa_der(&spki))
}

fn pem_blocks(pem: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            blocks.extend(cur.take());
        }
    }
    blocks
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::notifications::crypto::tests::test_key;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};

    pub(crate) const TENANT: &str = "tenant-1";
    pub(crate) const APP: &str = "app-1";

    pub(crate) fn sign(key: &rsa::RsaPrivateKey, iss: &str, aud: &str, exp_offset: i64) -> String {
        sign_by(key, iss, aud, exp_offset, &[("azp", GRAPH_PUBLISHER)])
    }

    fn sign_by(
        key: &rsa::RsaPrivateKey,
        iss: &str,
        aud: &str,
        exp_offset: i64,
        parties: &[(&str, &str)],
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "iss": iss, "aud": aud, "exp": now + exp_offset, "nbf": now - 10, "iat": now - 10,
        });
        for (claim, app) in parties {
            claims[*claim] = (*app).into();
        }
        let pem = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        let ek = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::RS256), &claims, &ek).unwrap()
    }

    pub(crate) fn validator() -> TokenValidator {
        let pem = test_key()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        TokenValidator::new(keys_from_pem(&pem).unwrap(), TENANT, APP)
    }

    fn iss() -> String {
        format!("https://sts.windows.net/{TENANT}/")
    }

    #[test]
    fn a_genuine_token_passes() {
        let t = sign(test_key(), &iss(), APP, 3600);
        assert_eq!(validator().check_all(&[t]), Ok(()));
    }

    #[test]
    fn each_failed_check_is_named() {
        let v = validator();
        let other = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        assert_eq!(
            v.check(&sign(&other, &iss(), APP, 3600)),
            Err(TokenError::Signature)
        );
        assert_eq!(
            v.check(&sign(test_key(), &iss(), APP, -3600)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            v.check(&sign(
                test_key(),
                "https://sts.windows.net/evil/",
                APP,
                3600
            )),
            Err(TokenError::Issuer)
        );
        assert_eq!(
            v.check(&sign(test_key(), &iss(), "other", 3600)),
            Err(TokenError::Audience)
        );
        let stranger = "33333333-3333-4333-8333-333333333333";
        for parties in [&[("azp", stranger)][..], &[("appid", stranger)], &[]] {
            assert_eq!(
                v.check(&sign_by(test_key(), &iss(), APP, 3600, parties)),
                Err(TokenError::Publisher),
                "{parties:?}"
            );
        }
        assert_eq!(
            v.check(&sign_by(
                test_key(),
                &iss(),
                APP,
                3600,
                &[("appid", GRAPH_PUBLISHER)]
            )),
            Ok(()),
            "v1 tokens name the publisher in appid"
        );
        assert_eq!(v.check("not.a.jwt"), Err(TokenError::Malformed));
        assert_eq!(v.check_all(&[]), Err(TokenError::Missing));
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        // alg "none" with the right claims.
        let t = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.";
        assert!(validator().check(t).is_err());
    }

    #[test]
    fn one_bad_token_among_good_ones_fails_the_post() {
        let good = sign(test_key(), &iss(), APP, 3600);
        let bad = sign(test_key(), &iss(), APP, -3600);
        assert_eq!(
            validator().check_all(&[good, bad]),
            Err(TokenError::Expired)
        );
    }
}
