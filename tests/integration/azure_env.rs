//! The harness's Azure side: which store a test archives into, a fresh container per test on
//! Azurite (started by scripts/with-azurite.sh), and the `[store]` configuration for it.

use crate::helpers::{Env, Opts};
use m365_archiver::archive::azure::{AzureSettings, AzureStore};
use m365_archiver::archive::fs::FsStore;
use m365_archiver::archive::ArchiveStore;
use secrecy::SecretString;
use std::sync::Arc;

/// Set by scripts/with-azurite.sh.
pub const AZURITE_ENDPOINT_VAR: &str = "M365_TEST_AZURITE_BLOB_ENDPOINT";
pub const AZURITE_SAS_VAR: &str = "M365_TEST_AZURITE_SAS";
/// Set to 1 to skip the Azurite variants when no emulator is running (quick local runs).
pub const SKIP_AZURITE_VAR: &str = "M365_SKIP_AZURITE";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Fs,
    Azurite,
    /// The recording WORM double (`blob_double`), at this container URL.
    Double {
        container_url: String,
    },
}

impl StoreKind {
    pub fn from_env() -> StoreKind {
        match std::env::var("M365_TEST_STORE").as_deref() {
            Ok("azurite") => StoreKind::Azurite,
            _ => StoreKind::Fs,
        }
    }
}

/// An Azure container the test archives into.
#[derive(Clone, Debug)]
pub struct AzureTarget {
    pub container_url: String,
    pub sas: String,
    /// Azurite does not report version-level immutability; the double does.
    pub require_immutability: bool,
}

/// False (after saying so) when Azurite tests are skipped; panics when they should run but no
/// emulator is there, so a forgotten wrapper cannot pass silently.
pub fn azurite_available() -> bool {
    if std::env::var(AZURITE_ENDPOINT_VAR).is_ok_and(|v| !v.is_empty()) {
        return true;
    }
    if matches!(
        std::env::var(SKIP_AZURITE_VAR).as_deref(),
        Ok("1") | Ok("true")
    ) {
        eprintln!("skipping the Azurite variant ({SKIP_AZURITE_VAR}=1)");
        return false;
    }
    panic!(
        "{AZURITE_ENDPOINT_VAR} is not set: run Azure tests under scripts/with-azurite.sh (scripts/test.sh does), \
         or set {SKIP_AZURITE_VAR}=1 to skip them"
    );
}

impl AzureTarget {
    pub async fn for_store(kind: &StoreKind) -> Option<AzureTarget> {
        match kind {
            StoreKind::Fs => None,
            StoreKind::Azurite => Some(new_azurite_container().await),
            StoreKind::Double { container_url } => Some(AzureTarget {
                container_url: container_url.clone(),
                sas: crate::blob_double::SAS.to_string(),
                require_immutability: true,
            }),
        }
    }

    pub fn store(&self) -> AzureStore {
        self.store_with_blocks(8)
    }

    /// A store that uploads in blocks of `mib` MiB (small, to exercise Put Block List).
    pub fn store_with_blocks(&self, mib: u64) -> AzureStore {
        let settings = AzureSettings {
            block_size_mib: Some(mib),
            container_url: Some(self.container_url.clone()),
            sas_token: Some(SecretString::from(self.sas.clone())),
            require_immutability: Some(self.require_immutability),
            max_retries: Some(2),
            retry_delay: Some(std::time::Duration::from_millis(50)),
            ..Default::default()
        };
        let cfg = settings.validate().expect("valid Azure settings");
        AzureStore::new(&cfg).expect("Azure store")
    }
}

/// A container with a fresh name on the running Azurite.
async fn new_azurite_container() -> AzureTarget {
    assert!(
        azurite_available(),
        "Azurite tests are skipped; the caller should have checked"
    );
    let endpoint = std::env::var(AZURITE_ENDPOINT_VAR).expect("endpoint");
    let sas = std::env::var(AZURITE_SAS_VAR).expect("M365_TEST_AZURITE_SAS");
    let name = format!("t{}", uuid::Uuid::new_v4().simple());
    let url = format!("{endpoint}/{name}");
    let rsp = reqwest::Client::new()
        .put(format!("{url}?restype=container&{sas}"))
        .header("content-length", "0")
        .send()
        .await
        .expect("create container on Azurite");
    assert_eq!(rsp.status().as_u16(), 201, "create container {name}");
    AzureTarget {
        container_url: url,
        sas,
        require_immutability: false,
    }
}

impl Env {
    /// The archive the binary writes to, as a store the test can read.
    pub fn archive(&self) -> Arc<dyn ArchiveStore> {
        match &self.azure {
            Some(t) => Arc::new(t.store()),
            None => Arc::new(FsStore::new(self.archive_path())),
        }
    }

    /// Every key under `records/`, whatever the backend.
    pub async fn record_keys(&self) -> Vec<String> {
        self.archive().list("records/").await.expect("list records")
    }

    pub(crate) fn store_toml(&self) -> String {
        match &self.azure {
            None => format!("[store]\nkind = \"fs\"\npath = \"{}\"", self.archive_path().display()),
            Some(t) => format!(
                "[store]\nkind = \"azure\"\ncontainer_url = \"{}\"\nsas_token = \"{}\"\n\
                 require_immutability = {}\nmax_retries = 2\nretry_delay = \"50ms\"\nstaging_path = \"{}\"",
                t.container_url,
                t.sas,
                t.require_immutability,
                self.dir.path().join("staging").display()
            ),
        }
    }

    /// The test's extra TOML; an Azure store needs retention rules, so a default is added.
    pub(crate) fn extra_toml(&self, o: &Opts) -> String {
        if self.azure.is_some() && !o.extra.contains("[retention") {
            format!(
                "{}\n[retention.default]\nretain = \"7y\"\nmode = \"unlocked\"\n",
                o.extra
            )
        } else {
            o.extra.clone()
        }
    }
}
