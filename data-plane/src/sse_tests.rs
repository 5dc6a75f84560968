//! Tests of the SSE scanner: fixed streams and a property test over every
//! way of splitting a stream into chunks.

use super::*;
use proptest::prelude::*;

/// A chat stream; `with_usage`: as OpenAI sends it when asked for usage
/// (`"usage":null` on every chunk, then the usage-only chunk).
fn chat_stream(sep: &str, with_usage: bool) -> Vec<u8> {
    let null = if with_usage { ",\"usage\":null" } else { "" };
    let mut s = String::new();
    for (i, word) in ["Hel", "lo", " wor", "ld"].iter().enumerate() {
        s.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}]{null},\"n\":{i}}}{sep}{sep}"
        ));
    }
    s.push_str(&format!(
        "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]{null}}}{sep}{sep}"
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
        assert_eq!(scanner.stripped(), 6, "5 nulls and the usage-only chunk");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\"choices\":[]") && !text.contains("usage"));
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
    assert_eq!(scanner.terminal(), Some(Terminal::Complete));
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
fn an_oversized_event_stops_the_scan() {
    for strip in [false, true] {
        let mut scanner = SseScanner::new(strip, 1000);
        let mut out = scanner_feed(&mut scanner, b"data: {\"choices\":[]}\n\n");
        assert!(!scanner.oversized());
        let big = [b'a'; 600];
        out.extend(scanner_feed(&mut scanner, b"data: "));
        out.extend(scanner_feed(&mut scanner, &big));
        assert!(!scanner.oversized(), "a partial line under the limit");
        out.extend(scanner_feed(&mut scanner, &big));
        assert!(scanner.oversized(), "strip {strip}");
        out.extend(scanner_feed(&mut scanner, b"\n\ndata: [DONE]\n\n"));
        assert_eq!(scanner.terminal(), None, "nothing is read past the limit");
        if strip {
            assert_eq!(out, b"data: {\"choices\":[]}\n\n");
        }
    }
    // Many lines of one event count together.
    let mut scanner = SseScanner::new(false, 1000);
    for _ in 0..20 {
        scanner.observe(&[b"data: ".as_slice(), &[b'1'; 60], b"\n"].concat());
    }
    assert!(scanner.oversized());
}

fn scanner_feed(scanner: &mut SseScanner, chunk: &[u8]) -> Vec<u8> {
    if scanner.strips() {
        scanner.filter(chunk).to_vec()
    } else {
        scanner.observe(chunk);
        chunk.to_vec()
    }
}

#[test]
fn a_long_line_is_searched_once_however_it_is_split() {
    // 1 MiB in one line, arriving 4 KiB at a time: each byte is searched
    // for a line end once (the old scanner searched the pending line from
    // its start on every chunk: 128 MiB here).
    for strip in [false, true] {
        let mut scanner = SseScanner::new(strip, MAX_EVENT);
        let line = [b"data: \"".as_slice(), &vec![b'x'; 1 << 20], b"\"\n\n"].concat();
        for chunk in line.chunks(4096) {
            scanner_feed(&mut scanner, chunk);
        }
        assert_eq!(scanner.events(), 1);
        assert!(
            scanner.searched_bytes() <= line.len() as u64,
            "searched {} bytes of {}",
            scanner.searched_bytes(),
            line.len()
        );
    }
}

#[test]
fn usage_on_a_chunk_with_a_choice_is_removed_and_the_chunk_kept() {
    // LiteLLM puts the usage the proxy asked for on a chunk with a choice.
    let stream = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],",
        "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n",
    );
    for sep in ["\n", "\r\n"] {
        let stream = stream.replace('\n', sep);
        let (out, scanner) = strip_all(&[stream.as_bytes()]);
        let expected = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        )
        .replace('\n', sep);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(scanner.usage().map(|u| u.output_tokens), Some(1));
        assert_eq!(scanner.stripped(), 1);
    }
}

#[test]
fn terminal_events_of_each_api() {
    let observe = |s: &str| observe_all(&[s.as_bytes()]).terminal();
    assert_eq!(
        observe("data: {\"choices\":[]}\n\ndata: [DONE]\n\n"),
        Some(Terminal::Complete)
    );
    assert_eq!(
        observe("data: {\"choices\":[{\"finish_reason\":\"stop\"}]}\n\n"),
        None
    );
    // Responses API, named by the event field or, without one, by type.
    assert_eq!(
        observe("event: response.incomplete\ndata: {}\n\n"),
        Some(Terminal::Complete)
    );
    assert_eq!(
        observe("event: response.failed\ndata: {}\n\n"),
        Some(Terminal::Failed)
    );
    assert_eq!(
        observe("event: error\ndata: {}\n\n"),
        Some(Terminal::Failed)
    );
    assert_eq!(
        observe("data: {\"type\":\"response.completed\",\"response\":{}}\n\n"),
        Some(Terminal::Complete)
    );
    assert_eq!(
        observe("event: response.output_text.delta\ndata: {\"delta\":\"response.completed\"}\n\n"),
        None
    );
    // An error in the middle of a chat stream, then [DONE]: the first wins.
    assert_eq!(
        observe("data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n"),
        Some(Terminal::Failed)
    );
    assert_eq!(observe("data: {\"error\":null,\"choices\":[]}\n\n"), None);
}

#[test]
fn a_comment_fits_only_between_events() {
    let mut scanner = SseScanner::observer();
    assert!(scanner.at_boundary());
    scanner.observe(b"data: {}\n");
    assert!(!scanner.at_boundary(), "inside an event");
    scanner.observe(b"\ndata: {");
    assert!(!scanner.at_boundary(), "inside a line");
    scanner.observe(b"}\n\n");
    assert!(scanner.at_boundary());
    let mut stripper = SseScanner::stripper();
    stripper.filter(b"data: {");
    assert!(stripper.at_boundary(), "partial events are held back");
}

#[test]
fn data_that_is_not_utf8_is_malformed() {
    assert_eq!(observe_all(&[b"data: {\"x\":\"\xff\"}\n\n"]).malformed(), 1);
    let usage = b"data: {\"x\":\"\xff\",\"usage\":{\"prompt_tokens\":1}}\n\n";
    assert_eq!(observe_all(&[usage]).malformed(), 1);
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
