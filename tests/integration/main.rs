//! Integration tests: the real binary against the Graph simulator over HTTP, on SQLite and on
//! PostgreSQL, with a real archive folder.

mod helpers;

mod azure;
mod azure_env;
mod blob_double;
mod compliance;
mod worm;

mod boundaries;
mod crash;
mod end_to_end;
mod errors;
mod quarantine;
mod service;
mod teams;
