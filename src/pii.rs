//! Personal data out of logs: every log line passes through [`scrub`] on its way out
//! ([`ScrubbingWriter`]), which masks phone numbers (E.164, the only form the engine stores:
//! bare digit runs are left alone, they are ids and timestamps) and email
//! addresses wherever they appear: in fields, in messages, and inside vendor error texts
//! quoted by an error. Transcripts are never logged by the engine (only counts and ids).
//!
//! Masking keeps enough to correlate (`+14*******00`, `a***@example.com`), never enough to
//! call or write to someone.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Masks phone numbers and emails in `line`.
pub fn scrub(line: &str) -> String {
    let masked = mask_emails(line);
    mask_phones(&masked)
}

/// `+` and 8-15 digits: kept as the first two and last two digits.
fn mask_phones(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let plus = chars[i] == '+';
        let start = if plus { i + 1 } else { i };
        let mut j = start;
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        let digits = j - start;
        let followed_by_word =
            j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '-');
        // What precedes the `+` does not matter: in text logs it is an ANSI colour code
        // (`...=\x1b[0m+1415...`).
        let is_phone = plus && !followed_by_word && (8..=15).contains(&digits);
        if is_phone {
            out.push('+');
            for (k, c) in chars[start..j].iter().enumerate() {
                out.push(if k < 2 || k + 2 >= digits { *c } else { '*' });
            }
            i = j;
        } else if digits > 0 {
            // A digit run that is not a phone (ids, counts, timestamps): copied as is.
            out.extend(&chars[i..j]);
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// `local@domain.tld` -> first character of the local part, `***@domain.tld`.
fn mask_emails(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            let mut local_start = out.len();
            while local_start > 0 && is_local_char(out[local_start - 1]) {
                local_start -= 1;
            }
            let mut end = i + 1;
            while end < chars.len() && is_domain_char(chars[end]) {
                end += 1;
            }
            let domain: String = chars[i + 1..end].iter().collect();
            let domain = domain.trim_end_matches('.');
            let dotted = domain.contains('.') && !domain.starts_with('.');
            if local_start < out.len() && dotted {
                out.truncate(local_start + 1);
                out.extend("***@".chars());
                out.extend(domain.chars());
                i += 1 + domain.chars().count();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out.into_iter().collect()
}

/// A [`MakeWriter`] whose writers scrub what passes through them (one formatted event per
/// write, as `tracing_subscriber::fmt` writes).
#[derive(Clone, Copy, Debug, Default)]
pub struct ScrubbingStderr;

/// See [`ScrubbingStderr`].
pub struct ScrubbingWriter(io::Stderr);

impl Write for ScrubbingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(scrub(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for ScrubbingStderr {
    type Writer = ScrubbingWriter;

    fn make_writer(&'a self) -> ScrubbingWriter {
        ScrubbingWriter(io::stderr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_emails_are_masked_wherever_they_appear() {
        assert_eq!(
            scrub(r#"{"to":"+14155550100","message":"call created"}"#),
            r#"{"to":"+14*******00","message":"call created"}"#
        );
        assert_eq!(
            scrub("transfer to +442071838750 failed: busy"),
            "transfer to +44********50 failed: busy"
        );
        assert_eq!(
            scrub("a customer ann.lee+vip@example.co.uk exists"),
            "a customer a***@example.co.uk exists"
        );
        assert_eq!(scrub("Ann@Example.com."), "A***@Example.com.");
        // Text logs colour the field name: the number still goes.
        assert_eq!(
            scrub("to\x1b[0m\x1b[2m=\x1b[0m+14155550100 x"),
            "to\x1b[0m\x1b[2m=\x1b[0m+14*******00 x"
        );
    }

    #[test]
    fn ids_counts_and_times_are_left_alone() {
        for line in [
            "call_id=0b5a3c1e-1d2f-4a4b-9c9d-0123456789ab latency_ms=12",
            r#"{"timestamp":"2026-11-23T10:00:00.123456Z","status":200}"#,
            "epoch 1700000000 shard 17 +5 retries",
            "event evt_1Nabc at 1764000000000ms",
            "user@localhost no domain; @ alone; a@b",
            "key iace_0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(scrub(line), line);
        }
    }
}
