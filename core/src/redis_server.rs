//! What the Redis server behind `REDIS_URL` can do with streams, decided once, here.
//!
//! entra-sync supports Redis 6.0 or newer and Valkey (`contract.md`): Azure Cache for Redis still
//! serves 6.0. The stream commands the worker and the webhook need grew over those versions:
//!
//! | need | 7.0 and newer, Valkey | 6.2 | 6.0 |
//! | --- | --- | --- | --- |
//! | take over a dead consumer's entries | `XAUTOCLAIM`, deleted ids listed | `XAUTOCLAIM`, deleted entries as nil | `XPENDING` + `XCLAIM` |
//! | trim below the oldest unacknowledged entry | `XTRIM MINID` | `XTRIM MINID` | `XRANGE` + `XDEL`, in batches |
//! | the group's lag | `XINFO GROUPS` `lag` | counted, see [`group_progress`] | counted |
//!
//! `XPENDING`'s `IDLE` filter and `XRANGE`'s exclusive `(` bounds came with 6.2 too; nothing
//! here uses them, so they need no capability: idle time is filtered client-side on the 6.0 path,
//! and [`id_after`] makes an inclusive bound exclusive on every version.

use std::collections::HashMap;

use redis::streams::{StreamInfoGroup, StreamInfoGroupsReply, StreamRangeReply};

use crate::record::CONSUMER_GROUP;

/// A server's version, as `INFO server` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// `6.2.14`, `7.0.15`; a missing minor or patch counts as 0, anything after a non-digit
    /// (`7.4.0-rc1`) is ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().splitn(3, '.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self::new(major, minor, patch))
    }

    /// The version in `INFO server`'s text. Valkey reports `valkey_version` and, for the clients
    /// that check it, the Redis version it is compatible with as `redis_version` (7.2.4): that is
    /// the one that says which Redis commands it has. A server reporting only `valkey_version`
    /// still descends from Redis 7.2.4.
    pub fn from_info(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        match field("redis_version") {
            Some(version) => Self::parse(version),
            None => field("valkey_version").map(|_| VALKEY_BASE),
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The Redis version Valkey was forked from.
const VALKEY_BASE: ServerVersion = ServerVersion::new(7, 2, 4);

/// How a dead consumer's pending entries are taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimMethod {
    /// `XAUTOCLAIM` (6.2 and newer).
    AutoClaim,
    /// `XPENDING` (extended form), the idle ones chosen here, then `XCLAIM` (6.0).
    PendingThenClaim,
}

/// How acknowledged entries are removed from the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimMethod {
    /// `XTRIM MINID` (6.2 and newer).
    MinId,
    /// `XRANGE` then `XDEL` of the ids below the oldest unacknowledged one, a bounded number of
    /// batches per trim (6.0, whose `XTRIM` knows only `MAXLEN`, which would race new entries).
    DeleteBelow,
}

/// Where the group's lag comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LagSource {
    /// `XINFO GROUPS` `lag` (7.0 and newer), counted as below when Redis cannot tell it.
    GroupInfo,
    /// Counted: see [`group_progress`].
    Counted,
}

/// The stream commands a server has, from its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisCapabilities {
    /// `None` when the server did not say.
    pub version: Option<ServerVersion>,
    pub claim: ClaimMethod,
    pub trim: TrimMethod,
    pub lag: LagSource,
}

impl RedisCapabilities {
    /// What a server of this version can do.
    pub fn of(version: ServerVersion) -> Self {
        let at_least = |major, minor| version >= ServerVersion::new(major, minor, 0);
        Self {
            version: Some(version),
            claim: if at_least(6, 2) {
                ClaimMethod::AutoClaim
            } else {
                ClaimMethod::PendingThenClaim
            },
            trim: if at_least(6, 2) {
                TrimMethod::MinId
            } else {
                TrimMethod::DeleteBelow
            },
            lag: if at_least(7, 0) {
                LagSource::GroupInfo
            } else {
                LagSource::Counted
            },
        }
    }

    /// The oldest supported server's (Redis 6.0): works on every supported server, so it is also
    /// what a server that does not tell its version gets, and what tests force to exercise the
    /// 6.0 path on a newer server.
    pub fn redis_6_0() -> Self {
        Self {
            version: None,
            ..Self::of(ServerVersion::new(6, 0, 0))
        }
    }

    /// Asks the server (`INFO server`). A server that answers `INFO` with an error (renamed or
    /// denied by an ACL on some managed services) gets the 6.0 path, which works everywhere,
    /// rather than a worker that cannot start.
    pub async fn detect(
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<Self> {
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("server")
            .query_async(connection)
            .await;
        match info {
            Ok(info) => Ok(ServerVersion::from_info(&info).map_or_else(Self::redis_6_0, Self::of)),
            // An error reply has a code; a broken connection does not, and is the caller's.
            Err(error) if error.code().is_some() => {
                tracing::warn!(%error, "INFO is refused: assuming Redis 6.0's stream commands");
                Ok(Self::redis_6_0())
            }
            Err(error) => Err(error),
        }
    }
}

impl std::fmt::Display for RedisCapabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(version) => write!(f, "Redis {version}")?,
            None => write!(f, "Redis of unknown version")?,
        }
        let claim = match self.claim {
            ClaimMethod::AutoClaim => "XAUTOCLAIM",
            ClaimMethod::PendingThenClaim => "XPENDING and XCLAIM",
        };
        let trim = match self.trim {
            TrimMethod::MinId => "XTRIM MINID",
            TrimMethod::DeleteBelow => "XDEL",
        };
        let lag = match self.lag {
            LagSource::GroupInfo => "from XINFO GROUPS",
            LagSource::Counted => "counted",
        };
        write!(f, ": claims with {claim}, trims with {trim}, lag {lag}")
    }
}

/// Up to this many unread entries, a counted lag is exact; beyond, it is an upper bound. Counting
/// reads the entries themselves (there is no cheaper way before 7.0), so it stays small.
pub const LAG_COUNT_LIMIT: usize = 100;

/// Where the workers' consumer group stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupProgress {
    /// Entries no worker has read yet.
    pub lag: i64,
    /// Entries read and not acknowledged yet.
    pub pending: i64,
}

/// The workers' group's progress on `stream`; `None` when there is no such stream or group yet.
///
/// Without `lag` from Redis (before 7.0, and on 7.0 after entries were deleted from the middle
/// of the stream) the entries after the group's last delivered id are counted, exactly up to
/// [`LAG_COUNT_LIMIT`]; beyond it the lag is taken as the stream's length less the pending
/// entries, an upper bound (the stream also holds acknowledged entries until the next trim).
pub async fn group_progress(
    connection: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    capabilities: &RedisCapabilities,
) -> redis::RedisResult<Option<GroupProgress>> {
    let Some(group) = workers_group(connection, stream).await? else {
        return Ok(None);
    };
    let pending = as_i64(group.pending);
    let reported = match capabilities.lag {
        LagSource::GroupInfo => group.lag,
        LagSource::Counted => None,
    };
    let lag = match reported {
        Some(lag) => as_i64(lag),
        None => count_lag(connection, stream, &group.last_delivered_id, pending).await?,
    };
    Ok(Some(GroupProgress { lag, pending }))
}

/// The workers' consumer group on `stream` as `XINFO GROUPS` describes it; `None` when there is
/// no such stream or group yet.
pub async fn workers_group(
    connection: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> redis::RedisResult<Option<StreamInfoGroup>> {
    let groups: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(connection)
        .await;
    match groups {
        Ok(groups) => Ok(groups.groups.into_iter().find(|g| g.name == CONSUMER_GROUP)),
        // "ERR no such key": no stream yet.
        Err(error) if error.code() == Some("ERR") => Ok(None),
        Err(error) => Err(error),
    }
}

async fn count_lag(
    connection: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    last_delivered: &str,
    pending: i64,
) -> redis::RedisResult<i64> {
    let unread: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(id_after(last_delivered))
        .arg("+")
        .arg("COUNT")
        .arg(LAG_COUNT_LIMIT + 1)
        .query_async(&mut *connection)
        .await?;
    if unread.ids.len() <= LAG_COUNT_LIMIT {
        return Ok(as_i64(unread.ids.len()));
    }
    let length: i64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut *connection)
        .await?;
    Ok((length - pending).max(as_i64(unread.ids.len())))
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The smallest stream id after `id` (`ms-seq` -> `ms-(seq+1)`), which makes an inclusive range
/// bound exclusive on servers without `(` bounds (before 6.2).
pub fn id_after(id: &str) -> String {
    let Some((ms, seq)) = id.split_once('-') else {
        return id.to_owned();
    };
    match (ms.parse::<u64>(), seq.parse::<u64>()) {
        (Ok(ms), Ok(u64::MAX)) => format!("{}-0", ms.saturating_add(1)),
        (Ok(ms), Ok(seq)) => format!("{ms}-{}", seq + 1),
        _ => id.to_owned(),
    }
}

/// A stream entry's fields as strings. A value that is not UTF-8 is kept, lossily, rather than
/// failing the whole reply: the entry is then unreadable as a record and goes to the dead-letter
/// stream instead of blocking every read.
pub fn fields_as_strings(fields: HashMap<String, redis::Value>) -> HashMap<String, String> {
    fields
        .into_iter()
        .map(|(field, value)| {
            let text = match value {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                redis::Value::SimpleString(text) => text,
                redis::Value::Int(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            (field, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_info_text() {
        let redis = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:40305114\r\n";
        assert_eq!(
            ServerVersion::from_info(redis),
            Some(ServerVersion::new(6, 2, 14))
        );
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n";
        assert_eq!(
            ServerVersion::from_info(valkey),
            Some(ServerVersion::new(7, 2, 4))
        );
        assert_eq!(
            ServerVersion::from_info("# Server\nvalkey_version:8.0.1\n"),
            Some(ServerVersion::new(7, 2, 4)),
            "Valkey without a redis_version still has Redis 7.2's commands"
        );
        assert_eq!(ServerVersion::from_info("# Server\nos:Linux\n"), None);
        // A field whose name only starts like the one wanted is not it.
        assert_eq!(ServerVersion::from_info("redis_version_x:9.9.9\n"), None);
    }

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(
            ServerVersion::parse("7.0.15"),
            Some(ServerVersion::new(7, 0, 15))
        );
        assert_eq!(ServerVersion::parse("6"), Some(ServerVersion::new(6, 0, 0)));
        assert_eq!(
            ServerVersion::parse("7.4.0-rc1"),
            Some(ServerVersion::new(7, 4, 0))
        );
        assert_eq!(
            ServerVersion::parse("255.255.255"),
            Some(ServerVersion::new(255, 255, 255))
        );
        assert_eq!(ServerVersion::parse("unknown"), None);
        assert_eq!(ServerVersion::parse(""), None);
    }

    #[test]
    fn each_version_gets_the_commands_it_has() {
        let of =
            |major, minor, patch| RedisCapabilities::of(ServerVersion::new(major, minor, patch));
        for old in [of(6, 0, 0), of(6, 0, 20), RedisCapabilities::redis_6_0()] {
            assert_eq!(old.claim, ClaimMethod::PendingThenClaim);
            assert_eq!(old.trim, TrimMethod::DeleteBelow);
            assert_eq!(old.lag, LagSource::Counted);
        }
        let six_two = of(6, 2, 0);
        assert_eq!(six_two.claim, ClaimMethod::AutoClaim);
        assert_eq!(six_two.trim, TrimMethod::MinId);
        assert_eq!(six_two.lag, LagSource::Counted);
        for new in [of(7, 0, 0), of(7, 2, 4), of(8, 0, 2)] {
            assert_eq!(new.claim, ClaimMethod::AutoClaim);
            assert_eq!(new.trim, TrimMethod::MinId);
            assert_eq!(new.lag, LagSource::GroupInfo);
        }
        assert_eq!(
            of(6, 2, 14).to_string(),
            "Redis 6.2.14: claims with XAUTOCLAIM, trims with XTRIM MINID, lag counted"
        );
    }

    #[test]
    fn the_id_after_another_is_the_next_sequence_number() {
        assert_eq!(id_after("1700000000000-0"), "1700000000000-1");
        assert_eq!(id_after("5-41"), "5-42");
        assert_eq!(id_after("5-18446744073709551615"), "6-0");
        assert_eq!(id_after("0-0"), "0-1");
    }

    #[test]
    fn field_values_become_strings_even_when_not_utf8() {
        let fields = HashMap::from([
            ("v".to_owned(), redis::Value::BulkString(b"1".to_vec())),
            (
                "junk".to_owned(),
                redis::Value::BulkString(vec![0xff, b'a']),
            ),
        ]);
        let strings = fields_as_strings(fields);
        assert_eq!(strings["v"], "1");
        assert_eq!(strings["junk"], "\u{fffd}a");
    }
}
