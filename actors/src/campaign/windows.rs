//! Calling windows: when a campaign may dial a contact, by the wall clock of the contact's
//! time zone.
//!
//! A window belongs to a weekday and runs from `start` to `end` local time; an `end` at or
//! before `start` runs past midnight into the next day (`22:00`-`02:00` on Friday covers Friday
//! night and the first two hours of Saturday). Whether an instant is inside a window is read
//! from the wall clock at that instant, so daylight-saving changes behave as a person expects:
//! on the night the clocks go forward a window that starts inside the skipped hour opens when
//! the clocks land (03:00 for 02:30), and on the night they go back the repeated hour is inside
//! a window both times it is lived. A campaign's `start_date` and `end_date` bound the days
//! whose windows count (a window belongs to the day it starts on), in the same local time.

use std::fmt;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Windows per weekday at most.
pub const MAX_WINDOWS_PER_DAY: usize = 4;

/// Days the search for the next open window looks ahead (a week, and the days a date bound
/// or a daylight-saving change can add).
const LOOKAHEAD_DAYS: i64 = 9;

/// One window of a weekday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Opens, local time (`HH:MM`).
    #[serde(with = "hhmm")]
    pub start: NaiveTime,
    /// Closes, local time (`HH:MM`); at or before `start`: the next day.
    #[serde(with = "hhmm")]
    pub end: NaiveTime,
}

impl Window {
    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }
}

mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_hhmm(&text).map_err(serde::de::Error::custom)
    }
}

/// `HH:MM`, 00:00 to 23:59, or `24:00` (the end of the day, taken as 00:00 of the next).
pub fn parse_hhmm(text: &str) -> Result<NaiveTime, String> {
    if text == "24:00" {
        return Ok(NaiveTime::MIN);
    }
    let bytes = text.as_bytes();
    let ok = bytes.len() == 5
        && bytes[2] == b':'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 2 || b.is_ascii_digit());
    ok.then(|| NaiveTime::parse_from_str(text, "%H:%M").ok())
        .flatten()
        .ok_or_else(|| format!("`{text}` is not a time of day as HH:MM (00:00 to 24:00)"))
}

/// The windows of each weekday and the dates they apply between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Schedule {
    /// Monday first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mon: Vec<Window>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[allow(missing_docs)]
    pub tue: Vec<Window>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[allow(missing_docs)]
    pub wed: Vec<Window>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[allow(missing_docs)]
    pub thu: Vec<Window>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[allow(missing_docs)]
    pub fri: Vec<Window>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[allow(missing_docs)]
    pub sat: Vec<Window>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[allow(missing_docs)]
    pub sun: Vec<Window>,
    /// The first day whose windows count (local); `None`: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<NaiveDate>,
    /// The last day whose windows count (local); `None`: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<NaiveDate>,
}

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError(pub String);

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Schedule {
    /// The windows of `day`.
    pub fn day(&self, day: Weekday) -> &[Window] {
        match day {
            Weekday::Mon => &self.mon,
            Weekday::Tue => &self.tue,
            Weekday::Wed => &self.wed,
            Weekday::Thu => &self.thu,
            Weekday::Fri => &self.fri,
            Weekday::Sat => &self.sat,
            Weekday::Sun => &self.sun,
        }
    }

    /// Checks the schedule: some window, at most [`MAX_WINDOWS_PER_DAY`] a day, no empty
    /// window, the dates in order.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let days = [
            ("mon", &self.mon),
            ("tue", &self.tue),
            ("wed", &self.wed),
            ("thu", &self.thu),
            ("fri", &self.fri),
            ("sat", &self.sat),
            ("sun", &self.sun),
        ];
        if days.iter().all(|(_, w)| w.is_empty()) {
            return Err(ScheduleError(
                "the schedule has no calling window: give at least one day's windows".into(),
            ));
        }
        for (name, windows) in days {
            if windows.len() > MAX_WINDOWS_PER_DAY {
                return Err(ScheduleError(format!(
                    "{name} has {} windows; at most {MAX_WINDOWS_PER_DAY}",
                    windows.len()
                )));
            }
        }
        if let (Some(a), Some(b)) = (self.start_date, self.end_date) {
            if b < a {
                return Err(ScheduleError(format!(
                    "end_date {b} is before start_date {a}"
                )));
            }
        }
        Ok(())
    }

    fn day_counts(&self, date: NaiveDate) -> bool {
        self.start_date.is_none_or(|d| date >= d) && self.end_date.is_none_or(|d| date <= d)
    }

    /// Whether the wall-clock time `local` is inside a window.
    pub fn open_local(&self, local: NaiveDateTime) -> bool {
        let date = local.date();
        let time = local.time();
        let today = self.day_counts(date)
            && self
                .day(date.weekday())
                .iter()
                .any(|w| time >= w.start && (w.crosses_midnight() || time < w.end));
        if today {
            return true;
        }
        // A window of the day before that runs past midnight.
        let Some(yesterday) = date.pred_opt() else {
            return false;
        };
        self.day_counts(yesterday)
            && self
                .day(yesterday.weekday())
                .iter()
                .any(|w| w.crosses_midnight() && time < w.end)
    }

    /// Whether `at` is inside a window in `tz`.
    pub fn open_at(&self, tz: Tz, at: DateTime<Utc>) -> bool {
        self.open_local(at.with_timezone(&tz).naive_local())
    }

    /// The first instant at or after `after` inside a window in `tz`; `None` when there is
    /// none (the end date has passed).
    pub fn next_open(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.open_at(tz, after) {
            return Some(after);
        }
        let start_day = after.with_timezone(&tz).date_naive();
        if self
            .end_date
            .is_some_and(|end| start_day > end + Duration::days(1))
        {
            return None;
        }
        let mut best: Option<DateTime<Utc>> = None;
        for offset in -1..=LOOKAHEAD_DAYS {
            let Some(date) = start_day.checked_add_signed(Duration::days(offset)) else {
                continue;
            };
            if !self.day_counts(date) {
                continue;
            }
            for w in self.day(date.weekday()) {
                for at in instants_at_or_after(tz, date.and_time(w.start)) {
                    if at > after && best.is_none_or(|b| at < b) && self.open_at(tz, at) {
                        best = Some(at);
                    }
                }
            }
        }
        best.or_else(|| {
            // Nothing within the lookahead: only a date bound far ahead can leave that, as
            // every week has a window. Start the search again from that bound.
            let from = self
                .start_date
                .filter(|d| *d > start_day + Duration::days(1))?;
            let at = *instants_at_or_after(tz, from.and_time(NaiveTime::MIN)).first()?;
            self.next_open(tz, at)
        })
    }

    /// The end of the window `at` is in (the first instant after it that is outside every
    /// window, within a day); `None` when `at` is outside the windows.
    pub fn closes_after(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.open_at(tz, at) {
            return None;
        }
        let mut t = at;
        // Windows end on whole minutes; step to the next whole minute, then by minutes.
        let step = Duration::minutes(1);
        let secs = t.timestamp().rem_euclid(60);
        t += Duration::seconds(60 - secs);
        for _ in 0..(2 * 24 * 60) {
            if !self.open_at(tz, t) {
                return Some(t);
            }
            t += step;
        }
        None
    }
}

/// The instants whose wall clock in `tz` reads `local` (two when the clocks go back over it)
/// or, when the clocks skip it, the first instant after the skip.
fn instants_at_or_after(tz: Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    let mut probe = local;
    // Skips last at most a few hours (usually one, half an hour on Lord Howe Island).
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(early, late) => {
                return vec![early.with_timezone(&Utc), late.with_timezone(&Utc)]
            }
            LocalResult::None => probe += Duration::minutes(1),
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(start: &str, end: &str) -> Window {
        Window {
            start: parse_hhmm(start).unwrap(),
            end: parse_hhmm(end).unwrap(),
        }
    }

    fn weekdays(start: &str, end: &str) -> Schedule {
        Schedule {
            mon: vec![w(start, end)],
            tue: vec![w(start, end)],
            wed: vec![w(start, end)],
            thu: vec![w(start, end)],
            fri: vec![w(start, end)],
            ..Schedule::default()
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn times_of_day_are_hh_mm() {
        assert_eq!(parse_hhmm("09:30").unwrap().to_string(), "09:30:00");
        assert_eq!(parse_hhmm("24:00").unwrap(), NaiveTime::MIN);
        for bad in [
            "9:30", "09:60", "25:00", "09-30", "09:30:00", "", "ab:cd", "+9:30",
        ] {
            assert!(parse_hhmm(bad).is_err(), "{bad}");
        }
        let s: Schedule = serde_json::from_value(serde_json::json!({
            "mon": [{"start": "09:00", "end": "17:00"}],
            "start_date": "2026-12-01"
        }))
        .unwrap();
        assert_eq!(s.mon, vec![w("09:00", "17:00")]);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"mon": [{"start": "09:00", "end": "17:00"}], "start_date": "2026-12-01"})
        );
        assert!(serde_json::from_value::<Schedule>(
            serde_json::json!({"mon": [{"start": "9", "end": "17:00"}]})
        )
        .is_err());
    }

    #[test]
    fn a_schedule_needs_a_window_and_dates_in_order() {
        assert!(Schedule::default().validate().is_err());
        assert!(weekdays("09:00", "17:00").validate().is_ok());
        let mut s = weekdays("09:00", "17:00");
        s.start_date = NaiveDate::from_ymd_opt(2026, 12, 10);
        s.end_date = NaiveDate::from_ymd_opt(2026, 12, 1);
        assert!(s.validate().is_err());
        let mut s = weekdays("09:00", "17:00");
        s.mon = vec![w("09:00", "10:00"); 5];
        assert!(s.validate().is_err());
    }

    #[test]
    fn windows_are_read_on_the_contacts_wall_clock() {
        let s = weekdays("09:00", "17:00");
        let ny: Tz = "America/New_York".parse().unwrap();
        // Monday 2026-12-07 08:59 and 09:00 in New York (UTC-5).
        assert!(!s.open_at(ny, utc("2026-12-07T13:59:00Z")));
        assert!(s.open_at(ny, utc("2026-12-07T14:00:00Z")));
        assert!(
            !s.open_at(ny, utc("2026-12-07T22:00:00Z")),
            "17:00 is closed"
        );
        // The same instant is outside the window in Tokyo (23:00 Monday).
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        assert!(!s.open_at(tokyo, utc("2026-12-07T14:00:00Z")));
        // Friday 17:00 New York: the next window is Monday 09:00.
        assert_eq!(
            s.next_open(ny, utc("2026-12-11T22:00:00Z")),
            Some(utc("2026-12-14T14:00:00Z"))
        );
        assert_eq!(
            s.closes_after(ny, utc("2026-12-07T14:00:00Z")),
            Some(utc("2026-12-07T22:00:00Z"))
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let s = Schedule {
            fri: vec![w("22:00", "02:00")],
            ..Schedule::default()
        };
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Friday 2026-12-11 23:30 and Saturday 01:59 Berlin (UTC+1) are open; Saturday 02:00,
        // Saturday 23:00 and Friday 21:59 are not.
        assert!(s.open_at(berlin, utc("2026-12-11T22:30:00Z")));
        assert!(s.open_at(berlin, utc("2026-12-12T00:59:00Z")));
        assert!(!s.open_at(berlin, utc("2026-12-12T01:00:00Z")));
        assert!(!s.open_at(berlin, utc("2026-12-12T22:00:00Z")));
        assert!(!s.open_at(berlin, utc("2026-12-11T20:59:00Z")));
        assert_eq!(
            s.closes_after(berlin, utc("2026-12-11T22:30:00Z")),
            Some(utc("2026-12-12T01:00:00Z"))
        );
        // An end date on the Friday still lets its window run into Saturday morning.
        let mut bounded = s.clone();
        bounded.end_date = NaiveDate::from_ymd_opt(2026, 12, 11);
        assert!(bounded.open_at(berlin, utc("2026-12-12T00:30:00Z")));
        assert_eq!(bounded.next_open(berlin, utc("2026-12-12T01:00:00Z")), None);
    }

    #[test]
    fn the_night_the_clocks_go_forward_a_skipped_start_opens_when_they_land() {
        // New York, Sunday 2026-03-08: 02:00 becomes 03:00.
        let s = Schedule {
            sun: vec![w("02:30", "04:00")],
            ..Schedule::default()
        };
        let ny: Tz = "America/New_York".parse().unwrap();
        // 01:59 EST is 06:59Z; 03:00 EDT is 07:00Z.
        assert_eq!(
            s.next_open(ny, utc("2026-03-08T06:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        assert!(s.open_at(ny, utc("2026-03-08T07:00:00Z")));
        assert!(!s.open_at(ny, utc("2026-03-08T08:00:00Z")), "04:00 EDT");
        // Lord Howe Island moves by half an hour (2026-10-04 02:00 -> 02:30).
        let lh: Tz = "Australia/Lord_Howe".parse().unwrap();
        let s = Schedule {
            sun: vec![w("02:10", "03:00")],
            ..Schedule::default()
        };
        let opened = s.next_open(lh, utc("2026-10-03T14:00:00Z")).unwrap();
        assert_eq!(
            opened.with_timezone(&lh).format("%H:%M").to_string(),
            "02:30"
        );
    }

    #[test]
    fn the_night_the_clocks_go_back_the_repeated_hour_is_open_both_times() {
        // New York, Sunday 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let s = Schedule {
            sun: vec![w("01:00", "02:00")],
            ..Schedule::default()
        };
        let ny: Tz = "America/New_York".parse().unwrap();
        assert!(s.open_at(ny, utc("2026-11-01T05:30:00Z")), "01:30 EDT");
        assert!(s.open_at(ny, utc("2026-11-01T06:30:00Z")), "01:30 EST");
        assert!(!s.open_at(ny, utc("2026-11-01T07:00:00Z")), "02:00 EST");
        assert_eq!(
            s.next_open(ny, utc("2026-11-01T04:00:00Z")),
            Some(utc("2026-11-01T05:00:00Z"))
        );
        assert_eq!(
            s.closes_after(ny, utc("2026-11-01T05:00:00Z")),
            Some(utc("2026-11-01T07:00:00Z")),
            "two hours of wall-clock 01:xx"
        );
        // A window inside the repeated hour, missed the first time, opens the second time.
        let s = Schedule {
            sun: vec![w("01:30", "01:45")],
            ..Schedule::default()
        };
        assert_eq!(
            s.next_open(ny, utc("2026-11-01T05:50:00Z")),
            Some(utc("2026-11-01T06:30:00Z"))
        );
    }

    #[test]
    fn a_start_date_far_ahead_is_found() {
        let mut s = weekdays("09:00", "17:00");
        s.start_date = NaiveDate::from_ymd_opt(2027, 3, 1);
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            s.next_open(ny, utc("2026-12-07T12:00:00Z")),
            Some(utc("2027-03-01T14:00:00Z"))
        );
    }

    fn any_window() -> impl Strategy<Value = Window> {
        (
            0u32..24,
            (0u32..4).prop_map(|q| q * 15),
            0u32..24,
            (0u32..4).prop_map(|q| q * 15),
        )
            .prop_map(|(h1, m1, h2, m2)| Window {
                start: NaiveTime::from_hms_opt(h1, m1, 0).unwrap(),
                end: NaiveTime::from_hms_opt(h2, m2, 0).unwrap(),
            })
    }

    fn any_schedule() -> impl Strategy<Value = Schedule> {
        let day = || proptest::collection::vec(any_window(), 0..3);
        (day(), day(), day(), day(), day(), day(), day()).prop_map(
            |(mon, tue, wed, thu, fri, sat, sun)| Schedule {
                mon,
                tue,
                wed,
                thu,
                fri,
                sat,
                sun,
                start_date: None,
                end_date: None,
            },
        )
    }

    const ZONES: [&str; 6] = [
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "America/Sao_Paulo",
        "Pacific/Chatham",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// `next_open` is open, and no minute between the query and it is.
        #[test]
        fn next_open_is_the_first_open_minute(
            s in any_schedule(),
            zone in 0usize..ZONES.len(),
            // 2026, around both daylight-saving changes of the northern and southern zones.
            secs in 1_767_225_600i64..1_798_761_600,
        ) {
            let tz: Tz = ZONES[zone].parse().unwrap();
            let at = Utc.timestamp_opt(secs - secs.rem_euclid(60), 0).unwrap();
            let any = [&s.mon, &s.tue, &s.wed, &s.thu, &s.fri, &s.sat, &s.sun]
                .iter()
                .any(|d| !d.is_empty());
            match s.next_open(tz, at) {
                Some(open) => {
                    prop_assert!(open >= at);
                    prop_assert!(s.open_at(tz, open));
                    let mut t = at;
                    while t < open {
                        prop_assert!(!s.open_at(tz, t), "open at {t} before {open}");
                        t += Duration::minutes(1);
                    }
                }
                None => prop_assert!(!any, "a weekly window always comes back"),
            }
        }
    }
}
