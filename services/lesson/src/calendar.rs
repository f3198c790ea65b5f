//! iCalendar (RFC 5545) export of lessons: `ExportCalendar` files and the subscribable feed.
//!
//! Times are written in UTC (`…Z`), so the file needs no `VTIMEZONE` and every calendar app places
//! lessons at the same instants the service does. Each event's UID is the lesson id, and SEQUENCE
//! and LAST-MODIFIED change with the lesson, so a re-import or a feed refresh updates events rather
//! than duplicating them; cancelled lessons are sent with `STATUS:CANCELLED` so apps remove them.

use chrono::{DateTime, Utc};

/// Product identifier written in every file (RFC 5545 §3.7.3).
pub const PRODUCT_ID: &str = "-//RepitBot//Lessons//EN";

/// Domain appended to lesson ids to make globally unique UIDs (RFC 5545 §3.8.4.7).
pub const UID_DOMAIN: &str = "repit.app";

/// Most octets of one content line before it is folded, not counting the CRLF (RFC 5545 §3.1).
const MAX_LINE_OCTETS: usize = 75;

/// Whether a lesson still takes place, as calendar apps understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// The lesson is on.
    Confirmed,
    /// The lesson was cancelled; apps remove or strike it out.
    Cancelled,
}

impl EventStatus {
    fn as_ical(self) -> &'static str {
        match self {
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// One lesson as a calendar event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarEvent {
    /// Stable id of the lesson; `@repit.app` is appended.
    pub uid: String,
    /// Start instant.
    pub start: DateTime<Utc>,
    /// End instant (exclusive).
    pub end: DateTime<Utc>,
    /// Title, already in the reader's language.
    pub summary: String,
    /// Longer text; left out of the file when empty.
    pub description: String,
    /// Whether the lesson is on or cancelled.
    pub status: EventStatus,
    /// Revision of the event; must grow with every change so apps accept the update.
    pub sequence: u32,
    /// When the lesson last changed.
    pub last_modified: DateTime<Utc>,
}

/// Renders a whole iCalendar file named `calendar_name` with `events` in the given order; `now` is
/// written as every event's DTSTAMP. Lines end with CRLF and are folded at 75 octets.
pub fn render(calendar_name: &str, events: &[CalendarEvent], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: &str| push_folded(&mut out, name, value);
    line("BEGIN", "VCALENDAR");
    line("VERSION", "2.0");
    line("PRODID", PRODUCT_ID);
    line("CALSCALE", "GREGORIAN");
    line("METHOD", "PUBLISH");
    line("X-WR-CALNAME", &escape_text(calendar_name));
    let stamp = format_utc(now);
    for event in events {
        line("BEGIN", "VEVENT");
        line("UID", &escape_text(&format!("{}@{UID_DOMAIN}", event.uid)));
        line("DTSTAMP", &stamp);
        line("DTSTART", &format_utc(event.start));
        line("DTEND", &format_utc(event.end));
        line("SUMMARY", &escape_text(&event.summary));
        if !event.description.is_empty() {
            line("DESCRIPTION", &escape_text(&event.description));
        }
        line("STATUS", event.status.as_ical());
        line("SEQUENCE", &event.sequence.to_string());
        line("LAST-MODIFIED", &format_utc(event.last_modified));
        line("END", "VEVENT");
    }
    line("END", "VCALENDAR");
    out
}

/// An instant in the UTC form of DATE-TIME (RFC 5545 §3.3.5), e.g. `20261129T101500Z`. Fractions
/// of a second have no place in the format and are dropped.
fn format_utc(instant: DateTime<Utc>) -> String {
    instant.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Escapes a TEXT value (RFC 5545 §3.3.11): backslash, semicolon and comma get a backslash, line
/// breaks (CRLF, LF or CR) become `\n`. Other control characters are not allowed in TEXT and would
/// break the line structure for some readers, so they are dropped; a tab is kept.
fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\r' => {
                // CRLF is one line break, not two.
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\n");
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Appends the content line `name:value` folded at 75 octets (RFC 5545 §3.1): each continuation
/// line starts with one space, which counts towards its 75. Breaks fall only between characters,
/// never inside a UTF-8 sequence, so every physical line is valid UTF-8 on its own.
fn push_folded(out: &mut String, name: &str, value: &str) {
    let mut octets_on_line = 0;
    for c in name
        .chars()
        .chain(std::iter::once(':'))
        .chain(value.chars())
    {
        if octets_on_line + c.len_utf8() > MAX_LINE_OCTETS {
            out.push_str("\r\n ");
            octets_on_line = 1;
        }
        out.push(c);
        octets_on_line += c.len_utf8();
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid UTC instant")
    }

    fn lesson(summary: &str) -> CalendarEvent {
        CalendarEvent {
            uid: "0190f5a2-7c1e-7a00-8000-000000000001".to_owned(),
            start: at(2026, 12, 1, 15, 0),
            end: at(2026, 12, 1, 16, 0),
            summary: summary.to_owned(),
            description: String::new(),
            status: EventStatus::Confirmed,
            sequence: 0,
            last_modified: at(2026, 11, 20, 9, 30),
        }
    }

    fn now() -> DateTime<Utc> {
        at(2026, 11, 29, 10, 15)
    }

    /// Joins folded lines back (RFC 5545 §3.1) and splits the file into (name, value) pairs.
    fn parse(ics: &str) -> Vec<(String, String)> {
        let unfolded = ics.replace("\r\n ", "");
        let body = unfolded
            .strip_suffix("\r\n")
            .expect("the file ends with CRLF");
        body.split("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(':').expect("name:value");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn unescape(value: &str) -> String {
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n' | 'N') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn value_of<'a>(properties: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        properties
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn an_empty_calendar_has_the_header_and_footer_only() {
        let ics = render("Уроки", &[], now());
        assert_eq!(
            ics,
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//RepitBot//Lessons//EN\r\n\
             CALSCALE:GREGORIAN\r\nMETHOD:PUBLISH\r\nX-WR-CALNAME:Уроки\r\nEND:VCALENDAR\r\n"
        );
    }

    #[test]
    fn an_event_has_every_property_in_order() {
        let mut event = lesson("Math with Anna");
        event.description = "Chapter 3".to_owned();
        event.sequence = 2;
        let ics = render("Lessons", &[event], now());
        let expected = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//RepitBot//Lessons//EN\r\n\
             CALSCALE:GREGORIAN\r\nMETHOD:PUBLISH\r\nX-WR-CALNAME:Lessons\r\n\
             BEGIN:VEVENT\r\nUID:0190f5a2-7c1e-7a00-8000-000000000001@repit.app\r\n\
             DTSTAMP:20261129T101500Z\r\nDTSTART:20261201T150000Z\r\nDTEND:20261201T160000Z\r\n\
             SUMMARY:Math with Anna\r\nDESCRIPTION:Chapter 3\r\nSTATUS:CONFIRMED\r\nSEQUENCE:2\r\n\
             LAST-MODIFIED:20261120T093000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        assert_eq!(ics, expected);
    }

    #[test]
    fn an_empty_description_is_left_out() {
        let ics = render("Lessons", &[lesson("Math")], now());
        assert!(!ics.contains("DESCRIPTION"));
    }

    #[test]
    fn a_cancelled_event_is_marked_cancelled() {
        let mut event = lesson("Math");
        event.status = EventStatus::Cancelled;
        let ics = render("Lessons", &[event], now());
        assert!(ics.contains("\r\nSTATUS:CANCELLED\r\n"));
        assert!(!ics.contains("CONFIRMED"));
    }

    #[test]
    fn text_values_are_escaped() {
        assert_eq!(escape_text(r"a\b;c,d"), r"a\\b\;c\,d");
        assert_eq!(
            escape_text("one\ntwo\r\nthree\rfour"),
            r"one\ntwo\nthree\nfour"
        );
        assert_eq!(
            escape_text("tab\tkept, bell\u{7} dropped"),
            "tab\tkept\\, bell dropped"
        );
        // Colons need no escaping in a value: the first colon ends the name.
        assert_eq!(escape_text("10:00"), "10:00");
        let mut event = lesson("Algebra; exam, part 1");
        event.description = "Bring: a calculator\nand C:\\notes".to_owned();
        let ics = render("Anna, math; physics", &[event], now());
        assert!(ics.contains("\r\nSUMMARY:Algebra\\; exam\\, part 1\r\n"));
        assert!(ics.contains("\r\nDESCRIPTION:Bring: a calculator\\nand C:\\\\notes\r\n"));
        assert!(ics.contains("\r\nX-WR-CALNAME:Anna\\, math\\; physics\r\n"));
    }

    #[test]
    fn a_long_cyrillic_summary_is_folded_at_75_octets_without_splitting_characters() {
        let summary = "Подготовка к ЕГЭ по математике: производные, интегралы и задачи с \
                       параметром — повторение всей второй части";
        let ics = render("Уроки", &[lesson(summary)], now());
        let physical: Vec<&str> = ics.split("\r\n").collect();
        assert!(physical.iter().all(|line| line.len() <= MAX_LINE_OCTETS));
        let summary_lines: Vec<&str> = physical
            .iter()
            .copied()
            .skip_while(|line| !line.starts_with("SUMMARY:"))
            .take_while(|line| line.starts_with("SUMMARY:") || line.starts_with(' '))
            .collect();
        assert!(summary_lines.len() > 2, "{summary_lines:?}");
        // Folding fills each line: a Cyrillic letter is 2 octets, so lines are 74 or 75 long.
        for line in &summary_lines[..summary_lines.len() - 1] {
            assert!(line.len() >= MAX_LINE_OCTETS - 3, "{line:?} is short");
        }
        let properties = parse(&ics);
        assert_eq!(
            value_of(&properties, "SUMMARY"),
            [escape_text(summary).as_str()]
        );
        assert_eq!(unescape(value_of(&properties, "SUMMARY")[0]), summary);
    }

    #[test]
    fn folding_counts_octets_of_four_byte_characters() {
        let mut out = String::new();
        let value = "🎓".repeat(40);
        push_folded(&mut out, "SUMMARY", &value);
        for line in out.split("\r\n") {
            assert!(line.len() <= MAX_LINE_OCTETS, "{line:?}");
        }
        assert_eq!(out.replace("\r\n ", ""), format!("SUMMARY:{value}\r\n"));
    }

    #[test]
    fn a_line_of_exactly_75_octets_is_not_folded() {
        let mut out = String::new();
        push_folded(
            &mut out,
            "SUMMARY",
            &"x".repeat(MAX_LINE_OCTETS - "SUMMARY:".len()),
        );
        assert_eq!(out.matches("\r\n").count(), 1);
        let mut out = String::new();
        push_folded(
            &mut out,
            "SUMMARY",
            &"x".repeat(MAX_LINE_OCTETS - "SUMMARY:".len() + 1),
        );
        assert_eq!(out.matches("\r\n").count(), 2);
        assert!(out.ends_with("\r\n x\r\n"));
    }

    #[test]
    fn every_line_ends_with_crlf() {
        let mut event = lesson(&"длинное название ".repeat(10));
        event.description = "line one\nline two\r\nline three".to_owned();
        let ics = render("Уроки", &[event.clone(), event], now());
        assert!(ics.ends_with("\r\n"));
        let bytes = ics.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at octet {i}");
            }
            if b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at octet {i}");
            }
        }
    }

    #[test]
    fn the_output_parses_back_into_the_events() {
        let first = CalendarEvent {
            description: "Тема: квадратные уравнения; домашнее задание, стр. 42\nНе забыть \
                          тетрадь"
                .to_owned(),
            sequence: 3,
            ..lesson(&"Математика с Анной Сергеевной, 9 класс; ".repeat(3))
        };
        let second = CalendarEvent {
            uid: "0190f5a2-7c1e-7a00-8000-000000000002".to_owned(),
            start: at(2026, 12, 3, 15, 0),
            end: at(2026, 12, 3, 16, 30),
            status: EventStatus::Cancelled,
            ..lesson("Physics")
        };
        let ics = render("Anna's lessons", &[first.clone(), second.clone()], now());
        let properties = parse(&ics);

        let names: Vec<&str> = properties.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"BEGIN"));
        assert_eq!(names.last(), Some(&"END"));
        assert_eq!(
            value_of(&properties, "BEGIN"),
            ["VCALENDAR", "VEVENT", "VEVENT"]
        );
        assert_eq!(
            value_of(&properties, "END"),
            ["VEVENT", "VEVENT", "VCALENDAR"]
        );
        assert_eq!(value_of(&properties, "X-WR-CALNAME"), ["Anna's lessons"]);
        assert_eq!(
            value_of(&properties, "UID"),
            [
                "0190f5a2-7c1e-7a00-8000-000000000001@repit.app",
                "0190f5a2-7c1e-7a00-8000-000000000002@repit.app"
            ]
        );
        assert_eq!(value_of(&properties, "DTSTAMP"), ["20261129T101500Z"; 2]);
        assert_eq!(
            value_of(&properties, "DTSTART"),
            ["20261201T150000Z", "20261203T150000Z"]
        );
        assert_eq!(
            value_of(&properties, "DTEND"),
            ["20261201T160000Z", "20261203T163000Z"]
        );
        let summaries: Vec<String> = value_of(&properties, "SUMMARY")
            .into_iter()
            .map(unescape)
            .collect();
        assert_eq!(summaries, [first.summary, second.summary]);
        let descriptions: Vec<String> = value_of(&properties, "DESCRIPTION")
            .into_iter()
            .map(unescape)
            .collect();
        assert_eq!(descriptions, [first.description]);
        assert_eq!(value_of(&properties, "STATUS"), ["CONFIRMED", "CANCELLED"]);
        assert_eq!(value_of(&properties, "SEQUENCE"), ["3", "0"]);
        assert_eq!(
            value_of(&properties, "LAST-MODIFIED"),
            ["20261120T093000Z"; 2]
        );
    }
}
