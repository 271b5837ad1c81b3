//! Credentials for the storage account: a SAS in the URL, or an Entra ID token credential
//! (client secret, certificate, managed identity) from `azure_identity`.

use super::config::AzureAuth;
use super::transport::ReqwestTransport;
use crate::graph::{AssertionForm, CertSigner};
use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientMethodOptions, ClientOptions, Transport};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use secrecy::ExposeSecret;
use std::sync::Arc;
use url::Url;

/// Builds the credential for `auth`; None for a SAS, which travels in the URL instead.
pub(crate) fn credential(
    auth: &AzureAuth,
    authority: &Url,
    transport: &ReqwestTransport,
) -> Result<Option<Arc<dyn TokenCredential>>, String> {
    let options = || client_options(authority, transport);
    let cred: Arc<dyn TokenCredential> = match auth {
        AzureAuth::Sas(_) => return Ok(None),
        AzureAuth::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => ClientSecretCredential::new(
            tenant_id,
            client_id.clone(),
            Secret::new(secret.expose_secret().to_string()),
            Some(ClientSecretCredentialOptions {
                client_options: options(),
            }),
        )
        .map_err(|e| format!("store.auth = \"client_secret\": {e}"))?,
        AzureAuth::Certificate {
            tenant_id,
            client_id,
            cert_pem,
            key_pem,
        } => {
            let signer = CertSigner::new(cert_pem, key_pem, AssertionForm::Ps256X5tS256)
                .map_err(|e| format!("store.certificate_file / store.private_key_file: {e}"))?;
            let token_url = format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority.as_str().trim_end_matches('/')
            );
            let assertion = CertAssertion {
                signer,
                token_url,
                client_id: client_id.clone(),
            };
            ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                assertion,
                Some(ClientAssertionCredentialOptions {
                    client_options: options(),
                }),
            )
            .map_err(|e| format!("store.auth = \"certificate\": {e}"))?
        }
        AzureAuth::ManagedIdentity { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: options(),
            }))
            .map_err(|e| format!("store.auth = \"managed_identity\": {e}"))?
        }
    };
    Ok(Some(cred))
}

/// The pipeline options every credential shares: our transport, and the configured authority
/// (Azure Government, China and other clouds have their own).
fn client_options(authority: &Url, transport: &ReqwestTransport) -> ClientOptions {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority.as_str().trim_end_matches('/').to_string();
    ClientOptions {
        transport: Some(Transport::new(Arc::new(transport.clone()))),
        cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
        ..Default::default()
    }
}

/// A certificate client assertion, signed with the same code as the Graph credential (so no
/// OpenSSL is needed, unlike azure_identity's own certificate credential).
struct CertAssertion {
    signer: CertSigner,
    token_url: String,
    client_id: String,
}

impl std::fmt::Debug for CertAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAssertion")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ClientAssertion for CertAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.signer
            .assertion(&self.token_url, &self.client_id)
            .map(|s| s.expose_secret().to_string())
            .map_err(|e| {
                azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    e.to_string(),
                )
            })
    }
}
