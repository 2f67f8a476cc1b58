//! The storage conformance suite, run against the PostgreSQL backend (one fresh database per
//! test). Skips loudly without PostgreSQL unless `FUSILLADE_REQUIRE_POSTGRES=1`.

mod conformance;
mod support;

storage_conformance!(crate::support::postgres_storage);
