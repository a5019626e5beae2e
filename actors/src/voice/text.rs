//! Word-level helpers for turn-taking: backchannels, unfinished phrases, requests for a
//! person, and cutting streamed model text into speakable pieces.

/// Words that acknowledge without taking the turn ("uh-huh", "okay", "right").
const BACKCHANNEL: &[&str] = &[
    "uh-huh", "uhhuh", "mhm", "mm-hmm", "mmhmm", "mm", "hmm", "uh", "um", "umm", "oh", "ah",
    "okay", "ok", "yeah", "yep", "yes", "right", "sure", "alright", "got", "it", "i", "see",
];

/// Words of someone picking up the phone ("hello?", "hi, who's this?", "Bob speaking").
const SALUTATIONS: &[&str] = &[
    "hello",
    "hi",
    "hey",
    "hiya",
    "howdy",
    "hallo",
    "yo",
    "speaking",
    "good",
    "morning",
    "afternoon",
    "evening",
    "who",
    "who's",
    "whos",
    "is",
    "this",
    "it's",
    "there",
];

/// Words after which a speaker usually goes on.
const CONTINUATIONS: &[&str] = &[
    "and", "or", "but", "so", "um", "uh", "umm", "because", "is", "my", "the", "a", "an", "to",
    "of", "for", "with", "number", "like", "was", "are", "its", "it's", "then",
];

/// Phrases that ask for a person.
const HUMAN_REQUESTS: &[&str] = &[
    "human",
    "real person",
    "a person",
    "live person",
    "representative",
    "operator",
    "live agent",
    "real agent",
    "manager",
    "supervisor",
    "someone else",
    "somebody else",
];

/// Lower-cased words without surrounding punctuation.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '\'')
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
}

/// Words that are not backchannels.
pub fn meaningful_words(text: &str) -> usize {
    words(text)
        .filter(|w| !BACKCHANNEL.contains(&w.as_str()))
        .count()
}

/// Nothing but a salutation or backchannels: picking up the phone, not asking anything.
pub fn only_salutation(text: &str) -> bool {
    words(text).all(|w| SALUTATIONS.contains(&w.as_str()) || BACKCHANNEL.contains(&w.as_str()))
}

/// The words so far look like the speaker is not done: a dictated number, a trailing
/// conjunction or filler, a trailing comma.
pub fn looks_unfinished(text: &str) -> bool {
    let trimmed = text.trim_end();
    if trimmed.ends_with(',') || trimmed.ends_with("...") || trimmed.ends_with('-') {
        return true;
    }
    let Some(last) = words(trimmed).last() else {
        return false;
    };
    last.chars().any(|c| c.is_ascii_digit()) || CONTINUATIONS.contains(&last.as_str())
}

/// The caller asks for a person.
pub fn asks_for_human(text: &str) -> bool {
    let normalized = format!(" {} ", words(text).collect::<Vec<_>>().join(" "));
    HUMAN_REQUESTS
        .iter()
        .any(|p| normalized.contains(&format!(" {p} ")))
}

/// The first escalation keyword `text` contains (case-insensitive).
pub fn keyword_in<'a>(text: &str, keywords: &'a [String]) -> Option<&'a str> {
    let lower = text.to_lowercase();
    keywords
        .iter()
        .map(String::as_str)
        .find(|k| !k.trim().is_empty() && lower.contains(&k.to_lowercase()))
}

/// Longest piece of `buffer` worth sending to speech synthesis now, as a byte length: up to
/// the last sentence end followed by a space; for the first piece of an utterance the first
/// clause end (`,` `;` `:`) or sentence end, so speech starts as soon as there is a phrase
/// to say ("Sure, " is one); a very long run without punctuation is cut at its last space.
/// `None` while nothing is speakable yet.
pub fn speakable_prefix(buffer: &str, first: bool) -> Option<usize> {
    let bytes = buffer.as_bytes();
    let mut cut = None;
    for (i, &b) in bytes.iter().enumerate() {
        let boundary = matches!(b, b'.' | b'!' | b'?')
            || (first
                && matches!(b, b',' | b';' | b':')
                && buffer[..i].split_whitespace().next().is_some());
        if boundary && bytes.get(i + 1).is_some_and(|n| n.is_ascii_whitespace()) {
            cut = Some(i + 2);
            if first {
                break;
            }
        }
    }
    if cut.is_none() && buffer.len() > 160 {
        cut = buffer.rfind(' ').map(|i| i + 1).filter(|&i| i > 0);
    }
    cut
}

/// The whole words of `buffer` so far, as a byte length: up to its last whitespace after a
/// word (the word being streamed may not be complete yet). `None` while there is none.
pub fn words_prefix(buffer: &str) -> Option<usize> {
    let end = buffer.rfind(|c: char| c.is_whitespace())?;
    let cut = end + buffer[end..].chars().next().map_or(1, char::len_utf8);
    buffer[..cut].split_whitespace().next().map(|_| cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backchannels_do_not_count() {
        assert_eq!(meaningful_words("Uh-huh, okay."), 0);
        assert_eq!(meaningful_words("yeah I see"), 0);
        assert_eq!(meaningful_words("wait, that's wrong"), 3);
    }

    #[test]
    fn unfinished_phrases() {
        assert!(looks_unfinished("my number is 415 555"));
        assert!(looks_unfinished("I want to cancel and"));
        assert!(looks_unfinished("so, um"));
        assert!(looks_unfinished("it was,"));
        assert!(!looks_unfinished("I want to cancel my order."));
        assert!(!looks_unfinished(""));
    }

    #[test]
    fn human_requests() {
        assert!(asks_for_human("Can I talk to a real person please?"));
        assert!(asks_for_human("get me a HUMAN"));
        assert!(asks_for_human("I want your manager"));
        assert!(!asks_for_human("I am a humanist"));
        assert!(!asks_for_human("what are your hours"));
        assert_eq!(
            keyword_in(
                "I want to Cancel My Account now",
                &["cancel my account".into()]
            ),
            Some("cancel my account")
        );
    }

    #[test]
    fn speakable_pieces() {
        assert_eq!(speakable_prefix("Hello there", true), None);
        assert_eq!(speakable_prefix("Hello there. How", false), Some(13));
        assert_eq!(speakable_prefix("Sure, I can", true), Some(6));
        assert_eq!(speakable_prefix("Sure, I can", false), None);
        assert_eq!(speakable_prefix(", I can", true), None);
        assert_eq!(
            speakable_prefix("Sure thing my friend, I can", true),
            Some(22)
        );
        assert_eq!(speakable_prefix("A. B. C", false), Some(6));
        assert_eq!(speakable_prefix("A. B. C", true), Some(3));
        assert_eq!(speakable_prefix("3.5 dollars", false), None);
        let long = "word ".repeat(40);
        assert!(speakable_prefix(&long, false).is_some());
    }

    #[test]
    fn whole_words() {
        assert_eq!(words_prefix("Sure"), None);
        assert_eq!(words_prefix(" "), None);
        assert_eq!(words_prefix("Sure "), Some(5));
        assert_eq!(words_prefix("Sure, I ca"), Some(8));
        assert_eq!(words_prefix("Café au"), Some(6));
    }
}
