//! Bearer API keys and tenants. Each key maps to one tenant, and every object belongs to the
//! tenant that created it; a tenant never sees another's objects (they answer 404).
//!
//! With no keys configured the server is open: every request acts for the tenant
//! [`OPEN_TENANT`], whatever key it sends (the SDK insists on sending one). The CLI refuses to
//! listen beyond loopback in that mode unless told to.

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::request::Parts;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// The tenant of every request when no keys are configured.
pub const OPEN_TENANT: &str = "default";

/// The tenant a request acts for; handlers take it as an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// One key of the config file: `[[api_keys]]` with `tenant` and `key`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The tenant the key acts for.
    pub tenant: String,
    /// The key, as clients send it after `Bearer `.
    pub key: String,
}

/// A key list that cannot work; the message says which entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API keys: {0}")]
pub struct KeysError(pub String);

/// The configured keys. Keys are kept only as BLAKE3 hashes: comparing hashes of equal length
/// in constant time (`blake3::Hash`'s `==` is constant-time) reveals neither a key's bytes nor
/// its length through timing.
#[derive(Clone, Default)]
pub struct Tenants {
    keys: Vec<(blake3::Hash, String)>,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self.keys.iter().map(|(_, t)| t.as_str()).collect();
        f.debug_struct("Tenants")
            .field("tenants", &tenants)
            .finish()
    }
}

impl Tenants {
    /// No keys: the server is open, every request acts for [`OPEN_TENANT`].
    pub fn open() -> Self {
        Self::default()
    }

    /// The given keys. Tenant names are 1–64 characters of letters, digits, `-`, `_` and `.`;
    /// keys are at least 8 characters and unique.
    pub fn from_entries(entries: &[ApiKeyEntry]) -> Result<Self, KeysError> {
        let mut keys: Vec<(blake3::Hash, String)> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let valid_name = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if entry.tenant.is_empty()
                || entry.tenant.len() > 64
                || !entry.tenant.chars().all(valid_name)
            {
                return Err(KeysError(format!(
                    "entry {}: tenant {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                    i + 1,
                    entry.tenant
                )));
            }
            if entry.key.len() < 8 || entry.key.chars().any(char::is_whitespace) {
                return Err(KeysError(format!(
                    "entry {} (tenant {}): a key must be at least 8 characters without spaces",
                    i + 1,
                    entry.tenant
                )));
            }
            let hash = blake3::hash(entry.key.as_bytes());
            if keys.iter().any(|(h, _)| *h == hash) {
                return Err(KeysError(format!(
                    "entry {} (tenant {}): the same key is given twice",
                    i + 1,
                    entry.tenant
                )));
            }
            keys.push((hash, entry.tenant.clone()));
        }
        Ok(Self { keys })
    }

    /// Parses `tenant:key,tenant:key` (the `FUSILLADE_API_KEYS` format). A key may contain
    /// `:`; the tenant ends at the first one.
    pub fn parse_list(text: &str) -> Result<Vec<ApiKeyEntry>, KeysError> {
        text.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once(':') {
                Some((tenant, key)) => Ok(ApiKeyEntry {
                    tenant: tenant.trim().to_string(),
                    key: key.trim().to_string(),
                }),
                None => Err(KeysError(
                    "expected tenant:key pairs separated by commas".into(),
                )),
            })
            .collect()
    }

    /// Whether no keys are configured.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant names, in configuration order (one per key).
    pub fn tenant_names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(_, t)| t.as_str())
    }

    /// The tenant of a request with this `Authorization` header value.
    pub fn resolve(&self, authorization: Option<&str>) -> Result<Tenant, ApiError> {
        if self.is_open() {
            return Ok(Tenant(OPEN_TENANT.to_string()));
        }
        let Some(key) = authorization.and_then(bearer_token) else {
            return Err(ApiError::Unauthorized {
                message: "You didn't provide an API key. Send it as `Authorization: Bearer KEY`."
                    .into(),
                code: "missing_api_key",
            });
        };
        let presented = blake3::hash(key.as_bytes());
        // Every entry is compared, with no early exit, so the time taken does not depend on
        // which entry (if any) matched.
        let mut found: Option<&str> = None;
        for (hash, tenant) in &self.keys {
            if *hash == presented {
                found = Some(tenant);
            }
        }
        found
            .map(|t| Tenant(t.to_string()))
            .ok_or(ApiError::Unauthorized {
                message: "Incorrect API key provided.".into(),
                code: "invalid_api_key",
            })
    }
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: resolves the request's tenant from its key, or answers 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let tenant = state.tenants.resolve(header)?;
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Tenant>().cloned().ok_or_else(|| {
            ApiError::Internal("route is not behind the authentication middleware".into())
        })
    }
}

impl Tenant {
    /// The storage scope of this tenant.
    pub fn scope(&self) -> fusillade::storage::Scope {
        fusillade::storage::Scope::Tenant(self.0.clone())
    }
}
