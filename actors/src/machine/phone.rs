//! E.164 phone numbers: validated once at the edge, carried as a domain type.

use serde::{Deserialize, Serialize};

/// A phone number in E.164 form: `+`, a non-zero digit, then at most 14 more digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// A string that is not an E.164 number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an E.164 phone number (expected + followed by 8 to 15 digits, e.g. +14155550100)"
)]
pub struct InvalidPhoneNumber(pub String);

impl PhoneNumber {
    /// Validates `s` as E.164. Spaces, dashes and parentheses are not accepted: callers must
    /// send the canonical form so that what we store is what they sent.
    pub fn parse(s: &str) -> Result<Self, InvalidPhoneNumber> {
        let digits = s
            .strip_prefix('+')
            .ok_or_else(|| InvalidPhoneNumber(s.to_owned()))?;
        let valid = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPhoneNumber(s.to_owned()))
        }
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = InvalidPhoneNumber;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl std::str::FromStr for PhoneNumber {
    type Err = InvalidPhoneNumber;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

impl std::fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164_and_rejects_the_rest() {
        assert!(PhoneNumber::parse("+14155550100").is_ok());
        assert!(PhoneNumber::parse("+442071838750").is_ok());
        for bad in [
            "",
            "+",
            "14155550100",
            "+0155550100",
            "+1415555",
            "+1234567890123456",
            "+1 415 555 0100",
            "+1415555010a",
            "tel:+14155550100",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: PhoneNumber = serde_json::from_str("\"+14155550100\"").unwrap();
        assert_eq!(ok.as_str(), "+14155550100");
        assert!(serde_json::from_str::<PhoneNumber>("\"555-0100\"").is_err());
    }
}
