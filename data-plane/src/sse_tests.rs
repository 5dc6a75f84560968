//! Tests of the SSE scanner: fixed streams and a property test over every
//! way of splitting a stream into chunks.

use super::*;
use proptest::prelude::*;

fn chat_stream(sep: &str, with_usage: bool) -> Vec<u8> {
    let mut s = String::new();
    for (i, word) in ["Hel", "lo", " wor", "ld"].iter().enumerate() {
        s.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}],\"usage\":null,\"n\":{i}}}{sep}{sep}"
        ));
    }
    s.push_str(&format!(
        "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":null}}{sep}{sep}"
    ));
    if with_usage {
        s.push_str(&format!(
            "data: {{\"id\":\"c\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":4,\"total_tokens\":16}}}}{sep}{sep}"
        ));
    }
    s.push_str(&format!(
        ": keep-alive comment{sep}{sep}data: [DONE]{sep}{sep}"
    ));
    s.into_bytes()
}

fn responses_stream() -> Vec<u8> {
    concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\n",
        "data: \"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":9,\"output_tokens\":5}}}\n\n",
    )
    .as_bytes()
    .to_vec()
}

/// Runs a stripping scanner over `chunks`; returns what the client gets.
fn strip_all(chunks: &[&[u8]]) -> (Vec<u8>, SseScanner) {
    let mut scanner = SseScanner::stripper();
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&scanner.filter(chunk));
    }
    out.extend_from_slice(&scanner.finish());
    (out, scanner)
}

fn observe_all(chunks: &[&[u8]]) -> SseScanner {
    let mut scanner = SseScanner::observer();
    for chunk in chunks {
        scanner.observe(chunk);
    }
    scanner.finish();
    scanner
}

fn split_at(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunks.push(&bytes[from..cut]);
        from = cut;
    }
    chunks.push(&bytes[from..]);
    chunks
}

#[test]
fn strips_the_usage_chunk_and_keeps_the_rest() {
    for sep in ["\n", "\r\n"] {
        let stream = chat_stream(sep, true);
        let (out, scanner) = strip_all(&[&stream]);
        assert_eq!(out, chat_stream(sep, false), "separator {sep:?}");
        assert_eq!(
            scanner.usage(),
            Some(Usage {
                input_tokens: 12,
                output_tokens: 4
            })
        );
        assert!(scanner.saw_done());
        assert_eq!(scanner.stripped(), 1);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\"choices\":[]"));
        assert_eq!(text.matches("\"content\"").count(), 4);
        assert!(text.ends_with(&format!("data: [DONE]{sep}{sep}")));
    }
}

#[test]
fn observe_reads_usage_of_responses_stream() {
    let scanner = observe_all(&[&responses_stream()]);
    assert_eq!(
        scanner.usage(),
        Some(Usage {
            input_tokens: 9,
            output_tokens: 5
        })
    );
    assert_eq!(scanner.events(), 3);
    assert!(!scanner.saw_done());
}

#[test]
fn holds_partial_events_until_complete() {
    let mut scanner = SseScanner::stripper();
    assert!(scanner.filter(b"data: {\"choices\":[{}]}").is_empty());
    assert!(scanner.filter(b"\n").is_empty());
    assert_eq!(
        &scanner.filter(b"\ndata: x")[..],
        b"data: {\"choices\":[{}]}\n\n"
    );
    assert_eq!(&scanner.finish()[..], b"data: x");
}

#[test]
fn unterminated_last_event_still_counts() {
    let scanner =
        observe_all(&[b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}"]);
    assert_eq!(
        scanner.usage(),
        Some(Usage {
            input_tokens: 1,
            output_tokens: 2
        })
    );
}

#[test]
fn oversized_event_is_forwarded_unread() {
    let mut big = b"data: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_PENDING + 10));
    big.extend_from_slice(b"\r");
    let mut scanner = SseScanner::stripper();
    let mut out = scanner.filter(&big).to_vec();
    out.extend_from_slice(&scanner.filter(b"\n\r\ndata: [DONE]\n\n"));
    out.extend_from_slice(&scanner.finish());
    let mut expected = big.clone();
    expected.extend_from_slice(b"\n\r\ndata: [DONE]\n\n");
    assert_eq!(out, expected);
    assert!(scanner.saw_done());
}

#[test]
fn events_whose_data_is_not_json_are_counted_and_still_forwarded() {
    let good = chat_stream("\n", true);
    assert_eq!(observe_all(&[&good]).malformed(), 0);
    assert_eq!(observe_all(&[&responses_stream()]).malformed(), 0);
    let bad: &[u8] = b"data: {\"id\":\"x\",\"choices\":[{\n\ndata: this is not json\n\n: comment\n\ndata:\n\ndata: {\"usage\": 5\n\n";
    assert_eq!(observe_all(&[bad]).malformed(), 3);
    let (out, scanner) = strip_all(&[bad]);
    assert_eq!(out, bad, "malformed events are relayed as they are");
    assert_eq!(scanner.malformed(), 3);
}

proptest! {
    #[test]
    fn any_bytes_never_panic_and_strip_only_the_usage_chunk(
        pieces in proptest::collection::vec(prop::sample::select(vec![
            "data: ", "data:", "event: x", ": c", "\n", "\r\n", "\r", "{", "}", "[", "]",
            "\"usage\":", "{\"prompt_tokens\":3,\"completion_tokens\":4}", "\"choices\":",
            ",", "null", "[DONE]", "x", "\u{e9}", "\u{0}",
        ]), 0..60),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = pieces.concat().into_bytes();
        // Arbitrary input: no panic, the same verdicts whatever the split,
        // and nothing is lost when there is no usage-only chunk to drop.
        let (whole, whole_scanner) = strip_all(&[&stream]);
        let (split, split_scanner) = strip_all(&split_at(&stream, cuts));
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(split_scanner.malformed(), whole_scanner.malformed());
        if whole_scanner.stripped() == 0 {
            prop_assert_eq!(&whole, &stream);
        }
    }

    #[test]
    fn any_split_strips_the_same(cuts in proptest::collection::vec(any::<usize>(), 0..12), crlf in any::<bool>()) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let stream = chat_stream(sep, true);
        let (whole, whole_scanner) = strip_all(&[&stream]);
        let (split, split_scanner) = strip_all(&split_at(&stream, cuts));
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(split_scanner.usage(), whole_scanner.usage());
        prop_assert_eq!(split_scanner.events(), whole_scanner.events());
        prop_assert!(split_scanner.saw_done());
    }

    #[test]
    fn any_split_observes_the_same(cuts in proptest::collection::vec(any::<usize>(), 0..12), responses in any::<bool>()) {
        let stream = if responses { responses_stream() } else { chat_stream("\r\n", true) };
        let whole = observe_all(&[&stream]);
        let split = observe_all(&split_at(&stream, cuts));
        prop_assert!(whole.usage().is_some());
        prop_assert_eq!(split.usage(), whole.usage());
        prop_assert_eq!(split.events(), whole.events());
        prop_assert_eq!(split.saw_done(), whole.saw_done());
    }

    #[test]
    fn byte_by_byte_equals_whole(crlf in any::<bool>()) {
        let stream = chat_stream(if crlf { "\r\n" } else { "\n" }, true);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(strip_all(&bytes).0, strip_all(&[&stream]).0);
    }
}
