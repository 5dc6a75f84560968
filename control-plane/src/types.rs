//! Small domain types shared by the control plane's modules.

use llmlb_proto::v1;

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMs = i64;

/// Now, in Unix milliseconds.
pub fn now_ms() -> UnixMs {
    chrono::Utc::now().timestamp_millis()
}

/// The UTC minute (minutes since the epoch) that contains `ms`.
pub fn minute_of(ms: UnixMs) -> i64 {
    ms.div_euclid(60_000)
}

/// The UTC date (`YYYY-MM-DD`) that contains `ms`.
pub fn utc_date(ms: UnixMs) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// A protobuf timestamp for `ms`.
pub fn timestamp(ms: UnixMs) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unix ms of a protobuf timestamp.
pub fn from_timestamp(ts: &pbjson_types::Timestamp) -> UnixMs {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// Health of an endpoint, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not probed yet.
    Pending,
    /// Last probe succeeded.
    Online,
    /// One failed probe.
    Error,
    /// Two or more consecutive failed probes.
    Offline,
}

impl Status {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Online => "online",
            Status::Error => "error",
            Status::Offline => "offline",
        }
    }

    /// Parses the database spelling; unknown values read as pending.
    pub fn parse(s: &str) -> Status {
        match s {
            "online" => Status::Online,
            "error" => Status::Error,
            "offline" => Status::Offline,
            _ => Status::Pending,
        }
    }

    /// The status after a probe, given the consecutive failures so far
    /// (including this probe when it failed).
    pub fn after_probe(success: bool, consecutive_failures: u32) -> Status {
        match (success, consecutive_failures) {
            (true, _) => Status::Online,
            (false, 0 | 1) => Status::Error,
            (false, _) => Status::Offline,
        }
    }
}

impl From<Status> for v1::EndpointStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => v1::EndpointStatus::Pending,
            Status::Online => v1::EndpointStatus::Online,
            Status::Error => v1::EndpointStatus::Error,
            Status::Offline => v1::EndpointStatus::Offline,
        }
    }
}

/// Key of per-model figures: endpoint × model × API kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    /// Endpoint UUID.
    pub endpoint_id: uuid::Uuid,
    /// Model name as requested.
    pub model: String,
    /// `v1::ApiKind` as i32.
    pub api_kind: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_contract() {
        assert_eq!(Status::after_probe(true, 0), Status::Online);
        assert_eq!(Status::after_probe(false, 1), Status::Error);
        assert_eq!(Status::after_probe(false, 2), Status::Offline);
        assert_eq!(Status::after_probe(false, 7), Status::Offline);
        for s in [
            Status::Pending,
            Status::Online,
            Status::Error,
            Status::Offline,
        ] {
            assert_eq!(Status::parse(s.as_str()), s);
        }
    }

    #[test]
    fn minutes_and_dates_are_utc() {
        // 2026-11-28T23:59:59.999Z and the next millisecond.
        let before = 1_795_910_399_999;
        assert_eq!(minute_of(before) + 1, minute_of(before + 1));
        assert_eq!(utc_date(before), "2026-11-28");
        assert_eq!(utc_date(before + 1), "2026-11-29");
        assert_eq!(minute_of(59_999), 0);
        assert_eq!(minute_of(60_000), 1);
        assert_eq!(from_timestamp(&timestamp(before)), before);
    }
}
