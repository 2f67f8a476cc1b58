//! The stored form of upstream response bodies: always one line of JSON, so that output and
//! error files can embed a body as it is stored, without parsing it again for every download.
//!
//! A body that is JSON is stored minified (whitespace between tokens removed; tokens, key
//! order and number spellings untouched): OpenAI's own API pretty-prints its responses, and a
//! newline inside a body would split a JSONL line in two. Any other body (an HTML error page,
//! a truncated answer) is stored as a JSON string holding it, which is also how the Batch API
//! shows a body that is not JSON.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// The stored form of `body`: the body itself when it is already minified JSON (no copy).
pub(crate) fn stored_body(body: &str) -> Cow<'_, str> {
    if serde_json::from_str::<&RawValue>(body).is_err() {
        return Cow::Owned(serde_json::to_string(body).expect("a string serializes"));
    }
    minified(body)
}

/// `json` (valid JSON) without the whitespace between its tokens. Inside a string every byte
/// is kept: JSON forbids raw control characters there, so a space is the only whitespace a
/// string can hold as is, and it is part of the value.
fn minified(json: &str) -> Cow<'_, str> {
    let bytes = json.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        let keep = if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            true
        } else {
            in_string = b == b'"';
            !matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        };
        match (&mut out, keep) {
            (Some(out), true) => out.push(b),
            (None, false) => out = Some(bytes[..i].to_vec()),
            _ => {}
        }
    }
    match out {
        None => Cow::Borrowed(json),
        // Only ASCII whitespace was taken out, so what is left is still UTF-8.
        Some(out) => Cow::Owned(String::from_utf8(out).expect("still UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minified_json_is_stored_as_it_came_without_a_copy() {
        let body = r#"{"id":"x","choices":[{"text":"a b"}],"n":1.50}"#;
        assert!(matches!(stored_body(body), Cow::Borrowed(b) if b == body));
    }

    #[test]
    fn pretty_json_loses_only_the_whitespace_between_tokens() {
        let pretty = "\r\n {\n  \"text\" : \"two  spaces, a \\\"quote\\\" and \\\\\",\n\t\"n\": \
                      1.50e3,\n  \"list\": [ 1 , {} ,[ ] ]\n}\n";
        let stored = stored_body(pretty);
        assert_eq!(
            stored,
            r#"{"text":"two  spaces, a \"quote\" and \\","n":1.50e3,"list":[1,{},[]]}"#
        );
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(pretty).unwrap(),
            serde_json::from_str(&stored).unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn a_body_that_is_not_json_is_stored_as_a_json_string() {
        for text in [
            "not json{",
            "",
            "<html>\n<p>502</p>\n</html>",
            "{\"a\":1} trailing",
        ] {
            let stored = stored_body(text);
            assert!(!stored.contains('\n'), "{stored}");
            assert_eq!(serde_json::from_str::<String>(&stored).unwrap(), text);
        }
    }

    #[test]
    fn a_body_that_is_a_json_string_stays_one() {
        assert_eq!(stored_body(" \"hello\" "), "\"hello\"");
    }
}
