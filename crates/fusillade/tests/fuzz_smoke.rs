//! A bounded, seeded fuzz run of the JSONL parser that needs no nightly toolchain, so it runs
//! with the normal test suite (the libFuzzer target is `fuzz/`, run by `scripts/fuzz.sh`).
//!
//! 20,000 inputs, each a few random mutations of a small valid file (byte flips, inserts,
//! deletions, duplicated ranges, splices of JSON and line-ending tokens), are parsed whole and
//! cut into random chunks: the parser must never panic and every cut must give the same verdict.
//! A failure prints the seed and the case; replay it with `FUSILLADE_FUZZ_SEED=<seed>`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use fusillade::input::{InputError, InputLimits, InputParser, InputSummary};
use fusillade::model::NewTemplate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CASES: usize = 20_000;
const DEFAULT_SEED: u64 = 0x5eed_f00d;

/// Tokens worth splicing in: JSON structure, escapes, line endings, the fields the parser reads.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\\",
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"\xC3",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b"\\t",
    b"\"custom_id\":",
    b"\"method\":\"POST\"",
    b"\"url\":\"/v1/embeddings\"",
    b"\"body\":{}",
    b"\"model\":\"m\"",
    b"\"stream\":true",
    b"{\"custom_id\":\"dup\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\n",
];

fn seed_file() -> Vec<u8> {
    let mut text = String::new();
    for (i, model) in ["gpt-4o", "m\u{e9}", "x"].iter().enumerate() {
        text.push_str(&format!(
            "{{\"custom_id\":\"req-{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
             \"body\":{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"a\\\"b\\n\"}}],\"n\":1}}}}\n"
        ));
        if i == 1 {
            text.push_str("  \r\n");
        }
    }
    text.into_bytes()
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = at.min(len - 1);
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            1 => bytes.insert(at, rng.random()),
            2 if at < len => {
                let end = rng.random_range(at..=len.min(at + 16));
                bytes.drain(at..end);
            }
            3 if at < len => {
                let end = rng.random_range(at..=len.min(at + 64));
                let copy = bytes[at..end].to_vec();
                let to = rng.random_range(0..=len);
                bytes.splice(to..to, copy);
            }
            4 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            _ => bytes.truncate(at),
        }
    }
}

type Verdict = Result<(Vec<NewTemplate>, InputSummary), InputError>;

fn parse(bytes: &[u8], cuts: &[usize]) -> Verdict {
    let mut parser = InputParser::new(InputLimits::default());
    let mut templates = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&bytes.len()]) {
        templates.extend(parser.push(&bytes[start..end])?);
        start = end;
    }
    let (last, summary) = parser.finish()?;
    templates.extend(last);
    Ok((templates, summary))
}

#[test]
fn mutated_files_never_panic_the_parser_and_chunking_never_changes_the_verdict() {
    let seed = std::env::var("FUSILLADE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let base = seed_file();
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..CASES {
        let mut input = base.clone();
        mutate(&mut rng, &mut input);
        let mut cuts: Vec<usize> = (0..rng.random_range(0..4))
            .map(|_| rng.random_range(0..=input.len()))
            .collect();
        cuts.sort_unstable();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let whole = parse(&input, &[]);
            (parse(&input, &cuts) == whole, whole.is_ok())
        }));
        let report = || {
            format!(
                "seed {seed} case {case}, cuts {cuts:?}, input {:?}",
                String::from_utf8_lossy(&input)
            )
        };
        match result {
            Ok((true, ok)) => {
                if ok {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
            }
            Ok((false, _)) => panic!("chunking changed the verdict: {}", report()),
            Err(_) => panic!("the parser panicked: {}", report()),
        }
    }
    // The mutations must exercise both paths, or the run proves little.
    assert!(accepted > CASES / 50, "{accepted} accepted of {CASES}");
    assert!(rejected > CASES / 2, "{rejected} rejected of {CASES}");
}
