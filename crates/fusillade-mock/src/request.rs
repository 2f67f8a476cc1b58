//! Owns request-body parsing: extracts only what the mock needs (the model and
//! how many messages/prompts/inputs there are) without building a JSON tree.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The three OpenAI endpoints the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

/// What the response builders need to know about a request.
#[derive(Debug)]
pub(crate) struct ParsedRequest {
    pub endpoint: Endpoint,
    pub model: String,
    /// Messages (chat), prompts (completions) or inputs (embeddings).
    pub items: usize,
    /// A stand-in for a tokenizer: usage numbers only need to be plausible and
    /// deterministic, so they are derived from the body size.
    pub prompt_tokens: u64,
}

// Unknown fields are skipped by serde without allocation, which keeps parsing
// cheap for large batch bodies.
#[derive(Deserialize)]
struct RequestBody {
    model: String,
    #[serde(default)]
    messages: Option<InputCount>,
    #[serde(default)]
    prompt: Option<InputCount>,
    #[serde(default)]
    input: Option<InputCount>,
}

/// Parses a request body; the error text goes into a 400 response.
pub(crate) fn parse(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest, String> {
    let parsed: RequestBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    if parsed.model.is_empty() {
        return Err("`model` must not be empty".to_owned());
    }
    let items = match endpoint {
        Endpoint::Chat => parsed.messages,
        Endpoint::Completions => parsed.prompt,
        Endpoint::Embeddings => parsed.input,
    };
    Ok(ParsedRequest {
        endpoint,
        model: parsed.model,
        items: items.map_or(0, |count| count.0),
        prompt_tokens: (body.len() as u64 / 4).max(1),
    })
}

/// Number of inputs in an OpenAI `prompt`/`input`/`messages` value: a string is
/// one input, an array of token ids is one input, any other array counts its
/// elements.
struct InputCount(usize);

impl<'de> Deserialize<'de> for InputCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = InputCount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<InputCount, E> {
        Ok(InputCount(1))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputCount, A::Error> {
        let mut count = 0;
        let mut all_tokens = true;
        while let Some(IsToken(is_token)) = seq.next_element()? {
            count += 1;
            all_tokens &= is_token;
        }
        Ok(InputCount(if count > 0 && all_tokens { 1 } else { count }))
    }
}

/// Whether an array element is a token id (a number); its content is skipped.
struct IsToken(bool);

impl<'de> Deserialize<'de> for IsToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IsTokenVisitor)
    }
}

struct IsTokenVisitor;

impl<'de> Visitor<'de> for IsTokenVisitor {
    type Value = IsToken;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<IsToken, E> {
        Ok(IsToken(true))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<IsToken, E> {
        Ok(IsToken(true))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<IsToken, E> {
        Ok(IsToken(true))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<IsToken, E> {
        Ok(IsToken(false))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<IsToken, E> {
        Ok(IsToken(false))
    }

    fn visit_unit<E: de::Error>(self) -> Result<IsToken, E> {
        Ok(IsToken(false))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IsToken, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(IsToken(false))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IsToken, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(IsToken(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(endpoint: Endpoint, body: &str) -> usize {
        parse(endpoint, body.as_bytes()).unwrap().items
    }

    #[test]
    fn counts_inputs_like_openai() {
        assert_eq!(
            items(Endpoint::Embeddings, r#"{"model":"m","input":"a"}"#),
            1
        );
        assert_eq!(
            items(Endpoint::Embeddings, r#"{"model":"m","input":["a","b"]}"#),
            2
        );
        assert_eq!(
            items(Endpoint::Embeddings, r#"{"model":"m","input":[1,2,3]}"#),
            1
        );
        assert_eq!(
            items(Endpoint::Embeddings, r#"{"model":"m","input":[[1],[2]]}"#),
            2
        );
        assert_eq!(
            items(Endpoint::Completions, r#"{"model":"m","prompt":"hi"}"#),
            1
        );
        let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"user","content":"yo"}]}"#;
        assert_eq!(items(Endpoint::Chat, chat), 2);
    }

    #[test]
    fn rejects_missing_or_empty_model_and_bad_json() {
        for body in [
            r#"{"messages":[]}"#,
            r#"{"model":""}"#,
            "not json",
            r#"{"model":"m","input":true}"#,
        ] {
            assert!(
                parse(Endpoint::Embeddings, body.as_bytes()).is_err(),
                "{body}"
            );
        }
    }
}
