//! UTC instants, as volsnap names, sorts, prunes and reports backups.
//!
//! volsnap needs only UTC: the time in an object name (`20261125T224600Z`),
//! RFC 3339 in reports and Keystone's `expires_at`, Cinder's offset-less
//! `created_at`, and the UTC day and ISO week the retention policy groups
//! by. That is the proleptic Gregorian calendar and a few formats, written
//! here instead of a time-zone library (jiff cost ~120 KB of the static
//! binary, see Cargo.toml). The tests check every function against jiff.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59Z: four-digit
/// years, as in object names and RFC 3339.
const MIN_SECOND: i64 = -62_135_596_800;
const MAX_SECOND: i64 = 253_402_300_799;

/// An instant, to the nanosecond, between the years 1 and 9999 (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    second: i64,
    /// 0..1e9, after `second`.
    nanosecond: u32,
}

/// A time outside the years 1 to 9999, or text that is not a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeError;

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a UTC time between the years 1 and 9999")
    }
}

impl std::error::Error for TimeError {}

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp {
        second: 0,
        nanosecond: 0,
    };

    pub fn now() -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    /// A clock before 1970 is still an instant, never a panic.
    fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                second: d.as_secs() as i64,
                nanosecond: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (second, nanosecond) = match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                };
                Timestamp { second, nanosecond }
            }
        }
    }

    /// `self` moved forward by `d`; `None` past the year 9999.
    pub fn checked_add(self, d: Duration) -> Option<Timestamp> {
        let nanos = u64::from(self.nanosecond) + u64::from(d.subsec_nanos());
        let second = self
            .second
            .checked_add(i64::try_from(d.as_secs()).ok()?)?
            .checked_add((nanos / 1_000_000_000) as i64)?;
        let t = Timestamp::from_second(second).ok()?;
        Some(Timestamp {
            nanosecond: (nanos % 1_000_000_000) as u32,
            ..t
        })
    }

    pub fn from_second(second: i64) -> Result<Timestamp, TimeError> {
        if (MIN_SECOND..=MAX_SECOND).contains(&second) {
            Ok(Timestamp {
                second,
                nanosecond: 0,
            })
        } else {
            Err(TimeError)
        }
    }

    pub fn from_millisecond(ms: i64) -> Result<Timestamp, TimeError> {
        let t = Timestamp::from_second(ms.div_euclid(1000))?;
        Ok(Timestamp {
            nanosecond: ms.rem_euclid(1000) as u32 * 1_000_000,
            ..t
        })
    }

    /// Whole seconds since 1970 (rounded down).
    pub fn as_second(self) -> i64 {
        self.second
    }

    /// Whole milliseconds since 1970 (rounded down).
    pub fn as_millisecond(self) -> i64 {
        self.second * 1000 + i64::from(self.nanosecond / 1_000_000)
    }

    /// Seconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.second - earlier.second) as f64
            + (f64::from(self.nanosecond) - f64::from(earlier.nanosecond)) / 1e9
    }

    /// Days since 1970-01-01 of the UTC date.
    pub fn day(self) -> i64 {
        self.second.div_euclid(86_400)
    }

    /// The UTC date: year, month (1–12), day (1–31).
    pub fn date(self) -> (i64, u32, u32) {
        civil_from_days(self.day())
    }

    /// The ISO 8601 week of the UTC date, as its Monday (days since
    /// 1970-01-01): one value per week, and weeks that straddle a new year
    /// are one week, as in ISO week numbering.
    pub fn iso_week_monday(self) -> i64 {
        let day = self.day();
        // 1970-01-01 was a Thursday; 0 = Monday.
        day - (day + 3).rem_euclid(7)
    }

    /// `20261125T224600Z`: the object-name form (whole seconds).
    pub fn compact(self) -> String {
        let (y, mo, d) = self.date();
        let s = self.second.rem_euclid(86_400);
        format!(
            "{y:04}{mo:02}{d:02}T{:02}{:02}{:02}Z",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }

    /// The object-name form back; exactly `YYYYMMDDTHHMMSSZ`.
    pub fn parse_compact(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return None;
        }
        let n = |range: std::ops::Range<usize>| digits(&b[range]);
        from_civil(
            n(0..4)?,
            n(4..6)?,
            n(6..8)?,
            n(9..11)?,
            n(11..13)?,
            n(13..15)?,
            0,
        )
    }

    /// Cinder's `created_at`: UTC without an offset,
    /// `2026-11-25T22:46:21.000000` (a trailing `Z` is accepted too).
    pub fn parse_utc_civil(text: &str) -> Option<Timestamp> {
        let text = text.strip_suffix(['Z', 'z']).unwrap_or(text);
        let (t, rest) = parse_date_time(text.as_bytes())?;
        rest.is_empty().then_some(t)
    }

    /// RFC 3339 with `digits` fractional digits (0 for none), in UTC.
    pub fn rfc3339(self, digits: usize) -> String {
        let mut out = self.rfc3339_seconds();
        if digits > 0 {
            let frac = format!("{:09}", self.nanosecond);
            out.push('.');
            out.push_str(&frac[..digits.min(9)]);
        }
        out.push('Z');
        out
    }

    fn rfc3339_seconds(self) -> String {
        let (y, mo, d) = self.date();
        let s = self.second.rem_euclid(86_400);
        format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

/// A file's modification time, say; years 1 to 9999 only.
impl TryFrom<SystemTime> for Timestamp {
    type Error = TimeError;

    fn try_from(t: SystemTime) -> Result<Timestamp, TimeError> {
        let t = Timestamp::from_system(t);
        Timestamp::from_second(t.second)?;
        Ok(t)
    }
}

/// RFC 3339 in UTC, `2026-11-25T22:46:00Z`, with as many fractional digits
/// as the instant needs (`…:00.75Z`): what jiff printed before.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339_seconds())?;
        if self.nanosecond != 0 {
            let frac = format!("{:09}", self.nanosecond);
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

/// RFC 3339: `2026-11-25T22:46:21.000000Z`, `…+02:00`, `…-0130`; the
/// offset is required, as an instant needs it.
impl FromStr for Timestamp {
    type Err = TimeError;

    fn from_str(text: &str) -> Result<Timestamp, TimeError> {
        let (t, rest) = parse_date_time(text.as_bytes()).ok_or(TimeError)?;
        let offset = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), hm @ ..] => {
                let (h, m) = match hm {
                    [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                        (digits(&[*h1, *h2]), digits(&[*m1, *m2]))
                    }
                    [h1, h2] => (digits(&[*h1, *h2]), Some(0)),
                    _ => return Err(TimeError),
                };
                let (h, m) = (h.ok_or(TimeError)?, m.ok_or(TimeError)?);
                if h > 23 || m > 59 {
                    return Err(TimeError);
                }
                let seconds = i64::from(h * 3600 + m * 60);
                if *sign == b'-' {
                    -seconds
                } else {
                    seconds
                }
            }
            _ => return Err(TimeError),
        };
        let at = Timestamp::from_second(t.second - offset)?;
        Ok(Timestamp {
            nanosecond: t.nanosecond,
            ..at
        })
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction]`, read as UTC, and what follows it.
fn parse_date_time(b: &[u8]) -> Option<(Timestamp, &[u8])> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanosecond = 0;
    if let [b'.' | b',', after @ ..] = rest {
        let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanosecond = digits(&after[..n])? * 10u32.pow(9 - n as u32);
        rest = &after[n..];
    }
    let t = from_civil(
        digits(&b[0..4])?,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
        nanosecond,
    )?;
    Some((t, rest))
}

/// ASCII digits as a number; `None` for anything else.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

fn from_civil(
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanosecond: u32,
) -> Option<Timestamp> {
    let year = i64::from(year);
    // A leap second (:60) is read as :59, as jiff did.
    if !(1..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let seconds = i64::from(hour * 3600 + minute * 60 + second.min(59));
    Some(Timestamp {
        second: days_from_civil(year, month, day) * 86_400 + seconds,
        nanosecond,
    })
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (`civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instants across the whole range, dense around today and the ends of
    /// years and centuries (a small LCG: the same every run).
    fn samples() -> Vec<i64> {
        let mut out = vec![
            MIN_SECOND,
            MAX_SECOND - 86_400,
            0,
            -1,
            951_782_400,
            4_107_542_400,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let span = if i % 2 == 0 {
                (MAX_SECOND - MIN_SECOND) as u64
            } else {
                40 * 365 * 86_400
            };
            let base = if i % 2 == 0 {
                MIN_SECOND
            } else {
                1_500_000_000
            };
            out.push(base + ((x >> 11) % span) as i64);
        }
        for year in [1, 1969, 1970, 2000, 2024, 2026, 2027, 2100, 9999] {
            let jan1 = days_from_civil(year, 1, 1) * 86_400;
            for d in -8..8 {
                out.push(jan1 + d * 86_400 + 3661);
            }
        }
        out.retain(|s| (MIN_SECOND..=MAX_SECOND).contains(s));
        out
    }

    #[test]
    fn agrees_with_jiff() {
        for s in samples() {
            let ours = Timestamp::from_second(s).unwrap();
            // jiff stops a day short of 9999-12-31 (room for offsets).
            if jiff::Timestamp::from_second(s + 1).is_err() {
                continue;
            }
            let theirs = jiff::Timestamp::from_second(s).unwrap();
            let date = jiff::tz::TimeZone::UTC.to_datetime(theirs).date();
            assert_eq!(
                ours.date(),
                (
                    i64::from(date.year()),
                    date.month() as u32,
                    date.day() as u32
                ),
                "{s}"
            );
            assert_eq!(ours.to_string(), theirs.to_string(), "{s}");
            assert_eq!(
                ours.compact(),
                theirs.strftime("%Y%m%dT%H%M%SZ").to_string()
            );
            assert_eq!(Timestamp::parse_compact(&ours.compact()), Some(ours));
            assert_eq!(ours.to_string().parse::<Timestamp>(), Ok(ours));
            let iso = date.iso_week_date();
            let monday =
                jiff::civil::ISOWeekDate::new(iso.year(), iso.week(), jiff::civil::Weekday::Monday)
                    .unwrap()
                    .date();
            let monday = jiff::civil::date(1970, 1, 1)
                .until(monday)
                .unwrap()
                .get_days();
            assert_eq!(ours.iso_week_monday(), i64::from(monday), "{s}");
            let with_ms = Timestamp::from_millisecond(s * 1000 + 250).unwrap();
            assert_eq!(
                with_ms.to_string(),
                jiff::Timestamp::from_millisecond(s * 1000 + 250)
                    .unwrap()
                    .to_string()
            );
        }
    }

    #[test]
    fn parses_what_keystone_and_cinder_write() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap().as_millisecond();
        let jiff_at = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        for s in [
            "2026-11-25T22:46:21.000000Z",
            "2026-11-25T22:46:21Z",
            "2026-11-25T22:46:21.5z",
            "2026-11-25t22:46:21+02:00",
            "2026-11-25T22:46:21-01:30",
            "2026-11-25 22:46:21.123456789+00:00",
            "2024-02-29T23:59:60Z",
        ] {
            assert_eq!(at(s), jiff_at(s), "{s}");
        }
        for bad in [
            "2026-11-25T22:46:21",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T22:46:21.Z",
            "2026-11-25T22:46:21+2:00",
            "20261125T224621Z",
            "",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        let cinder = Timestamp::parse_utc_civil("2026-11-25T22:46:21.000000").unwrap();
        assert_eq!(cinder.to_string(), "2026-11-25T22:46:21Z");
        assert_eq!(
            Timestamp::parse_utc_civil("2026-11-25T22:46:21Z"),
            Some(cinder)
        );
        assert_eq!(
            Timestamp::parse_utc_civil("2026-11-25T22:46:21+01:00"),
            None
        );
        assert_eq!(Timestamp::parse_compact("20261125T224621"), None);
        assert_eq!(Timestamp::parse_compact("20261131T224621Z"), None);
    }

    #[test]
    fn ranges_and_arithmetic() {
        assert!(Timestamp::from_second(MAX_SECOND + 1).is_err());
        assert!(Timestamp::from_second(MIN_SECOND - 1).is_err());
        let t = Timestamp::from_millisecond(-1).unwrap();
        assert_eq!((t.as_second(), t.as_millisecond()), (-1, -1));
        assert_eq!(t.to_string(), "1969-12-31T23:59:59.999Z");
        let a = "2026-11-25T22:46:21.25Z".parse::<Timestamp>().unwrap();
        let b = "2026-11-25T22:46:20.75Z".parse::<Timestamp>().unwrap();
        assert_eq!(a.seconds_since(b), 0.5);
        assert_eq!(b.seconds_since(a), -0.5);
        assert_eq!(a.rfc3339(3), "2026-11-25T22:46:21.250Z");
        assert!((Timestamp::now().as_second() - 1_700_000_000) > 0);
        let c = b.checked_add(Duration::from_millis(1_500)).unwrap();
        assert_eq!(c.to_string(), "2026-11-25T22:46:22.25Z");
        let end = Timestamp::from_second(MAX_SECOND).unwrap();
        assert_eq!(end.checked_add(Duration::from_secs(1)), None);
        let at = UNIX_EPOCH + Duration::from_millis(1_764_800_000_250);
        assert_eq!(
            Timestamp::try_from(at).unwrap().as_millisecond(),
            1_764_800_000_250
        );
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(Timestamp::try_from(before).unwrap().as_millisecond(), -1);
    }
}
