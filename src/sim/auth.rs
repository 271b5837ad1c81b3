//! The Microsoft identity platform token endpoint (client credentials) and bearer checks.
//!
//! Client secrets and certificate assertions are both checked for real: the assertion's
//! signature is verified with the configured certificate's key, its thumbprint header
//! (`x5t` SHA-1 or `x5t#S256` SHA-256) must match, and its claims must name this token
//! URL and this client. Errors use AAD's body and AADSTS codes, so a client's error
//! handling is exercised against the real shapes. Secrets are never echoed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::form_urlencoded;
use x509_parser::public_key::PublicKey;

use super::config::SimConfig;
use super::{lock, SimError, SimState};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew AAD tolerates on `nbf`.
const NBF_SKEW_SECS: f64 = 300.0;
/// Expired tokens are purged when this many are stored.
const PURGE_THRESHOLD: usize = 10_000;

/// The registered client certificate.
struct Certificate {
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    key: DecodingKey,
}

/// Credentials the token endpoint accepts and the tokens it issued.
pub(crate) struct Auth {
    tenant_id: String,
    client_id: String,
    secret_digest: [u8; 32],
    cert: Option<Certificate>,
    ttl: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("certificate", &self.cert.is_some())
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(cfg: &SimConfig) -> Result<Auth, SimError> {
        let cert = cfg
            .certificate_pem
            .as_deref()
            .map(parse_certificate)
            .transpose()?;
        Ok(Auth {
            tenant_id: cfg.tenant_id.clone(),
            client_id: cfg.client_id.clone(),
            secret_digest: Sha256::digest(cfg.client_secret.as_bytes()).into(),
            cert,
            ttl: Duration::from_secs(cfg.token_ttl_secs),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Checks an `Authorization` header; the error is Graph's message.
    pub(crate) fn check_bearer(
        &self,
        value: Option<&HeaderValue>,
        now: Instant,
    ) -> Result<(), &'static str> {
        let Some(value) = value.and_then(|v| v.to_str().ok()) else {
            return Err("Access token is empty.");
        };
        let Some(token) = strip_bearer(value) else {
            return Err("CompactToken parsing failed with error code: 80049217");
        };
        match lock(&self.tokens).get(token) {
            Some(expiry) if *expiry > now => Ok(()),
            _ => Err("Access token has expired or is not yet valid."),
        }
    }

    fn issue(&self, now: Instant) -> String {
        let bytes: [u8; 32] = rand::thread_rng().gen();
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= PURGE_THRESHOLD {
            tokens.retain(|_, expiry| *expiry > now);
        }
        tokens.insert(token.clone(), now + self.ttl);
        token
    }
}

fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn parse_certificate(pem: &str) -> Result<Certificate, SimError> {
    let bad = |m: String| SimError::Certificate(m);
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!(
            "expected a CERTIFICATE block, found {}",
            pem.label
        )));
    }
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("cannot parse the certificate: {e}")))?;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(_)) => {}
        _ => return Err(bad("the certificate key must be RSA".to_owned())),
    }
    Ok(Certificate {
        sha1: Sha1::digest(&pem.contents).to_vec(),
        sha256: Sha256::digest(&pem.contents).to_vec(),
        // The SPKI bit string of an RSA key is the PKCS#1 RSAPublicKey DER.
        key: DecodingKey::from_rsa_der(&spki.subject_public_key.data),
    })
}

/// An AAD error: status, OAuth error, AADSTS code and message.
#[derive(Debug)]
pub(crate) struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

fn aad(status: StatusCode, error: &'static str, code: u32, message: impl Into<String>) -> AadError {
    AadError {
        status,
        error,
        code,
        message: message.into(),
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let body = serde_json::json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        resp
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`
pub(crate) async fn token_endpoint(
    State(st): State<Arc<SimState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let token_url = format!("http://{host}/{tenant}/oauth2/v2.0/token");
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let result = grant(&st.auth, &tenant, &token_url, &form);
    let resp = match result {
        Ok(()) => {
            let token = st.auth.issue(Instant::now());
            lock(&st.stats).tokens_issued += 1;
            let ttl = st.auth.ttl.as_secs();
            let body = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": ttl,
                "ext_expires_in": ttl,
                "access_token": token,
            });
            tracing::debug!(tenant.id = %tenant, "sim issued an access token");
            axum::Json(body).into_response()
        }
        Err(e) => {
            tracing::debug!(tenant.id = %tenant, aadsts = e.code, "sim refused a token request");
            e.into_response()
        }
    };
    lock(&st.stats).record("token", resp.status().as_u16(), Utc::now());
    resp
}

fn param<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, AadError> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            aad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        })
}

/// Decides a client-credentials grant.
fn grant(
    auth: &Auth,
    tenant: &str,
    token_url: &str,
    form: &HashMap<String, String>,
) -> Result<(), AadError> {
    if !tenant.eq_ignore_ascii_case(&auth.tenant_id) {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        ));
    }
    let grant_type = param(form, "grant_type")?;
    if grant_type != "client_credentials" {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = param(form, "client_id")?;
    if !client_id.eq_ignore_ascii_case(&auth.client_id) {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
        ));
    }
    check_scope(param(form, "scope")?)?;
    if let Some(secret) = form.get("client_secret") {
        return check_secret(auth, secret, client_id);
    }
    match form.get("client_assertion_type").map(String::as_str) {
        Some(ASSERTION_TYPE) => {
            verify_assertion(auth, param(form, "client_assertion")?, token_url, Utc::now())
        }
        Some(other) => Err(aad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            format!("Invalid client_assertion_type '{other}'."),
        )),
        None => Err(aad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )),
    }
}

/// Client credentials need a `{resource}/.default` scope.
fn check_scope(scope: &str) -> Result<(), AadError> {
    if scope.split(' ').all(|s| s.ends_with("/.default")) {
        return Ok(());
    }
    Err(aad(
        StatusCode::BAD_REQUEST,
        "invalid_scope",
        1002012,
        format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
    ))
}

fn check_secret(auth: &Auth, secret: &str, client_id: &str) -> Result<(), AadError> {
    // Comparing digests keeps the comparison time independent of the secret's content.
    let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if digest == auth.secret_digest {
        return Ok(());
    }
    Err(aad(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7000215,
        format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
    ))
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    aud: Option<serde_json::Value>,
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    jti: Option<String>,
}

fn malformed(reason: &str) -> AadError {
    aad(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        format!("JWT token is invalid or malformed. [Reason - {reason}]"),
    )
}

fn signature_failure(reason: &str) -> AadError {
    aad(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
        format!("Client assertion failed signature validation. [Reason - {reason}]"),
    )
}

/// Verifies a certificate client assertion (signature, thumbprint, claims).
fn verify_assertion(
    auth: &Auth,
    assertion: &str,
    token_url: &str,
    now: chrono::DateTime<Utc>,
) -> Result<(), AadError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed("header"))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(malformed("unsupported algorithm, expected RS256 or PS256"));
    }
    let cert = auth
        .cert
        .as_ref()
        .ok_or_else(|| signature_failure("The key was not found."))?;
    check_thumbprint(cert, header.x5t.as_deref(), header.x5t_s256.as_deref())?;
    let mut validation = Validation::new(header.alg);
    // Time and audience are checked below, to answer with AAD's specific codes.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &cert.key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                signature_failure("The signature is invalid.")
            }
            _ => malformed("claims"),
        })?
        .claims;
    check_claims(auth, &claims, token_url, now.timestamp() as f64)
}

fn check_thumbprint(
    cert: &Certificate,
    x5t: Option<&str>,
    x5t_s256: Option<&str>,
) -> Result<(), AadError> {
    if x5t.is_none() && x5t_s256.is_none() {
        return Err(malformed("the header has neither x5t nor x5t#S256"));
    }
    for (given, expected) in [(x5t, &cert.sha1), (x5t_s256, &cert.sha256)] {
        if let Some(given) = given {
            if decode_b64(given).as_ref() != Some(expected) {
                return Err(signature_failure(&format!(
                    "The key was not found., Thumbprint of key used by client: '{given}'"
                )));
            }
        }
    }
    Ok(())
}

/// Thumbprints are base64url per RFC 7515; plain base64 is tolerated like AAD does.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let trimmed = s.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
        .or_else(|| STANDARD.decode(s).ok())
}

fn check_claims(
    auth: &Auth,
    c: &AssertionClaims,
    token_url: &str,
    now: f64,
) -> Result<(), AadError> {
    let aud_ok = match &c.aud {
        Some(serde_json::Value::String(a)) => a.eq_ignore_ascii_case(token_url),
        Some(serde_json::Value::Array(v)) => v.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| a.eq_ignore_ascii_case(token_url))
        }),
        _ => false,
    };
    if !aud_ok {
        return Err(malformed(&format!("the audience must be '{token_url}'")));
    }
    let client = auth.client_id.as_str();
    let names_client =
        |v: &Option<String>| v.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(client));
    if !names_client(&c.iss) || !names_client(&c.sub) {
        return Err(aad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    if c.jti.as_deref().is_none_or(str::is_empty) {
        return Err(malformed("the jti claim is missing"));
    }
    let expired = c.exp.is_none_or(|exp| exp <= now);
    let early = c.nbf.is_some_and(|nbf| nbf > now + NBF_SKEW_SECS);
    if expired || early {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}
