//! The `$all` filter on KurrentDB: one prefix list (or a regular expression) on stream names *or*
//! event types runs on the server; everything else [`AllFilter`] asks for runs here.

use std::num::NonZeroU32;

use kurrentdb as kdb;

use crate::model::AllFilter;

/// KurrentDB's read batch size, the unit of its checkpoint window.
const CHECKPOINT_WINDOW_UNIT: u32 = 32;

/// The part of an [`AllFilter`] the server applies.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) enum ServerFilter {
    /// No server-side filter.
    Everything,
    /// Streams whose names start with one of these.
    StreamPrefixes(Vec<String>),
    /// Events whose types start with one of these.
    EventTypePrefixes(Vec<String>),
    /// Events whose types do not start with `$` (the client's "exclude system events").
    NoSystemEventTypes,
}

/// How a read or subscription of `$all` is filtered.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct FilterPlan {
    pub(super) server: ServerFilter,
    /// Whether the server's filter is the whole filter, so no event it sends is dropped here
    /// (tombstone markers aside) and its counts can be trusted.
    pub(super) exact: bool,
}

/// Splits `filter` between the server and the client.
///
/// The server takes the stream prefixes when there are any (a category is what projections and
/// the relay usually follow, and it is the more selective list), else the event type prefixes,
/// else, for `exclude_system` alone, its "no system event types" expression. Prefixes and that
/// expression cannot be combined on the server (an expression replaces the prefixes), so the
/// client applies the whole [`AllFilter::matches`] to what arrives, which also drops events of
/// `$` streams whose type does not start with `$`.
pub(super) fn plan(filter: &AllFilter) -> FilterPlan {
    let has_types = !filter.event_type_prefixes.is_empty();
    if !filter.stream_prefixes.is_empty() {
        FilterPlan {
            server: ServerFilter::StreamPrefixes(filter.stream_prefixes.clone()),
            exact: !has_types && !filter.exclude_system,
        }
    } else if has_types {
        FilterPlan {
            server: ServerFilter::EventTypePrefixes(filter.event_type_prefixes.clone()),
            exact: !filter.exclude_system,
        }
    } else if filter.exclude_system {
        FilterPlan {
            server: ServerFilter::NoSystemEventTypes,
            exact: false,
        }
    } else {
        FilterPlan {
            server: ServerFilter::Everything,
            exact: true,
        }
    }
}

impl ServerFilter {
    /// The client's filter; `window` is the checkpoint window for subscriptions.
    pub(super) fn to_client(&self, window: Option<u32>) -> Option<kdb::SubscriptionFilter> {
        let filter = match self {
            Self::Everything => return None,
            Self::StreamPrefixes(prefixes) => prefixes
                .iter()
                .fold(kdb::SubscriptionFilter::on_stream_name(), |f, p| {
                    f.add_prefix(p)
                }),
            Self::EventTypePrefixes(prefixes) => prefixes
                .iter()
                .fold(kdb::SubscriptionFilter::on_event_type(), |f, p| {
                    f.add_prefix(p)
                }),
            Self::NoSystemEventTypes => {
                kdb::SubscriptionFilter::on_event_type().exclude_system_events()
            }
        };
        Some(match window {
            Some(window) => filter.max(window),
            None => filter,
        })
    }
}

/// The server's checkpoint window for a checkpoint interval.
///
/// The client fixes KurrentDB's checkpoint interval multiplier at 1, so the server sends a
/// checkpoint every `window` events it considers; the window is also how many events it scans per
/// page, so small windows make catch-up slow. The interval is therefore rounded up to a multiple
/// of 32, KurrentDB's read batch (its default window). Events the client drops count towards the
/// interval separately (see `subscribe::AllProgress`).
pub(super) fn checkpoint_window(interval: NonZeroU32) -> u32 {
    interval
        .get()
        .div_ceil(CHECKPOINT_WINDOW_UNIT)
        .saturating_mul(CHECKPOINT_WINDOW_UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_prefixes_go_to_the_server_and_the_rest_is_applied_here() {
        let filter = AllFilter::default()
            .stream_prefix("lesson-")
            .stream_prefix("tutor-");
        assert_eq!(
            plan(&filter),
            FilterPlan {
                server: ServerFilter::StreamPrefixes(vec!["lesson-".into(), "tutor-".into()]),
                exact: true,
            }
        );
        let both = filter.clone().event_type_prefix("repit.lesson.");
        assert_eq!(
            plan(&both),
            FilterPlan {
                server: ServerFilter::StreamPrefixes(vec!["lesson-".into(), "tutor-".into()]),
                exact: false,
            }
        );
        assert!(!plan(&filter.exclude_system()).exact);
    }

    #[test]
    fn event_type_prefixes_go_to_the_server_when_there_are_no_stream_prefixes() {
        let filter = AllFilter::default().event_type_prefix("repit.lesson.");
        assert_eq!(
            plan(&filter),
            FilterPlan {
                server: ServerFilter::EventTypePrefixes(vec!["repit.lesson.".into()]),
                exact: true,
            }
        );
        assert_eq!(
            plan(&filter.exclude_system()),
            FilterPlan {
                server: ServerFilter::EventTypePrefixes(vec!["repit.lesson.".into()]),
                exact: false,
            }
        );
    }

    #[test]
    fn excluding_system_events_alone_uses_the_servers_expression_and_checks_streams_here() {
        let filter = AllFilter::default().exclude_system();
        assert_eq!(
            plan(&filter),
            FilterPlan {
                server: ServerFilter::NoSystemEventTypes,
                exact: false,
            }
        );
        // What the client must still drop: an ordinary event type in a system stream.
        assert!(!filter.matches("$ce-lesson", "repit.lesson.v1.LessonScheduled"));
        assert_eq!(
            plan(&AllFilter::default()),
            FilterPlan {
                server: ServerFilter::Everything,
                exact: true,
            }
        );
        assert!(ServerFilter::Everything.to_client(Some(32)).is_none());
    }

    #[test]
    fn the_client_filter_carries_the_prefixes_and_the_window() {
        let filter = ServerFilter::StreamPrefixes(vec!["lesson-".into()])
            .to_client(Some(64))
            .expect("a filter");
        let shown = format!("{filter:?}");
        assert!(shown.contains("based_on_stream: true"), "{shown}");
        assert!(shown.contains("max: Some(64)"), "{shown}");
        assert!(shown.contains("\"lesson-\""), "{shown}");
        let types = format!(
            "{:?}",
            ServerFilter::NoSystemEventTypes
                .to_client(None)
                .expect("a filter")
        );
        assert!(types.contains("based_on_stream: false"), "{types}");
        assert!(types.contains(r#"regex: Some("^[^\\$].*")"#), "{types}");
        assert!(types.contains("max: None"), "{types}");
    }

    #[test]
    fn checkpoint_intervals_round_up_to_the_servers_window() {
        let window = |n| checkpoint_window(NonZeroU32::new(n).expect("non-zero"));
        assert_eq!(window(1), 32);
        assert_eq!(window(32), 32);
        assert_eq!(window(33), 64);
        assert_eq!(window(1000), 1024);
        assert_eq!(window(u32::MAX), u32::MAX);
    }
}
