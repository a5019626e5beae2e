//! A contact's time zone: the one the contact was given, else the one its number's region
//! lies in when that is unambiguous, else the campaign's.
//!
//! The zones come from libphonenumber's metadata (`tz_prefixes.txt`): a zone list per country
//! code and per longer prefix. A number's zone is its country's when the country's zones all
//! keep the same clock (the same UTC offset at every sample through 2026 and 2027: +44 lists
//! London, Guernsey, Jersey and the Isle of Man, which agree). In a country of several clocks
//! the longer prefixes are used only where every number, mobiles included, belongs to the
//! area of its leading digits (the North American plan: +1 212 is New York); elsewhere a
//! mobile number can be anywhere in the country (+61 4, +7 9), so such numbers get no zone.

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{Offset as _, TimeZone as _, Utc};
use chrono_tz::Tz;

use crate::machine::PhoneNumber;

const TABLE: &str = include_str!("tz_prefixes.txt");

/// Longest prefix in the table.
const MAX_PREFIX: usize = 9;

struct Prefixes {
    zones: HashMap<&'static str, Vec<Tz>>,
    /// Country codes whose numbers all belong to the area of their leading digits.
    geographic: Vec<&'static str>,
    /// Per prefix: the zone all its candidates agree with, if they do.
    agreed: HashMap<&'static str, Option<Tz>>,
}

fn prefixes() -> &'static Prefixes {
    static PREFIXES: OnceLock<Prefixes> = OnceLock::new();
    PREFIXES.get_or_init(|| {
        let mut zones = HashMap::new();
        let mut geographic = Vec::new();
        for line in TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let mut parts = line.split(' ');
            let Some(prefix) = parts.next() else { continue };
            if prefix == "@geographic" {
                geographic.extend(parts);
                continue;
            }
            // A zone this build's database does not know is left out (the test lists none).
            let tz: Vec<Tz> = parts.filter_map(|z| z.parse().ok()).collect();
            if !tz.is_empty() {
                zones.insert(prefix, tz);
            }
        }
        let agreed = zones
            .iter()
            .map(|(prefix, tz)| (*prefix, agree(tz)))
            .collect();
        Prefixes {
            zones,
            geographic,
            agreed,
        }
    })
}

/// The zone every one of `zones` keeps the same clock as, if they do.
fn agree(zones: &[Tz]) -> Option<Tz> {
    let first = *zones.first()?;
    if zones.len() == 1 {
        return Some(first);
    }
    // Every 6 hours through 2026 and 2027: each daylight-saving change is seen.
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single()?;
    let samples = (0..(2 * 366 * 4)).map(|i| start + chrono::Duration::hours(6 * i));
    for at in samples {
        let offset = |tz: &Tz| at.with_timezone(tz).offset().fix().local_minus_utc();
        let reference = offset(&first);
        if zones[1..].iter().any(|tz| offset(tz) != reference) {
            return None;
        }
    }
    Some(first)
}

/// The number's country code (country codes are prefix-free: the shortest prefix known) and
/// its longest known prefix.
fn prefixes_of(number: &PhoneNumber) -> Option<(&'static str, &'static str)> {
    let digits = number.as_str().trim_start_matches('+');
    let table = &prefixes().zones;
    let known = |n: usize| table.get_key_value(&digits[..n]).map(|(k, _)| *k);
    let upto = digits.len().min(MAX_PREFIX);
    let country = (1..=upto.min(3)).find_map(known)?;
    let longest = (1..=upto).rev().find_map(known)?;
    Some((country, longest))
}

/// The zones the number's region may lie in (empty when its country code is unknown).
pub fn zones_of(number: &PhoneNumber) -> &'static [Tz] {
    let Some((country, longest)) = prefixes_of(number) else {
        return &[];
    };
    let p = prefixes();
    let key = if p.geographic.contains(&country) {
        longest
    } else {
        country
    };
    p.zones.get(key).map_or(&[], Vec::as_slice)
}

/// The zone of the number's region when it is unambiguous.
pub fn zone_of(number: &PhoneNumber) -> Option<Tz> {
    let (country, longest) = prefixes_of(number)?;
    let p = prefixes();
    if let Some(tz) = p.agreed.get(country).copied().flatten() {
        return Some(tz);
    }
    if p.geographic.contains(&country) {
        return p.agreed.get(longest).copied().flatten();
    }
    None
}

/// Where a contact's time zone came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSource {
    /// Given with the contact.
    Contact,
    /// Its number's region.
    Number,
    /// The campaign's.
    Campaign,
}

impl ZoneSource {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneSource::Contact => "contact",
            ZoneSource::Number => "number",
            ZoneSource::Campaign => "campaign",
        }
    }
}

/// A contact's zone: `given`, else its number's unambiguous zone, else the campaign's.
pub fn contact_zone(given: Option<Tz>, number: &PhoneNumber, campaign: Tz) -> (Tz, ZoneSource) {
    if let Some(tz) = given {
        return (tz, ZoneSource::Contact);
    }
    match zone_of(number) {
        Some(tz) => (tz, ZoneSource::Number),
        None => (campaign, ZoneSource::Campaign),
    }
}

/// An IANA zone name, or why it is refused.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone (like America/New_York)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PhoneNumber {
        PhoneNumber::parse(s).unwrap()
    }

    #[test]
    fn every_zone_of_the_table_is_known_to_the_database() {
        let unknown: Vec<&str> = TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('@'))
            .flat_map(|l| l.split(' ').skip(1))
            .filter(|z| z.parse::<Tz>().is_err())
            .collect();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(prefixes().zones.len() > 3000);
        assert!(prefixes().geographic.contains(&"1"));
    }

    #[test]
    fn a_numbers_zone_is_taken_only_when_its_region_keeps_one_clock() {
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(zone_of(&n("+12125550100")), Some(ny));
        assert_eq!(
            zone_of(&n("+14155550100")),
            Some("America/Los_Angeles".parse().unwrap())
        );
        // The United Kingdom's four zones keep London's clock; New York's and Chicago's differ.
        let z = |s: &str| s.parse::<Tz>().unwrap();
        assert_eq!(
            agree(&[
                z("Europe/London"),
                z("Europe/Jersey"),
                z("Europe/Guernsey"),
                z("Europe/Isle_of_Man")
            ]),
            Some(z("Europe/London"))
        );
        assert_eq!(agree(&[z("America/New_York"), z("America/Chicago")]), None);
        let uk = zone_of(&n("+442071838750")).unwrap();
        assert_eq!(
            agree(&[uk, z("Europe/London")]),
            Some(uk),
            "{uk} keeps London's clock"
        );
        // Germany, France, Japan: one zone.
        assert_eq!(
            zone_of(&n("+4930901820")),
            Some("Europe/Berlin".parse().unwrap())
        );
        assert_eq!(
            zone_of(&n("+33142685300")),
            Some("Europe/Paris".parse().unwrap())
        );
        assert_eq!(
            zone_of(&n("+81312345678")),
            Some("Asia/Tokyo".parse().unwrap())
        );
        assert_eq!(zone_of(&n("+5511987654321")), Some(z("America/Sao_Paulo")));
        // Australia and Russia have several clocks and mobile numbers that can be anywhere:
        // no zone from the number, landline or mobile.
        assert!(zones_of(&n("+61499999999")).len() > 1);
        assert_eq!(zone_of(&n("+61499999999")), None);
        assert_eq!(zone_of(&n("+61299999999")), None);
        assert_eq!(zone_of(&n("+79161234567")), None);
        // The North American plan's area codes, and its numbers of no single area.
        assert_eq!(zone_of(&n("+13125550100")), Some(z("America/Chicago")));
        assert_eq!(zone_of(&n("+18005550100")), None, "toll-free");
    }

    #[test]
    fn a_contacts_zone_comes_from_the_contact_then_the_number_then_the_campaign() {
        let campaign: Tz = "Europe/Madrid".parse().unwrap();
        let given: Tz = "Asia/Kolkata".parse().unwrap();
        assert_eq!(
            contact_zone(Some(given), &n("+12125550100"), campaign),
            (given, ZoneSource::Contact)
        );
        assert_eq!(
            contact_zone(None, &n("+12125550100"), campaign),
            ("America/New_York".parse().unwrap(), ZoneSource::Number)
        );
        assert_eq!(
            contact_zone(None, &n("+79161234567"), campaign),
            (campaign, ZoneSource::Campaign)
        );
        assert!(parse_zone("America/New_York").is_ok());
        assert!(parse_zone("Mars/Olympus").is_err());
        assert!(parse_zone("").is_err());
    }
}
