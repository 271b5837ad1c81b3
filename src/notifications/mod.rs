//! Change notifications for Copilot interactions (seed 001): near-real-time capture.
//!
//! Graph posts each new aiInteraction, encrypted, to our webhook. The receiver (`receiver`)
//! checks the post (`payload`: clientState, `tokens`: validation tokens, `crypto`:
//! dataSignature and decryption), queues the accepted items in the state database (`queue`)
//! and answers 202; the worker (`worker`) decrypts each queued item and archives it through
//! the same `Ingestor` and dedup as polling. Polling stays the completeness backstop: a
//! notification only makes a record arrive sooner, never decides whether it arrives.
//!
//! `subscriptions` keeps the Graph subscriptions alive (one process, under a lease),
//! `catchup` and `adaptive` decide when polling must run now and when it may wait, `runtime`
//! wires all of it into the daemon, `settings` is the `[notifications]` section, `cert` makes
//! the encryption certificate and `cli` shows the state to operators.

pub mod adaptive;
pub mod catchup;
pub mod cert;
pub mod cli;
pub mod crypto;
pub mod payload;
pub mod queue;
pub mod receiver;
pub mod runtime;
pub mod settings;
pub mod subscriptions;
pub mod tokens;
pub mod worker;

pub use payload::{Accepted, DecryptionKey, ItemKind, Rejection, Verifier};
pub use queue::{NotificationQueue, QueuedItem};
pub use tokens::TokenValidator;
