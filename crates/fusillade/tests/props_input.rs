//! Property tests of the streaming JSONL parser (`fusillade::input::InputParser`):
//!
//! - a generated valid file (escapes, unicode, BOM, CRLF, blank lines, optional last newline,
//!   extra envelope keys, any key order) round-trips: every template keeps its custom_id, url,
//!   model, body text and physical line number, and blank lines are skipped;
//! - the result is the same however the bytes are cut into chunks;
//! - arbitrary bytes never panic the parser, and chunking never changes its verdict;
//! - any single corrupted line is reported with its own line number.

use fusillade::input::{DEFAULT_ALLOWED_URLS, InputError, InputLimits, InputParser, InputSummary};
use fusillade::model::NewTemplate;
use proptest::prelude::*;
use proptest::sample::Index;

/// Feeds `bytes` to a parser in pieces cut at `cuts` (indexes into `bytes`, in any order).
fn parse(bytes: &[u8], cuts: &[Index]) -> Result<(Vec<NewTemplate>, InputSummary), InputError> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(bytes.len());
    at.sort_unstable();
    let mut parser = InputParser::new(InputLimits::default());
    let mut templates = Vec::new();
    let mut start = 0;
    for end in at {
        templates.extend(parser.push(&bytes[start..end])?);
        start = end;
    }
    let (last, summary) = parser.finish()?;
    templates.extend(last);
    Ok((templates, summary))
}

/// One request line of a generated file.
#[derive(Debug, Clone)]
struct Request {
    custom_id: String,
    url: &'static str,
    /// `POST`, in any case.
    method: &'static str,
    model: String,
    content: String,
    /// Put `model` after `messages` in the body.
    model_last: bool,
    /// Put `body` first in the envelope and add a key Fusillade ignores.
    body_first: bool,
    /// Blank lines (without their endings) before this request.
    blanks_before: Vec<&'static str>,
    crlf: bool,
}

impl Request {
    fn body(&self) -> String {
        let model = serde_json::to_string(&self.model).unwrap();
        let messages = serde_json::json!([{"role": "user", "content": self.content}]);
        if self.model_last {
            format!(r#"{{"messages":{messages},"model":{model},"temperature":0.5}}"#)
        } else {
            format!(r#"{{"model":{model},"messages":{messages}}}"#)
        }
    }

    fn text(&self) -> String {
        let id = serde_json::to_string(&self.custom_id).unwrap();
        let url = serde_json::to_string(self.url).unwrap();
        let (method, body) = (self.method, self.body());
        if self.body_first {
            format!(
                r#"{{"body":{body}, "x_extra":[1,{{"a":null}}],"url":{url},"method":"{method}","custom_id":{id}}}"#
            )
        } else {
            format!(r#"{{"custom_id":{id},"method":"{method}","url":{url},"body":{body}}}"#)
        }
    }
}

/// A whole generated file.
#[derive(Debug, Clone)]
struct Spec {
    bom: bool,
    requests: Vec<Request>,
    trailing_blanks: Vec<&'static str>,
    final_newline: bool,
}

/// A file rendered to bytes, with where each request line is.
struct Rendered {
    bytes: Vec<u8>,
    /// Physical line number of each request.
    lines: Vec<u64>,
}

impl Spec {
    /// Renders the file, with request `replace.0`'s line text swapped for `replace.1`.
    fn render_with(&self, replace: Option<(usize, &[u8])>) -> Rendered {
        let mut physical: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut lines = Vec::new();
        for (i, r) in self.requests.iter().enumerate() {
            for blank in &r.blanks_before {
                physical.push((blank.as_bytes().to_vec(), r.crlf));
            }
            let text = match replace {
                Some((k, bad)) if k == i => bad.to_vec(),
                _ => r.text().into_bytes(),
            };
            physical.push((text, r.crlf));
            lines.push(physical.len() as u64);
        }
        for blank in &self.trailing_blanks {
            physical.push((blank.as_bytes().to_vec(), false));
        }
        let mut bytes = Vec::new();
        if self.bom {
            bytes.extend_from_slice(b"\xEF\xBB\xBF");
        }
        let count = physical.len();
        for (n, (text, crlf)) in physical.into_iter().enumerate() {
            bytes.extend_from_slice(&text);
            if n + 1 < count || self.final_newline {
                bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
        }
        Rendered { bytes, lines }
    }

    fn render(&self) -> Rendered {
        self.render_with(None)
    }

    fn expected(&self, lines: &[u64]) -> Vec<NewTemplate> {
        self.requests
            .iter()
            .zip(lines)
            .map(|(r, &line)| NewTemplate {
                line,
                custom_id: r.custom_id.clone(),
                url: r.url.to_string(),
                model: r.model.clone(),
                body: r.body(),
            })
            .collect()
    }
}

fn blank() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "\t", "  \t ", "\r"])
}

fn request(custom_id: String) -> impl Strategy<Value = Request> {
    (
        prop::sample::select(DEFAULT_ALLOWED_URLS.to_vec()),
        prop::sample::select(vec!["POST", "post", "Post"]),
        "\\PC{1,16}",
        prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(blank(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            move |(url, method, model, content, model_last, body_first, blanks_before, crlf)| {
                Request {
                    custom_id: custom_id.clone(),
                    url,
                    method,
                    model,
                    content,
                    model_last,
                    body_first,
                    blanks_before,
                    crlf,
                }
            },
        )
}

fn spec() -> impl Strategy<Value = Spec> {
    // Printable ASCII, quotes and backslashes included: they must survive JSON escaping.
    prop::collection::btree_set("[ -~]{1,24}", 1..12)
        .prop_flat_map(|ids| ids.into_iter().map(request).collect::<Vec<_>>())
        .prop_flat_map(|requests| {
            (
                any::<bool>(),
                Just(requests),
                prop::collection::vec(blank(), 0..3),
                any::<bool>(),
            )
        })
        .prop_map(|(bom, requests, trailing_blanks, final_newline)| Spec {
            bom,
            requests,
            trailing_blanks,
            final_newline,
        })
}

/// Ways to break one request line, each of which must be reported on that line.
#[derive(Debug, Clone)]
enum Corruption {
    /// Cut the line short (a strict prefix of an object is never valid JSON).
    Truncate(Index),
    /// Put a byte that is never valid UTF-8 somewhere in the line.
    InvalidByte(Index),
    /// Reuse the custom_id of an earlier request.
    DuplicateId(Index),
    /// Send it somewhere unsupported.
    UnknownUrl,
    /// Drop `body.model`.
    NoModel,
    /// Make it a GET.
    Get,
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        any::<Index>().prop_map(Corruption::Truncate),
        any::<Index>().prop_map(Corruption::InvalidByte),
        any::<Index>().prop_map(Corruption::DuplicateId),
        Just(Corruption::UnknownUrl),
        Just(Corruption::NoModel),
        Just(Corruption::Get),
    ]
}

/// The bad text for request `k` of `spec`.
fn corrupt(spec: &Spec, k: usize, how: &Corruption) -> Vec<u8> {
    let good = spec.requests[k].clone();
    match how {
        Corruption::Truncate(at) => {
            let text = good.text().into_bytes();
            // Keep at least the `{` so the line is not blank.
            text[..1 + at.index(text.len() - 1)].to_vec()
        }
        Corruption::InvalidByte(at) => {
            let mut text = good.text().into_bytes();
            text.insert(at.index(text.len() + 1), 0xFF);
            text
        }
        Corruption::DuplicateId(earlier) if k > 0 => Request {
            custom_id: spec.requests[earlier.index(k)].custom_id.clone(),
            ..good
        }
        .text()
        .into_bytes(),
        Corruption::DuplicateId(_) | Corruption::Get => Request {
            method: "GET",
            ..good
        }
        .text()
        .into_bytes(),
        Corruption::UnknownUrl => Request {
            url: "/v1/images/generations",
            ..good
        }
        .text()
        .into_bytes(),
        Corruption::NoModel => {
            let id = serde_json::to_string(&good.custom_id).unwrap();
            format!(
                r#"{{"custom_id":{id},"method":"POST","url":"{}","body":{{}}}}"#,
                good.url
            )
            .into_bytes()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn valid_files_round_trip_however_they_are_chunked(
        spec in spec(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let rendered = spec.render();
        let expected = spec.expected(&rendered.lines);
        let (whole, summary) = parse(&rendered.bytes, &[]).expect("a valid file parses");
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(summary.lines, expected.len() as u64);
        prop_assert_eq!(summary.bytes, rendered.bytes.len() as u64);
        prop_assert_eq!(
            summary.content_hash.clone(),
            blake3::hash(&rendered.bytes).to_hex().to_string()
        );
        let chunked = parse(&rendered.bytes, &cuts).expect("a valid file parses in chunks");
        prop_assert_eq!(chunked, (whole, summary));
    }

    #[test]
    fn one_corrupted_line_is_reported_with_its_line_number(
        spec in spec(),
        pick in any::<Index>(),
        how in corruption(),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let k = pick.index(spec.requests.len());
        let bad = corrupt(&spec, k, &how);
        let rendered = spec.render_with(Some((k, &bad)));
        let whole = parse(&rendered.bytes, &[]);
        let err = whole.clone().expect_err("a corrupted file is rejected");
        prop_assert_eq!(err.line, Some(rendered.lines[k]), "{}", err);
        prop_assert_eq!(parse(&rendered.bytes, &cuts), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_never_changes_the_verdict(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let whole = parse(&bytes, &[]);
        prop_assert_eq!(parse(&bytes, &cuts), whole);
    }

    #[test]
    fn mangled_json_lines_never_panic_and_chunking_never_changes_the_verdict(
        spec in spec(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        // Byte edits of a valid file reach deeper into validation than random bytes do.
        let mut bytes = spec.render().bytes;
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let whole = parse(&bytes, &[]);
        prop_assert_eq!(parse(&bytes, &cuts), whole);
    }
}
