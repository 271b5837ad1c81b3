//! Parsing and checking a notification post: `{"value":[items], "validationTokens":[...]}`.
//!
//! Order of checks, cheapest and least trusting first: size (by the receiver), JSON shape,
//! validation tokens (whenever any item carries resource data), then per item clientState,
//! and for change items the dataSignature and decryption. Items that fail are dropped one by
//! one; the post is refused outright when its tokens fail or nothing in it is acceptable.

use super::crypto::{self, CryptoError, EncryptedContent};
use super::tokens::{TokenError, TokenValidator};
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

/// Items per post beyond which the post is refused (Graph batches far fewer).
const MAX_ITEMS: usize = 1_000;

#[derive(Deserialize)]
struct Collection<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "validationTokens", default)]
    validation_tokens: Vec<String>,
}

/// The fields of one item the archiver reads; the item itself is kept as received.
#[derive(Clone, Debug, Deserialize)]
pub struct Item {
    #[serde(rename = "subscriptionId")]
    pub subscription_id: String,
    #[serde(rename = "clientState", default)]
    pub client_state: Option<String>,
    #[serde(rename = "changeType", default)]
    pub change_type: Option<String>,
    #[serde(rename = "lifecycleEvent", default)]
    pub lifecycle_event: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(rename = "tenantId", default)]
    pub tenant_id: Option<String>,
    #[serde(rename = "encryptedContent", default)]
    pub encrypted_content: Option<EncryptedContent>,
}

/// What an accepted item asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A change with resource data to archive.
    Change,
    /// A lifecycle event (`missed`, `subscriptionRemoved`, `reauthorizationRequired`).
    Lifecycle,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Change => "change",
            ItemKind::Lifecycle => "lifecycle",
        }
    }
}

/// An item that passed every check, as received (its resource data still encrypted).
#[derive(Clone, Debug)]
pub struct Accepted {
    pub kind: ItemKind,
    pub subscription_id: String,
    pub raw: String,
}

/// Why a post was refused as a whole. The receiver answers every one with the same bare
/// status so a caller learns nothing; the log gets the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("the body is not a notification collection: {0}")]
    Malformed(String),
    #[error("the post has {0} items; at most {MAX_ITEMS} are accepted")]
    TooManyItems(usize),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("no item of the post passed the checks ({dropped} dropped; first reason: {first})")]
    NothingAccepted { dropped: usize, first: String },
}

impl Rejection {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::TooManyItems(_) => "too_many_items",
            Rejection::Token(_) => "validation_token",
            Rejection::NothingAccepted { .. } => "nothing_accepted",
        }
    }
}

/// Why one item was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ItemProblem {
    #[error("item is not a notification: {0}")]
    Malformed(String),
    #[error("clientState does not match (subscription {subscription_id})")]
    ClientState { subscription_id: String },
    #[error("change item without encryptedContent (subscription {subscription_id})")]
    NoResourceData { subscription_id: String },
    #[error("resource data of subscription {subscription_id} encrypted for certificate '{certificate_id}', which is not configured")]
    UnknownCertificate {
        subscription_id: String,
        certificate_id: String,
    },
    #[error("resource data of subscription {subscription_id}: {source}")]
    Crypto {
        subscription_id: String,
        #[source]
        source: CryptoError,
    },
    #[error("decrypted resource data of subscription {subscription_id} is not a JSON object")]
    NotJson { subscription_id: String },
}

impl ItemProblem {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ItemProblem::Malformed(_) => "malformed_item",
            ItemProblem::ClientState { .. } => "client_state",
            ItemProblem::NoResourceData { .. } => "no_resource_data",
            ItemProblem::UnknownCertificate { .. } => "unknown_certificate",
            ItemProblem::Crypto { .. } => "decryption",
            ItemProblem::NotJson { .. } => "not_json",
        }
    }
}

/// A decryption key and the certificate id it belongs to (several during rotation).
pub struct DecryptionKey {
    pub certificate_id: String,
    pub key: RsaPrivateKey,
}

/// Everything needed to check and decrypt posts.
pub struct Verifier {
    client_state: SecretString,
    tokens: TokenValidator,
    keys: Vec<DecryptionKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.certificate_id.as_str())
            .collect();
        f.debug_struct("Verifier")
            .field("tokens", &self.tokens)
            .field("certificates", &ids)
            .finish_non_exhaustive()
    }
}

/// The outcome of a post that was not refused as a whole.
#[derive(Debug, Default)]
pub struct Checked {
    pub accepted: Vec<Accepted>,
    pub dropped: Vec<ItemProblem>,
}

impl Verifier {
    pub fn new(
        client_state: SecretString,
        tokens: TokenValidator,
        keys: Vec<DecryptionKey>,
    ) -> Self {
        Verifier {
            client_state,
            tokens,
            keys,
        }
    }

    /// Checks a whole post (CPU-bound: RSA; run it off the async threads).
    pub fn check_post(&self, body: &[u8]) -> Result<Checked, Rejection> {
        let coll: Collection =
            serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
        if coll.value.len() > MAX_ITEMS {
            return Err(Rejection::TooManyItems(coll.value.len()));
        }
        let items: Vec<(&RawValue, Result<Item, ItemProblem>)> = coll
            .value
            .iter()
            .map(|raw| (*raw, parse_item(raw)))
            .collect();
        let has_data = items
            .iter()
            .any(|(_, i)| matches!(i, Ok(i) if i.encrypted_content.is_some()));
        if has_data {
            self.tokens.check_all(&coll.validation_tokens)?;
        }
        let mut out = Checked::default();
        for (raw, item) in items {
            match item.and_then(|i| self.check_item(raw, i)) {
                Ok(a) => out.accepted.push(a),
                Err(p) => out.dropped.push(p),
            }
        }
        if out.accepted.is_empty() {
            let first = out
                .dropped
                .first()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "empty post".into());
            return Err(Rejection::NothingAccepted {
                dropped: out.dropped.len(),
                first,
            });
        }
        Ok(out)
    }

    fn check_item(&self, raw: &RawValue, item: Item) -> Result<Accepted, ItemProblem> {
        self.check_client_state(&item)?;
        let kind = if item.lifecycle_event.is_some() {
            ItemKind::Lifecycle
        } else {
            // Proves the data is genuine and decryptable now, so nothing unreadable is queued.
            self.decrypt(&item)?;
            ItemKind::Change
        };
        Ok(Accepted {
            kind,
            subscription_id: item.subscription_id,
            raw: raw.get().to_owned(),
        })
    }

    fn check_client_state(&self, item: &Item) -> Result<(), ItemProblem> {
        let want = self.client_state.expose_secret().as_bytes();
        let got = item.client_state.as_deref().unwrap_or("").as_bytes();
        if bool::from(want.ct_eq(got)) && !want.is_empty() {
            Ok(())
        } else {
            Err(ItemProblem::ClientState {
                subscription_id: item.subscription_id.clone(),
            })
        }
    }

    /// Checks the signature and decrypts a change item's resource data; the plaintext must be
    /// a JSON object (an aiInteraction).
    pub fn decrypt(&self, item: &Item) -> Result<Vec<u8>, ItemProblem> {
        let sub = || item.subscription_id.clone();
        let content =
            item.encrypted_content
                .as_ref()
                .ok_or_else(|| ItemProblem::NoResourceData {
                    subscription_id: sub(),
                })?;
        let key = self
            .key_for(content)
            .ok_or_else(|| ItemProblem::UnknownCertificate {
                subscription_id: sub(),
                certificate_id: content.certificate_id.clone().unwrap_or_default(),
            })?;
        let plain = crypto::decrypt(content, &key.key, &key.certificate_id).map_err(|source| {
            ItemProblem::Crypto {
                subscription_id: sub(),
                source,
            }
        })?;
        let is_object = serde_json::from_slice::<&RawValue>(&plain)
            .map(|r| r.get().starts_with('{'))
            .unwrap_or(false);
        if !is_object {
            return Err(ItemProblem::NotJson {
                subscription_id: sub(),
            });
        }
        Ok(plain)
    }

    /// The key of the certificate the item names; without a name, the only key if there is one.
    fn key_for(&self, content: &EncryptedContent) -> Option<&DecryptionKey> {
        match content.certificate_id.as_deref() {
            Some(id) => self.keys.iter().find(|k| k.certificate_id == id),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// Parses one item as received.
pub fn parse_item(raw: &RawValue) -> Result<Item, ItemProblem> {
    serde_json::from_str(raw.get()).map_err(|e| ItemProblem::Malformed(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::notifications::crypto::{encrypt_for_test, tests::test_key};
    use crate::notifications::tokens::tests::{sign, validator, APP, TENANT};
    use proptest::prelude::*;

    pub(crate) const STATE: &str = "s3cret-client-state";
    const PLAIN: &str = r#"{"id":"1731701801008","etag":"1731701801008","createdDateTime":"2024-11-15T20:16:41.008Z"}"#;

    pub(crate) fn verifier() -> Verifier {
        Verifier::new(
            SecretString::from(STATE),
            validator(),
            vec![DecryptionKey {
                certificate_id: "c1".into(),
                key: test_key().clone(),
            }],
        )
    }

    pub(crate) fn token() -> String {
        sign(
            test_key(),
            &format!("https://sts.windows.net/{TENANT}/"),
            APP,
            3600,
        )
    }

    pub(crate) fn change(state: &str, plain: &str) -> serde_json::Value {
        let enc = encrypt_for_test(plain.as_bytes(), &test_key().to_public_key(), "c1");
        serde_json::json!({
            "subscriptionId": "sub-1", "changeType": "created", "clientState": state,
            "resource": "copilot/interactionHistory/interactions('1731701801008')",
            "tenantId": TENANT, "encryptedContent": enc,
        })
    }

    pub(crate) fn post(items: Vec<serde_json::Value>, tokens: Vec<String>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"value": items, "validationTokens": tokens}))
            .unwrap()
    }

    #[test]
    fn a_genuine_post_is_accepted_and_kept_as_received() {
        let item = change(STATE, PLAIN);
        let checked = verifier()
            .check_post(&post(vec![item.clone()], vec![token()]))
            .unwrap();
        assert_eq!(checked.accepted.len(), 1);
        let a = &checked.accepted[0];
        assert_eq!(a.kind, ItemKind::Change);
        let back: serde_json::Value = serde_json::from_str(&a.raw).unwrap();
        assert_eq!(back, item);
        let parsed = parse_item(&serde_json::from_str::<Box<RawValue>>(&a.raw).unwrap()).unwrap();
        assert_eq!(verifier().decrypt(&parsed).unwrap(), PLAIN.as_bytes());
    }

    #[test]
    fn wrong_client_state_is_dropped_and_alone_refuses_the_post() {
        let v = verifier();
        let err = v
            .check_post(&post(vec![change("guess", PLAIN)], vec![token()]))
            .unwrap_err();
        assert!(
            matches!(err, Rejection::NothingAccepted { dropped: 1, .. }),
            "{err}"
        );
        let mixed = post(
            vec![change("guess", PLAIN), change(STATE, PLAIN)],
            vec![token()],
        );
        let checked = v.check_post(&mixed).unwrap();
        assert_eq!((checked.accepted.len(), checked.dropped.len()), (1, 1));
    }

    #[test]
    fn resource_data_without_valid_tokens_refuses_the_post() {
        let v = verifier();
        assert_eq!(
            v.check_post(&post(vec![change(STATE, PLAIN)], vec![]))
                .unwrap_err(),
            Rejection::Token(TokenError::Missing)
        );
        let expired = sign(
            test_key(),
            &format!("https://sts.windows.net/{TENANT}/"),
            APP,
            -600,
        );
        assert_eq!(
            v.check_post(&post(vec![change(STATE, PLAIN)], vec![expired]))
                .unwrap_err(),
            Rejection::Token(TokenError::Expired)
        );
    }

    #[test]
    fn tampered_data_and_non_json_plaintext_are_dropped() {
        let v = verifier();
        let mut item = change(STATE, PLAIN);
        item["encryptedContent"]["dataSignature"] = "AAAA".into();
        let err = v.check_post(&post(vec![item], vec![token()])).unwrap_err();
        assert!(err.to_string().contains("dataSignature"), "{err}");
        let err = v
            .check_post(&post(vec![change(STATE, "not json")], vec![token()]))
            .unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    #[test]
    fn lifecycle_items_need_the_client_state_but_no_tokens() {
        let v = verifier();
        let life = serde_json::json!({"subscriptionId":"sub-1","lifecycleEvent":"missed","clientState":STATE});
        let checked = v.check_post(&post(vec![life], vec![])).unwrap();
        assert_eq!(checked.accepted[0].kind, ItemKind::Lifecycle);
        let forged = serde_json::json!({"subscriptionId":"sub-1","lifecycleEvent":"missed","clientState":"x"});
        assert!(v.check_post(&post(vec![forged], vec![])).is_err());
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let v = verifier();
        for body in [&b"{"[..], b"[]", b"{\"value\":3}", b"", b"\xff\xfe"] {
            assert!(matches!(v.check_post(body), Err(Rejection::Malformed(_))));
        }
        assert!(matches!(
            v.check_post(br#"{"value":[]}"#),
            Err(Rejection::NothingAccepted { dropped: 0, .. })
        ));
    }

    #[test]
    fn errors_never_contain_the_client_state() {
        let v = verifier();
        let err = v
            .check_post(&post(vec![change("guess", PLAIN)], vec![token()]))
            .unwrap_err();
        assert!(!err.to_string().contains(STATE));
        assert!(!format!("{v:?}").contains(STATE));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The parser and checks never panic, whatever arrives.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verifier().check_post(&body);
        }

        /// Structurally plausible posts with arbitrary field values never panic or pass.
        #[test]
        fn arbitrary_items_never_pass(
            state in ".{0,40}", data in "[A-Za-z0-9+/=]{0,120}", key in "[A-Za-z0-9+/=]{0,400}",
            sig in "[A-Za-z0-9+/=]{0,60}", tok in ".{0,80}",
        ) {
            let item = serde_json::json!({
                "subscriptionId": "s", "clientState": state, "changeType": "created",
                "encryptedContent": {"data": data, "dataKey": key, "dataSignature": sig,
                                     "encryptionCertificateId": "c1"},
            });
            prop_assert!(verifier().check_post(&post(vec![item], vec![tok])).is_err());
        }
    }

    /// A valid token, signed once: the fuzz cases below get past the token check.
    fn valid_token() -> String {
        static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TOKEN.get_or_init(token).clone()
    }

    /// Field names the parser knows, so arbitrary structures reach its deeper paths.
    fn json_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "value",
                "validationTokens",
                "subscriptionId",
                "clientState",
                "changeType",
                "lifecycleEvent",
                "resource",
                "tenantId",
                "encryptedContent",
                "data",
                "dataKey",
                "dataSignature",
                "encryptionCertificateId",
            ])
            .prop_map(String::from),
            ".{0,8}",
        ]
    }

    /// Arbitrary JSON, with the strings a genuine post would hold among the leaves.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            prop_oneof![
                prop::sample::select(vec![STATE, "c1", "created", "missed", "sub-1", "AAAA"])
                    .prop_map(String::from),
                Just(valid_token()),
                ".{0,24}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(json_key(), inner, 0..7)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `encryptedContent` sealed under the test certificate with a symmetric key of `sym_len`
    /// bytes and a correct HMAC over arbitrary `data`: past RSA and the signature, into the
    /// block cipher.
    fn sealed(sym_len: usize, data: &[u8]) -> serde_json::Value {
        use base64::{engine::general_purpose::STANDARD, Engine};
        use hmac::Mac;
        use rand::RngCore;
        let mut sym = vec![0u8; sym_len];
        rand::thread_rng().fill_bytes(&mut sym);
        let wrapped = test_key()
            .to_public_key()
            .encrypt(
                &mut rand::thread_rng(),
                rsa::Oaep::new::<sha1::Sha1>(),
                &sym,
            )
            .expect("fits an OAEP block");
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&sym).expect("any length");
        mac.update(data);
        serde_json::json!({
            "data": STANDARD.encode(data), "dataKey": STANDARD.encode(wrapped),
            "dataSignature": STANDARD.encode(mac.finalize().into_bytes()),
            "encryptionCertificateId": "c1",
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Arbitrary JSON, as a whole body or as the items and tokens of a post, never panics;
        /// whatever is accepted is a lifecycle item with our clientState or a change item that
        /// decrypts (nothing unreadable is ever queued).
        #[test]
        fn arbitrary_json_structures_never_panic(
            whole in json_value(),
            items in prop::collection::vec(json_value(), 0..4),
            tokens in json_value(),
        ) {
            let v = verifier();
            let _ = v.check_post(&serde_json::to_vec(&whole).unwrap());
            let body = serde_json::json!({"value": items, "validationTokens": tokens});
            if let Ok(checked) = v.check_post(&serde_json::to_vec(&body).unwrap()) {
                for a in checked.accepted {
                    let raw: Box<RawValue> = serde_json::from_str(&a.raw).unwrap();
                    let item = parse_item(&raw).unwrap();
                    prop_assert_eq!(item.client_state.as_deref(), Some(STATE));
                    if a.kind == ItemKind::Change {
                        prop_assert!(v.decrypt(&item).is_ok());
                    }
                }
            }
        }

        /// Past a valid token and the right clientState, arbitrary (well-formed base64)
        /// resource data reaches the decryptor and is refused, never accepted or a panic.
        #[test]
        fn arbitrary_resource_data_past_the_token_is_refused(
            data in prop::collection::vec(any::<u8>(), 0..300),
            key in prop::collection::vec(any::<u8>(), 0..300),
            sig in prop::collection::vec(any::<u8>(), 0..48),
            cert in prop::option::of(prop_oneof![Just("c1".to_string()), ".{0,6}"]),
        ) {
            use base64::{engine::general_purpose::STANDARD, Engine};
            let mut item = change(STATE, PLAIN);
            item["encryptedContent"] = serde_json::json!({
                "data": STANDARD.encode(&data), "dataKey": STANDARD.encode(&key),
                "dataSignature": STANDARD.encode(&sig), "encryptionCertificateId": cert,
            });
            prop_assert!(verifier().check_post(&post(vec![item], vec![valid_token()])).is_err());
        }

        /// A genuine key and signature over arbitrary ciphertext, with a symmetric key of any
        /// length: the decryptor answers an error (wrong key length, bad block length or
        /// padding, not JSON) and never panics.
        #[test]
        fn sealed_arbitrary_ciphertext_never_panics(
            sym_len in prop_oneof![Just(32usize), 0usize..64],
            data in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut item = change(STATE, PLAIN);
            item["encryptedContent"] = sealed(sym_len, &data);
            let parsed: Item = serde_json::from_value(item.clone()).unwrap();
            let res = verifier().decrypt(&parsed);
            if sym_len != 32 {
                prop_assert!(res.is_err());
            }
            if data.is_empty() || data.len() % 16 != 0 {
                prop_assert!(res.is_err());
            }
            let _ = verifier().check_post(&post(vec![item], vec![valid_token()]));
        }
    }
}
