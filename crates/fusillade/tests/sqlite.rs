//! The storage conformance suite, run against the embedded SQLite backend.

mod conformance;
mod support;

storage_conformance!(crate::support::sqlite_storage);
