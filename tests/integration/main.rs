//! Integration tests: the real binary against the Graph simulator over HTTP, on SQLite and on
//! PostgreSQL, with a real archive folder.

mod helpers;

mod boundaries;
mod crash;
mod end_to_end;
mod errors;
