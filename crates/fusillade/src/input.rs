//! Streaming parser and validator for batch input files (OpenAI Batch API JSONL).
//!
//! Bytes arrive in arbitrary chunks (an HTTP upload, a file read); [`InputParser`] splits them
//! into lines, validates each line as it completes and hands back [`NewTemplate`]s, so memory
//! stays bounded by one line plus the set of `custom_id` hashes. The first bad line stops the
//! parse with an [`InputError`] naming the line; callers store nothing in that case.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::NewTemplate;

/// The endpoint paths a line's `url` may name unless configured otherwise.
pub const DEFAULT_ALLOWED_URLS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
];

/// Limits and rules applied to every input file.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLimits {
    /// Largest accepted request body, in bytes. Default 10 MiB.
    pub max_body_bytes: usize,
    /// Largest accepted number of request lines; `None` for no limit. Default `None` (the API
    /// server sets OpenAI's 50,000).
    pub max_lines: Option<u64>,
    /// Longest accepted `custom_id`, in characters. Default 64, as OpenAI.
    pub max_custom_id_chars: usize,
    /// Accepted values of `url`. Default [`DEFAULT_ALLOWED_URLS`].
    pub allowed_urls: Vec<String>,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_lines: None,
            max_custom_id_chars: 64,
            allowed_urls: DEFAULT_ALLOWED_URLS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Why an input file was rejected. `Display` gives `Line N: what is wrong` for line errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    /// The 1-based physical line at fault, if the problem is one line.
    pub line: Option<u64>,
    /// What is wrong, without the line prefix.
    pub message: String,
}

impl InputError {
    fn at(line: u64, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            message: message.into(),
        }
    }

    fn file(message: impl Into<String>) -> Self {
        Self {
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "Line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What the parser learned about the whole file once it ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSummary {
    /// Bytes read.
    pub bytes: u64,
    /// Request lines (blank lines are not counted).
    pub lines: u64,
    /// Hex BLAKE3 hash of every byte read.
    pub content_hash: String,
}

/// Incremental parser: feed chunks with [`InputParser::push`], then call
/// [`InputParser::finish`].
pub struct InputParser {
    limits: InputLimits,
    /// Bytes of the line being assembled (without its newline).
    partial: Vec<u8>,
    /// Physical line number of the next line to complete (1-based).
    next_line: u64,
    request_lines: u64,
    bytes: u64,
    hasher: blake3::Hasher,
    /// A 128-bit hash of each `custom_id` seen: 16 bytes an entry instead of the whole string
    /// keeps a million-line file within the memory budget, and two different ids sharing a
    /// hash is too unlikely to ever happen (about 1 in 10^26 for a million lines). Keeping the
    /// first line of each id too would double the table, so a duplicate names only its own line.
    seen_custom_ids: HashSet<u128>,
}

impl InputParser {
    /// A parser applying `limits`.
    pub fn new(limits: InputLimits) -> Self {
        Self {
            limits,
            partial: Vec::new(),
            next_line: 1,
            request_lines: 0,
            bytes: 0,
            hasher: blake3::Hasher::new(),
            seen_custom_ids: HashSet::new(),
        }
    }

    /// Consumes a chunk and returns the templates of every line it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<NewTemplate>, InputError> {
        self.bytes += chunk.len() as u64;
        self.hasher.update(chunk);
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.complete_line(head, &mut out)?;
            } else {
                self.partial.extend_from_slice(head);
                let line = std::mem::take(&mut self.partial);
                self.complete_line(&line, &mut out)?;
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > self.max_line_bytes() {
            return Err(self.line_too_long(self.next_line));
        }
        Ok(out)
    }

    /// Ends the input: parses a last line without a newline and checks the file as a whole.
    pub fn finish(mut self) -> Result<(Vec<NewTemplate>, InputSummary), InputError> {
        let mut out = Vec::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.complete_line(&line, &mut out)?;
        }
        if self.request_lines == 0 {
            return Err(InputError::file(
                "the file contains no requests (it is empty or has only blank lines)",
            ));
        }
        let summary = InputSummary {
            bytes: self.bytes,
            lines: self.request_lines,
            content_hash: self.hasher.finalize().to_hex().to_string(),
        };
        Ok((out, summary))
    }

    /// A line may hold a body of the maximum size plus its JSON envelope.
    fn max_line_bytes(&self) -> usize {
        self.limits.max_body_bytes + 64 * 1024
    }

    fn line_too_long(&self, line: u64) -> InputError {
        InputError::at(
            line,
            format!(
                "the line is longer than {} bytes (the request body limit is {} bytes)",
                self.max_line_bytes(),
                self.limits.max_body_bytes
            ),
        )
    }

    fn complete_line(&mut self, raw: &[u8], out: &mut Vec<NewTemplate>) -> Result<(), InputError> {
        let line_no = self.next_line;
        self.next_line += 1;
        if raw.len() > self.max_line_bytes() {
            return Err(self.line_too_long(line_no));
        }
        let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line_no == 1 {
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let text = std::str::from_utf8(raw).map_err(|e| {
            InputError::at(
                line_no,
                format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
            )
        })?;
        self.request_lines += 1;
        if let Some(max) = self.limits.max_lines
            && self.request_lines > max
        {
            return Err(InputError::at(
                line_no,
                format!("the file has more than {max} requests, the limit"),
            ));
        }
        let template = validate_line(text, line_no, &self.limits)?;
        self.check_unique(&template)?;
        out.push(template);
        Ok(())
    }

    fn check_unique(&mut self, template: &NewTemplate) -> Result<(), InputError> {
        let digest = blake3::hash(template.custom_id.as_bytes());
        let key = u128::from_le_bytes(digest.as_bytes()[..16].try_into().expect("16 bytes"));
        if !self.seen_custom_ids.insert(key) {
            return Err(InputError::at(
                template.line,
                format!(
                    "custom_id {:?} is already used on an earlier line; each custom_id must be unique in the file",
                    template.custom_id
                ),
            ));
        }
        Ok(())
    }
}

/// The envelope of one line, with each field kept raw so type errors can be named precisely.
/// A field is `None` only when its key is absent: `null` is kept, as a value of the wrong type.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    url: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
}

/// The two body fields Fusillade reads; every other field is passed through untouched.
#[derive(Deserialize)]
struct BodyProbe<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
}

/// A field that is there, whatever its value. (`Option`'s own impl would read `null` as
/// absent, and report `"custom_id": null` as a missing field.)
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

fn validate_line(text: &str, line: u64, limits: &InputLimits) -> Result<NewTemplate, InputError> {
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        return Err(InputError::at(line, "each line must be a JSON object"));
    }
    let raw: RawLine<'_> = serde_json::from_str(trimmed)
        .map_err(|e| InputError::at(line, format!("invalid JSON ({})", json_reason(&e))))?;
    let custom_id = string_field(raw.custom_id, "custom_id", line)?;
    check_custom_id(&custom_id, line, limits)?;
    let method = string_field(raw.method, "method", line)?;
    if !method.eq_ignore_ascii_case("POST") {
        return Err(InputError::at(
            line,
            format!("method must be \"POST\" (got {method:?})"),
        ));
    }
    let url = string_field(raw.url, "url", line)?;
    if !limits.allowed_urls.contains(&url) {
        return Err(InputError::at(
            line,
            format!(
                "url {url:?} is not supported; allowed: {}",
                limits.allowed_urls.join(", ")
            ),
        ));
    }
    let body = raw
        .body
        .ok_or_else(|| InputError::at(line, "missing field \"body\""))?
        .get();
    let model = validate_body(body, line, limits)?;
    Ok(NewTemplate {
        line,
        custom_id,
        url,
        model,
        body: body.to_string(),
    })
}

fn validate_body(body: &str, line: u64, limits: &InputLimits) -> Result<String, InputError> {
    if !body.starts_with('{') {
        return Err(InputError::at(line, "body must be a JSON object"));
    }
    if body.len() > limits.max_body_bytes {
        return Err(InputError::at(
            line,
            format!(
                "body is {} bytes; the limit is {} bytes",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    let probe: BodyProbe<'_> = serde_json::from_str(body)
        .map_err(|e| InputError::at(line, format!("invalid JSON in body ({})", json_reason(&e))))?;
    if let Some(stream) = probe.stream
        && stream.get() == "true"
    {
        return Err(InputError::at(
            line,
            "body.stream is true; streamed responses are not supported in batches",
        ));
    }
    let model = probe
        .model
        .ok_or_else(|| InputError::at(line, "body.model is missing"))?;
    let model: String = serde_json::from_str(model.get())
        .map_err(|_| InputError::at(line, "body.model must be a string"))?;
    if model.is_empty() {
        return Err(InputError::at(line, "body.model is empty"));
    }
    Ok(model)
}

fn string_field(value: Option<&RawValue>, name: &str, line: u64) -> Result<String, InputError> {
    let value = value.ok_or_else(|| InputError::at(line, format!("missing field {name:?}")))?;
    serde_json::from_str::<String>(value.get())
        .map_err(|_| InputError::at(line, format!("{name} must be a string")))
}

fn check_custom_id(custom_id: &str, line: u64, limits: &InputLimits) -> Result<(), InputError> {
    if custom_id.is_empty() {
        return Err(InputError::at(line, "custom_id is empty"));
    }
    let chars = custom_id.chars().count();
    if chars > limits.max_custom_id_chars {
        return Err(InputError::at(
            line,
            format!(
                "custom_id is {chars} characters long; the limit is {}",
                limits.max_custom_id_chars
            ),
        ));
    }
    // custom_id travels upstream in the X-Fusillade-Custom-Id header. A header value may also
    // hold a tab, but a tab is a control character: it is refused like the others.
    if !custom_id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(InputError::at(
            line,
            "custom_id must be printable ASCII (it is sent as an HTTP header value)",
        ));
    }
    Ok(())
}

/// serde_json's message without its own "at line 1 column N" suffix, which would confuse the
/// file line number.
fn json_reason(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(pos) => format!("{} at column {}", &text[..pos], err.column()),
        None => text,
    }
}
