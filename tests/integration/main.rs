//! Integration tests: the real binary against the Graph simulator over HTTP, on SQLite and on
//! PostgreSQL, with a real archive folder.

mod daemon;
mod helpers;

mod azure;
mod azure_env;
mod blob_double;
mod compliance;
mod worm;

mod boundaries;
mod chaos;
mod chaos_infra;
mod crash;
mod end_to_end;
mod errors;
mod notifications;
mod notifications_catchup;
mod notifications_hostile;
mod polling;
mod quarantine;
mod replicas;
mod service;
mod teams;
mod tenants;
