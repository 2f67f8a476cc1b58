//! Request parsing shared by the handlers: JSON bodies and query strings that fail with
//! OpenAI-shaped errors naming the parameter, page limits, and the list object.

use axum::extract::{FromRequest, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Largest JSON request body. The create request, the only JSON body, needs a few KiB at most
/// (metadata is 16 short pairs).
pub(crate) const JSON_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// `axum::Json`, but a malformed body is an [`ApiError`] in OpenAI's shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            // Too large is not malformed: 413, as the upload's size limit.
            Err(rejection) if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::BodyTooLarge(format!(
                    "The request body is larger than the limit of {JSON_BODY_LIMIT} bytes."
                )))
            }
            Err(rejection) => Err(ApiError::BadRequest {
                message: rejection.body_text(),
                param: None,
                code: None,
            }),
        }
    }
}

/// Parses a page `limit`: absent gives `default`; otherwise 1..=`max` or a 400.
pub(crate) fn page_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<i64>() {
        Ok(n) if (1..=i64::from(max)).contains(&n) => Ok(n as u32),
        _ => Err(ApiError::bad(
            "limit",
            format!("Invalid 'limit': {raw:?}. Expected an integer between 1 and {max}."),
        )),
    }
}

/// OpenAI's list object. Pages continue with `?after=<last_id>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListObject<T> {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// The items.
    pub data: Vec<T>,
    /// Id of the first item, `null` when the page is empty.
    pub first_id: Option<String>,
    /// Id of the last item, `null` when the page is empty.
    pub last_id: Option<String>,
    /// Whether more items follow.
    pub has_more: bool,
}

impl<T> ListObject<T> {
    /// A page of `data`, whose ids are read with `id`.
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> &str) -> Self {
        Self {
            object: "list",
            first_id: data.first().map(|x| id(x).to_string()),
            last_id: data.last().map(|x| id(x).to_string()),
            data,
            has_more,
        }
    }
}

/// An unknown `after` cursor is a 400: continuing from the start would repeat items.
pub(crate) fn unknown_cursor(after: &str) -> ApiError {
    ApiError::BadRequest {
        message: format!("Invalid 'after': no object with id {after:?} in this list."),
        param: Some("after"),
        code: Some("invalid_cursor"),
    }
}
