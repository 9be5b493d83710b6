//! The embedded call store: recent call records and anomalies in one SQLite file.
//!
//! It owns the schema ([`SCHEMA`], versioned by [`SCHEMA_VERSION`] in SQLite's `user_version`),
//! batched inserts (one transaction per batch), retention (at most `max_rows` calls and
//! anomalies, none older than `max_age` behind the newest call), and the queries the CLI and UI
//! ask: the last calls, an edge's calls, calls by status, the last anomalies. Results are owned,
//! flat, `Serialize` structs ([`StoredCall`], [`Anomaly`]).
//!
//! The file is in WAL mode, so readers (another process with `sqlite3`, a dashboard) do not block
//! the writer; calls are indexed by time, by edge (client, server, time) and by status.
//!
//! # Export at scale
//!
//! The store is for the recent past on one node: a day or a million calls. Keeping more, or
//! keeping a cluster's calls in one place, is a job for a log pipeline, and there are two ways
//! out. The schema is stable: [`SCHEMA`] is the whole `CREATE TABLE` text, changes bump
//! [`SCHEMA_VERSION`], so tools may read the file directly (`sqlite3 -json calls.db 'select *
//! from calls'`). And the caller can write each [`CallRecord`] (or [`StoredCall`]) as one JSON
//! line with `serde_json`, next to or instead of the store, for Vector, Fluent Bit or any log
//! shipper to pick up.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use crate::anomaly::{Anomaly, AnomalyKind, Evidence};
use crate::call::{CallRecord, Endpoint, Outcome, Protocol};
use crate::servicemap::EdgeKey;

/// The version of [`SCHEMA`], kept in SQLite's `user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// The store's tables and indexes. Times are Unix nanoseconds, sizes bytes.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    authority TEXT,
    status INTEGER,
    grpc_status INTEGER,
    latency_ms REAL,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    client TEXT NOT NULL,
    server TEXT NOT NULL,
    client_ip TEXT,
    client_port INTEGER NOT NULL,
    server_ip TEXT,
    server_port INTEGER NOT NULL,
    client_namespace TEXT,
    client_pod TEXT,
    server_namespace TEXT,
    server_pod TEXT,
    server_service TEXT,
    decrypted INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    outcome_reason TEXT,
    error INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_time ON calls (time_ns);
CREATE INDEX IF NOT EXISTS calls_edge ON calls (client, server, time_ns);
CREATE INDEX IF NOT EXISTS calls_status ON calls (status, time_ns);
CREATE TABLE IF NOT EXISTS anomalies (
    id INTEGER PRIMARY KEY,
    at_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    client TEXT NOT NULL,
    server TEXT NOT NULL,
    protocol TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS anomalies_time ON anomalies (at_ns);
";

const CALL_COLUMNS: &str = "id, time_ns, protocol, method, path, authority, status, grpc_status, \
     latency_ms, request_bytes, response_bytes, client, server, client_ip, client_port, \
     server_ip, server_port, client_namespace, client_pod, server_namespace, server_pod, \
     server_service, decrypted, outcome, outcome_reason, error";

const NS_PER_SEC: u64 = 1_000_000_000;

/// How much the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most calls (and, separately, anomalies) kept; the oldest go first. `None`: no limit.
    pub max_rows: Option<u64>,
    /// Calls and anomalies older than this many seconds behind the newest call are removed.
    /// `None`: no limit.
    pub max_age_secs: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_rows: Some(1_000_000),
            max_age_secs: Some(24 * 3600),
        }
    }
}

/// What can go wrong with the store; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or configured.
    #[error("cannot open the call store {path}")]
    Open {
        /// The store's file (`:memory:` for an in-memory store).
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a build with another schema.
    #[error("the call store {path} has schema version {found}, this build uses {SCHEMA_VERSION}")]
    Version {
        /// The store's file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
    },
    /// A write (insert or retention) failed; the batch was rolled back.
    #[error("cannot write to the call store {path}")]
    Write {
        /// The store's file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("cannot read the call store {path}")]
    Read {
        /// The store's file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// An anomaly's evidence could not be encoded or decoded as JSON.
    #[error("bad anomaly evidence in the call store {path}")]
    Evidence {
        /// The store's file.
        path: PathBuf,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value this build does not know (a protocol or anomaly kind name).
    #[error("the call store {path} holds an unknown {what} `{value}`")]
    Unknown {
        /// The store's file.
        path: PathBuf,
        /// Which column.
        what: &'static str,
        /// The value found.
        value: String,
    },
}

/// A stored call: the record's fields, flattened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredCall {
    /// Row id (grows with insertion).
    pub id: i64,
    /// When the request's first byte was seen (Unix ns).
    pub time_ns: u64,
    /// The protocol.
    pub protocol: Protocol,
    /// HTTP method, DNS query type.
    pub method: String,
    /// Path (redacted as recorded), gRPC method path, DNS name.
    pub path: String,
    /// `Host` / `:authority`.
    pub authority: Option<String>,
    /// HTTP status or DNS response code.
    pub status: Option<u32>,
    /// gRPC status.
    pub grpc_status: Option<u32>,
    /// Request's first byte to response's first byte, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// The client's label (`namespace/workload` or address).
    pub client: String,
    /// The server's label.
    pub server: String,
    /// The client's address.
    pub client_ip: Option<String>,
    /// The client's port.
    pub client_port: u16,
    /// The server's address.
    pub server_ip: Option<String>,
    /// The server's port.
    pub server_port: u16,
    /// The client's namespace.
    pub client_namespace: Option<String>,
    /// The client's pod.
    pub client_pod: Option<String>,
    /// The server's namespace.
    pub server_namespace: Option<String>,
    /// The server's pod.
    pub server_pod: Option<String>,
    /// The server's service.
    pub server_service: Option<String>,
    /// Seen in decrypted TLS plaintext.
    pub decrypted: bool,
    /// `complete`, `no_response` or `incomplete`.
    pub outcome: String,
    /// Why the call is incomplete.
    pub outcome_reason: Option<String>,
    /// Whether the call failed ([`crate::call::Call::is_error`]).
    pub error: bool,
}

/// Recent calls and anomalies in SQLite.
#[derive(Debug)]
pub struct CallStore {
    conn: Connection,
    path: PathBuf,
    config: StoreConfig,
    /// The newest call time stored: retention's "now".
    newest_ns: u64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn protocol_named(name: &str) -> Option<Protocol> {
    [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::Dns,
    ]
    .into_iter()
    .find(|p| p.as_str() == name)
}

fn outcome_parts(o: &Outcome) -> (&'static str, Option<&'static str>) {
    match o {
        Outcome::Complete => ("complete", None),
        Outcome::NoResponse => ("no_response", None),
        Outcome::Incomplete(reason) => ("incomplete", Some(*reason)),
    }
}

impl CallStore {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path, config: StoreConfig) -> Result<CallStore, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        CallStore::set_up(conn, path.to_path_buf(), config)
    }

    /// A store in memory, gone when dropped.
    pub fn in_memory(config: StoreConfig) -> Result<CallStore, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        CallStore::set_up(conn, path, config)
    }

    fn set_up(
        conn: Connection,
        path: PathBuf,
        config: StoreConfig,
    ) -> Result<CallStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // In memory the answer is `memory`: WAL is for files.
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(open_err)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(open_err)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if found != 0 && found != SCHEMA_VERSION {
            return Err(StoreError::Version { path, found });
        }
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(open_err)?;
        let newest: Option<i64> = conn
            .query_row("SELECT max(time_ns) FROM calls", [], |r| r.get(0))
            .map_err(open_err)?;
        Ok(CallStore {
            conn,
            path,
            config,
            newest_ns: newest.map_or(0, to_u64),
        })
    }

    fn write_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn read_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a batch of records in one transaction, then applies retention (with the newest
    /// call time as "now"). Returns how many rows retention removed.
    pub fn insert(&mut self, records: &[CallRecord]) -> Result<usize, StoreError> {
        let newest = records
            .iter()
            .map(|r| r.call.request_ns)
            .max()
            .unwrap_or(0)
            .max(self.newest_ns);
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            })?;
        let result = (|| {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO calls ({}) VALUES (NULL{})",
                CALL_COLUMNS,
                ", ?".repeat(25)
            ))?;
            for rec in records {
                let c = &rec.call;
                let (outcome, reason) = outcome_parts(&c.outcome);
                let ip = |e: &Endpoint| e.ip.map(|ip| ip.to_string());
                insert.execute(params![
                    to_i64(c.request_ns),
                    c.protocol.as_str(),
                    c.method,
                    c.path,
                    c.authority,
                    c.status,
                    c.grpc.as_ref().and_then(|g| g.status),
                    c.latency_ns().map(|l| l as f64 / 1e6),
                    to_i64(c.request_bytes),
                    to_i64(c.response_bytes),
                    rec.client.label(),
                    rec.server.label(),
                    ip(&rec.client),
                    rec.client.port,
                    ip(&rec.server),
                    rec.server.port,
                    rec.client.namespace,
                    rec.client.pod,
                    rec.server.namespace,
                    rec.server.pod,
                    rec.server.service,
                    rec.decrypted,
                    outcome,
                    reason,
                    c.is_error(),
                ])?;
            }
            Ok(())
        })();
        result.map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })?;
        let pruned = prune(&tx, &self.config, newest).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })?;
        tx.commit().map_err(self.write_err())?;
        self.newest_ns = newest;
        Ok(pruned)
    }

    /// Stores anomalies in one transaction.
    pub fn insert_anomalies(&mut self, anomalies: &[Anomaly]) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(anomalies.len());
        for a in anomalies {
            let evidence =
                serde_json::to_string(&a.evidence).map_err(|source| StoreError::Evidence {
                    path: self.path.clone(),
                    source,
                })?;
            rows.push((a, evidence));
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            })?;
        let result = (|| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO anomalies (at_ns, kind, client, server, protocol, evidence) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )?;
            for (a, evidence) in &rows {
                insert.execute(params![
                    to_i64(a.at_ns),
                    a.kind.as_str(),
                    a.edge.client,
                    a.edge.server,
                    a.edge.protocol.as_str(),
                    evidence,
                ])?;
            }
            Ok(())
        })();
        result.map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })?;
        tx.commit().map_err(self.write_err())
    }

    /// Applies retention as of `now_ns` (for a store that receives no calls for a while).
    /// Returns how many rows were removed.
    pub fn prune(&mut self, now_ns: u64) -> Result<usize, StoreError> {
        let now = now_ns.max(self.newest_ns);
        prune(&self.conn, &self.config, now).map_err(self.write_err())
    }

    /// How many calls are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM calls", [], |r| r.get::<_, i64>(0))
            .map(to_u64)
            .map_err(self.read_err())
    }

    /// The `n` newest calls, newest first.
    pub fn last(&self, n: usize) -> Result<Vec<StoredCall>, StoreError> {
        self.calls("1", params![to_i64(n as u64)])
    }

    /// The `n` newest calls from `client` to `server` (labels as in [`Endpoint::label`]),
    /// newest first.
    pub fn by_edge(
        &self,
        client: &str,
        server: &str,
        n: usize,
    ) -> Result<Vec<StoredCall>, StoreError> {
        self.calls(
            "client = ?2 AND server = ?3",
            params![to_i64(n as u64), client, server],
        )
    }

    /// The `n` newest calls whose status is in `statuses` (`404..=404`, `500..=599`), newest
    /// first.
    pub fn by_status(
        &self,
        statuses: RangeInclusive<u32>,
        n: usize,
    ) -> Result<Vec<StoredCall>, StoreError> {
        self.calls(
            "status BETWEEN ?2 AND ?3",
            params![to_i64(n as u64), statuses.start(), statuses.end()],
        )
    }

    /// Calls matching `filter` (parameters from `?2`; `?1` is the limit), newest first.
    fn calls(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<StoredCall>, StoreError> {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE {filter} ORDER BY time_ns DESC, id DESC LIMIT ?1"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.read_err())?;
        let rows = stmt
            .query_map(params, |row| {
                Ok((row_to_call(row)?, row.get::<_, String>(2)?))
            })
            .map_err(self.read_err())?;
        let mut out = Vec::new();
        for row in rows {
            let (mut call, protocol) = row.map_err(self.read_err())?;
            call.protocol = protocol_named(&protocol).ok_or_else(|| StoreError::Unknown {
                path: self.path.clone(),
                what: "protocol",
                value: protocol,
            })?;
            out.push(call);
        }
        Ok(out)
    }

    /// The `n` newest anomalies, newest first.
    pub fn anomalies(&self, n: usize) -> Result<Vec<Anomaly>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at_ns, kind, client, server, protocol, evidence FROM anomalies \
                 ORDER BY at_ns DESC, id DESC LIMIT ?1",
            )
            .map_err(self.read_err())?;
        let rows = stmt
            .query_map(params![to_i64(n as u64)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(self.read_err())?;
        let mut out = Vec::new();
        for row in rows {
            let (at_ns, kind, client, server, protocol, evidence) = row.map_err(self.read_err())?;
            let unknown = |what, value: String| StoreError::Unknown {
                path: self.path.clone(),
                what,
                value,
            };
            let kind =
                AnomalyKind::from_name(&kind).ok_or_else(|| unknown("anomaly kind", kind))?;
            let protocol =
                protocol_named(&protocol).ok_or_else(|| unknown("protocol", protocol))?;
            let evidence: Evidence =
                serde_json::from_str(&evidence).map_err(|source| StoreError::Evidence {
                    path: self.path.clone(),
                    source,
                })?;
            out.push(Anomaly {
                kind,
                edge: EdgeKey {
                    client,
                    server,
                    protocol,
                },
                at_ns: to_u64(at_ns),
                evidence,
            });
        }
        Ok(out)
    }
}

/// Removes calls and anomalies beyond the limits, as of `now_ns`. Cheap when nothing is due:
/// the age limit walks the time indexes from their oldest end, the row limit is an id range.
fn prune(conn: &Connection, config: &StoreConfig, now_ns: u64) -> rusqlite::Result<usize> {
    let mut removed = 0;
    if let Some(age) = config.max_age_secs {
        let cutoff = to_i64(now_ns.saturating_sub(age.saturating_mul(NS_PER_SEC)));
        removed += conn.execute("DELETE FROM calls WHERE time_ns < ?1", [cutoff])?;
        removed += conn.execute("DELETE FROM anomalies WHERE at_ns < ?1", [cutoff])?;
    }
    if let Some(rows) = config.max_rows {
        let rows = to_i64(rows);
        for table in ["calls", "anomalies"] {
            let max_id: Option<i64> =
                conn.query_row(&format!("SELECT max(id) FROM {table}"), [], |r| r.get(0))?;
            if let Some(max_id) = max_id {
                removed += conn.execute(
                    &format!("DELETE FROM {table} WHERE id <= ?1"),
                    [max_id.saturating_sub(rows)],
                )?;
            }
        }
    }
    Ok(removed)
}

fn row_to_call(r: &Row<'_>) -> rusqlite::Result<StoredCall> {
    Ok(StoredCall {
        id: r.get(0)?,
        time_ns: to_u64(r.get(1)?),
        // Set by the caller from column 2, which may hold a name this build does not know.
        protocol: Protocol::Http1,
        method: r.get(3)?,
        path: r.get(4)?,
        authority: r.get(5)?,
        status: r.get(6)?,
        grpc_status: r.get(7)?,
        latency_ms: r.get(8)?,
        request_bytes: to_u64(r.get(9)?),
        response_bytes: to_u64(r.get(10)?),
        client: r.get(11)?,
        server: r.get(12)?,
        client_ip: r.get(13)?,
        client_port: r.get(14)?,
        server_ip: r.get(15)?,
        server_port: r.get(16)?,
        client_namespace: r.get(17)?,
        client_pod: r.get(18)?,
        server_namespace: r.get(19)?,
        server_pod: r.get(20)?,
        server_service: r.get(21)?,
        decrypted: r.get(22)?,
        outcome: r.get(23)?,
        outcome_reason: r.get(24)?,
        error: r.get(25)?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::anomaly::{Example, Measure};
    use crate::call::{Call, GrpcCall};

    const SEC: u64 = NS_PER_SEC;
    const T0: u64 = 1_700_000_000 * SEC;

    fn endpoint(name: &str, last: u8, port: u16) -> Endpoint {
        Endpoint {
            ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, last))),
            port,
            namespace: Some("shop".into()),
            pod: Some(format!("{name}-5d8f-abcde")),
            workload: Some(name.into()),
            service: Some(name.into()),
        }
    }

    /// Call `i`: at `T0 + i ms`, one of four edges, status 200 / 404 / 503 by `i`.
    fn record(i: u64) -> CallRecord {
        let servers = ["cart", "catalog", "db", "payments"];
        let server = servers[(i % 4) as usize];
        let status = match i % 10 {
            0 => 503,
            5 => 404,
            _ => 200,
        };
        let at = T0 + i * 1_000_000;
        CallRecord {
            call: Call {
                protocol: if server == "payments" {
                    Protocol::Grpc
                } else {
                    Protocol::Http1
                },
                method: "GET".into(),
                path: format!("/item/{i}"),
                authority: Some(format!("{server}.shop")),
                status: Some(status),
                grpc: (server == "payments").then(|| GrpcCall {
                    service: "pay.Payments".into(),
                    method: "Charge".into(),
                    status: Some(0),
                    request_messages: 1,
                    response_messages: 1,
                }),
                request_ns: at,
                response_ns: Some(at + 2_500_000),
                response_end_ns: Some(at + 3_000_000),
                request_bytes: 10,
                response_bytes: 1000 + i,
                headers: vec![],
                outcome: if i % 100 == 7 {
                    Outcome::Incomplete("capture_gap")
                } else {
                    Outcome::Complete
                },
            },
            client: endpoint("front", 1, 40_000),
            server: endpoint(server, 2 + (i % 4) as u8, 8080),
            decrypted: i.is_multiple_of(2),
        }
    }

    fn fill(store: &mut CallStore, range: std::ops::Range<u64>, batch: usize) {
        let records: Vec<CallRecord> = range.map(record).collect();
        for chunk in records.chunks(batch) {
            if let Err(e) = store.insert(chunk) {
                panic!("insert: {e}");
            }
        }
    }

    fn ids_of(calls: &[StoredCall]) -> Vec<u64> {
        calls.iter().map(|c| (c.time_ns - T0) / 1_000_000).collect()
    }

    #[test]
    fn queries_return_the_right_calls_newest_first() -> Result<(), StoreError> {
        let mut store = CallStore::in_memory(StoreConfig::default())?;
        fill(&mut store, 0..10_000, 1000);
        assert_eq!(store.count()?, 10_000);

        let last = store.last(3)?;
        assert_eq!(ids_of(&last), [9999, 9998, 9997]);
        let c = &last[1];
        assert_eq!(c.client, "shop/front");
        assert_eq!(c.server, "shop/db");
        assert_eq!(c.path, "/item/9998");
        assert_eq!(c.latency_ms, Some(2.5));
        assert_eq!((c.request_bytes, c.response_bytes), (10, 10_998));
        assert_eq!(c.server_ip.as_deref(), Some("10.1.0.4"));
        assert_eq!((c.client_port, c.server_port), (40_000, 8080));
        assert_eq!(c.server_pod.as_deref(), Some("db-5d8f-abcde"));
        assert_eq!(c.server_service.as_deref(), Some("db"));
        assert!(c.decrypted);
        assert_eq!(c.outcome, "complete");

        let payments = store.by_edge("shop/front", "shop/payments", 2)?;
        assert_eq!(ids_of(&payments), [9999, 9995]);
        assert_eq!(payments[0].protocol, Protocol::Grpc);
        assert_eq!(payments[0].grpc_status, Some(0));
        assert!(store.by_edge("shop/payments", "shop/front", 5)?.is_empty());

        let failed = store.by_status(500..=599, 4)?;
        assert_eq!(ids_of(&failed), [9990, 9980, 9970, 9960]);
        assert!(failed.iter().all(|c| c.status == Some(503) && c.error));
        let not_found = store.by_status(404..=404, 10_000)?;
        assert_eq!(not_found.len(), 1000);
        assert_eq!(ids_of(&not_found[..2]), [9995, 9985]);

        let gap = store.by_edge("shop/front", "shop/payments", 10_000)?;
        assert_eq!(gap.len(), 2500);
        let incomplete: Vec<_> = gap.iter().filter(|c| c.outcome == "incomplete").collect();
        assert_eq!(incomplete.len(), 100);
        assert_eq!(incomplete[0].outcome_reason.as_deref(), Some("capture_gap"));
        Ok(())
    }

    #[test]
    fn retention_by_rows_keeps_the_newest() -> Result<(), StoreError> {
        let config = StoreConfig {
            max_rows: Some(1000),
            max_age_secs: None,
        };
        let mut store = CallStore::in_memory(config)?;
        fill(&mut store, 0..2500, 100);
        assert_eq!(store.count()?, 1000);
        let all = store.last(5000)?;
        assert_eq!(all.len(), 1000);
        assert_eq!(ids_of(&all[..1]), [2499]);
        assert_eq!(ids_of(&all[999..]), [1500]);
        Ok(())
    }

    #[test]
    fn retention_by_age_drops_old_calls_and_anomalies() -> Result<(), StoreError> {
        let config = StoreConfig {
            max_rows: None,
            max_age_secs: Some(2),
        };
        let mut store = CallStore::in_memory(config)?;
        store.insert_anomalies(&[anomaly(AnomalyKind::NewEdge, T0 + 500_000_000)])?;
        // Calls 1 ms apart for 5 s: the last 2 s (2001 calls, both ends included) stay.
        fill(&mut store, 0..5000, 250);
        assert_eq!(store.count()?, 2001);
        assert_eq!(ids_of(&store.last(1)?), [4999]);
        let oldest = store.last(5000)?;
        assert_eq!(ids_of(&oldest[oldest.len() - 1..]), [2999]);
        assert!(store.anomalies(10)?.is_empty());
        // With no new calls, pruning by the clock empties it.
        assert_eq!(store.prune(T0 + 60 * SEC)?, 2001);
        assert_eq!(store.count()?, 0);
        Ok(())
    }

    #[test]
    fn a_reopened_file_keeps_its_data() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("calls.db");
        {
            let mut store = CallStore::open(&path, StoreConfig::default())?;
            fill(&mut store, 0..300, 100);
            store.insert_anomalies(&[anomaly(AnomalyKind::ErrorSpike, T0)])?;
            let mode: String = store
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            assert_eq!(mode, "wal");
        }
        let mut store = CallStore::open(&path, StoreConfig::default())?;
        assert_eq!(store.count()?, 300);
        assert_eq!(ids_of(&store.last(1)?), [299]);
        assert_eq!(store.anomalies(5)?.len(), 1);
        fill(&mut store, 300..310, 100);
        assert_eq!(ids_of(&store.last(1)?), [309]);
        drop(store);

        // A file from another schema version is refused, naming the file.
        let conn = Connection::open(&path)?;
        conn.execute_batch("PRAGMA user_version = 99;")?;
        drop(conn);
        match CallStore::open(&path, StoreConfig::default()) {
            Err(e @ StoreError::Version { found: 99, .. }) => {
                assert!(e.to_string().contains("calls.db"), "{e}");
            }
            other => panic!("expected a version error, got {other:?}"),
        }
        Ok(())
    }

    fn anomaly(kind: AnomalyKind, at_ns: u64) -> Anomaly {
        Anomaly {
            kind,
            edge: EdgeKey {
                client: "shop/front".into(),
                server: "shop/cart".into(),
                protocol: Protocol::Http2,
            },
            at_ns,
            evidence: Evidence {
                measure: Measure::LatencyP90Ms,
                observed: 52.25,
                baseline_mean: 2.5,
                baseline_stddev: 0.125,
                threshold: 7.5,
                calls: 48,
                errors: 1,
                known_ports: vec![8080, 9090],
                examples: vec![Example {
                    method: "POST".into(),
                    path: "/checkout".into(),
                    status: Some(200),
                    grpc_status: None,
                    latency_ms: Some(88.5),
                }],
            },
        }
    }

    #[test]
    fn anomalies_round_trip() -> Result<(), StoreError> {
        let mut store = CallStore::in_memory(StoreConfig::default())?;
        let first = anomaly(AnomalyKind::LatencySpike, T0);
        let mut second = anomaly(AnomalyKind::UnexpectedPort, T0 + SEC);
        second.evidence.measure = Measure::Port;
        second.evidence.examples.clear();
        second.edge.protocol = Protocol::Dns;
        store.insert_anomalies(&[first.clone(), second.clone()])?;
        assert_eq!(store.anomalies(10)?, [second.clone(), first]);
        assert_eq!(store.anomalies(1)?, [second]);
        Ok(())
    }
}
