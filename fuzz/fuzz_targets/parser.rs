//! The JSONL parser on arbitrary bytes: it never panics, cutting the input into chunks never
//! changes its verdict, and what it accepts is consistent (line numbers rising, every request
//! counted, custom_ids unique, models non-empty).

#![no_main]

use std::collections::HashSet;

use fusillade::input::{InputError, InputLimits, InputParser, InputSummary};
use fusillade::model::NewTemplate;
use libfuzzer_sys::fuzz_target;

type Verdict = Result<(Vec<NewTemplate>, InputSummary), InputError>;

/// Parses `bytes` fed in pieces of `chunk` bytes.
fn parse(bytes: &[u8], chunk: usize) -> Verdict {
    let mut parser = InputParser::new(InputLimits::default());
    let mut templates = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        templates.extend(parser.push(piece)?);
    }
    let (last, summary) = parser.finish()?;
    templates.extend(last);
    Ok((templates, summary))
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size for the second parse.
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let whole = parse(bytes, bytes.len());
    assert_eq!(parse(bytes, usize::from(chunk) + 1), whole);
    if let Ok((templates, summary)) = whole {
        assert_eq!(summary.lines, templates.len() as u64);
        assert!(templates.windows(2).all(|w| w[0].line < w[1].line));
        let ids: HashSet<&str> = templates.iter().map(|t| t.custom_id.as_str()).collect();
        assert_eq!(ids.len(), templates.len());
        assert!(templates.iter().all(|t| !t.model.is_empty()));
    }
});
