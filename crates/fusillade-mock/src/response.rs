//! Owns the OpenAI-shaped response bodies: the success objects for each
//! endpoint and the `{"error":{...}}` envelope.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::request::{Endpoint, ParsedRequest};

/// Identifies one response: `serial` feeds both the object id and `x-request-id`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseIds {
    pub serial: u64,
    pub created: u64,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: ChatMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<TextChoice>,
    usage: Usage,
}

#[derive(Serialize)]
struct TextChoice {
    text: String,
    index: usize,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: [f32; 8],
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// Serialized success object for `request`'s endpoint (compact JSON).
pub(crate) fn success_body(request: &ParsedRequest, ids: ResponseIds) -> Vec<u8> {
    let serialized = match request.endpoint {
        Endpoint::Chat => serde_json::to_vec(&chat_completion(request, ids)),
        Endpoint::Completions => serde_json::to_vec(&text_completion(request, ids)),
        Endpoint::Embeddings => serde_json::to_vec(&embedding_list(request)),
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serialized.expect("response serialization")
}

fn chat_completion(request: &ParsedRequest, ids: ResponseIds) -> ChatCompletion<'_> {
    let content = format!("mock reply to {} messages", request.items);
    let completion_tokens = word_count(&content);
    ChatCompletion {
        id: format!("chatcmpl-mock{:016x}", ids.serial),
        object: "chat.completion",
        created: ids.created,
        model: &request.model,
        choices: [ChatChoice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content,
            },
            logprobs: None,
            finish_reason: "stop",
        }],
        usage: Usage::new(request.prompt_tokens, completion_tokens),
    }
}

fn text_completion(request: &ParsedRequest, ids: ResponseIds) -> TextCompletion<'_> {
    // OpenAI answers every prompt of a batch, and a missing prompt still gets one.
    let prompts = request.items.max(1);
    let choices: Vec<TextChoice> = (0..prompts)
        .map(|index| TextChoice {
            text: format!("mock completion of prompt {index}"),
            index,
            logprobs: None,
            finish_reason: "stop",
        })
        .collect();
    let completion_tokens = choices.iter().map(|c| word_count(&c.text)).sum();
    TextCompletion {
        id: format!("cmpl-mock{:016x}", ids.serial),
        object: "text_completion",
        created: ids.created,
        model: &request.model,
        choices,
        usage: Usage::new(request.prompt_tokens, completion_tokens),
    }
}

fn embedding_list(request: &ParsedRequest) -> EmbeddingList<'_> {
    let data = (0..request.items)
        .map(|index| Embedding {
            object: "embedding",
            index,
            embedding: embedding_for(index),
        })
        .collect();
    EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: EmbeddingUsage {
            prompt_tokens: request.prompt_tokens,
            total_tokens: request.prompt_tokens,
        },
    }
}

/// Deterministic, distinct-per-index vector with values in [-0.5, 0.5).
fn embedding_for(index: usize) -> [f32; 8] {
    std::array::from_fn(|j| {
        let step = (index * 8 + j + 1) as f64 * 0.618_033_988_749_895;
        (step.fract() - 0.5) as f32
    })
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: Option<()>,
}

/// The OpenAI error `type` a real server would use for `status`.
pub(crate) fn error_type_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

/// An OpenAI-style error response.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            message,
            kind: error_type_for(status),
            param: None,
            code: None,
        },
    };
    let body = serde_json::to_vec(&envelope).expect("error serialization");
    json_response(status, body)
}

/// A 429 like OpenAI's, telling the client when to come back.
pub(crate) fn rate_limit_response(retry_after: HeaderValue) -> Response {
    let message = "Rate limit reached (injected by fusillade-mock)";
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after);
    response
}

/// A response with a JSON content type and a fully buffered body.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_matches_openai_shape() {
        let response = error_response(StatusCode::TOO_MANY_REQUESTS, "slow down");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                message: "slow down",
                kind: "rate_limit_error",
                param: None,
                code: None,
            },
        };
        let json = serde_json::to_string(&envelope).unwrap();
        let expected = r#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}"#;
        assert_eq!(json, expected);
    }

    #[test]
    fn embeddings_differ_per_index() {
        assert_ne!(embedding_for(0), embedding_for(1));
        assert!(embedding_for(3).iter().all(|v| (-0.5..0.5).contains(v)));
    }
}
