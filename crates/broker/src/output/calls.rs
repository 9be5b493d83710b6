//! The `calls` output: L7 analytics of a policy's packets. TCP is reassembled and HTTP/1.1,
//! HTTP/2, gRPC and DNS are decoded into call records (`podtap_l7`), which go to an embedded
//! SQLite store (queryable with `podtap calls`), optionally to a JSON-lines file for log
//! shippers, into the service map (on `/metrics`) and to the anomaly detector, whose findings
//! are stored and logged. Frames of a pod's decrypted view (the tunnel label's decrypted bit)
//! are decoded apart from the same connection's ciphertext and marked `decrypted` in records.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use podtap_cluster::Inventory;
use podtap_l7::anomaly::{Anomaly, AnomalyConfig, AnomalyDetector};
use podtap_l7::call::{CallRecord, Endpoint, Redaction};
use podtap_l7::reassembly::ReassemblyConfig;
use podtap_l7::servicemap::{ServiceMap, ServiceMapConfig, ServiceMapMetrics};
use podtap_l7::session::{Identities, SessionConfig, Sessions, workload_of};
use podtap_l7::store::{CallStore, StoreConfig};
use serde::{Deserialize, Serialize};

use super::{Labelled, OutputCounters};

/// Settings of a `calls` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsConfig {
    /// SQLite file for call records and anomalies (created if missing). Without it the records
    /// are kept in memory only (still in the service map and `/metrics`).
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Retention of the store.
    #[serde(default)]
    pub retention: StoreConfig,
    /// Also append every record as one JSON object per line to this file (for log shippers).
    #[serde(default)]
    pub json: Option<PathBuf>,
    /// Keep the values of sensitive headers, cookies and query parameters (redacted by
    /// default: `authorization`, `cookie`, `set-cookie`, names containing `token`, `secret`,
    /// `password`, `session`, `key`). For labs only.
    #[serde(default)]
    pub keep_sensitive: bool,
    /// TCP reassembly limits.
    #[serde(default)]
    pub reassembly: ReassemblyConfig,
    /// Service map window and cardinality.
    #[serde(default)]
    pub service_map: ServiceMapConfig,
    /// Anomaly detection.
    #[serde(default)]
    pub anomalies: AnomalyConfig,
}

impl CallsConfig {
    /// Every problem with the settings (the files' directories are created when the output
    /// opens, like the `pcap` output's).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, path) in [("store", &self.store), ("json", &self.json)] {
            if let Some(path) = path
                && (path.as_os_str().is_empty() || path.file_name().is_none())
            {
                p.push(format!("{name}: {} names no file", path.display()));
            }
        }
        p
    }
}

/// How often (capture or receive time) records are flushed to the store.
const FLUSH_NS: u64 = 1_000_000_000;

/// A running `calls` output.
pub struct CallsOutput {
    sessions: Sessions,
    /// None without `store:`: records then go only to the JSON lines, the service map and
    /// the anomaly detector.
    store: Option<CallStore>,
    json: Option<(PathBuf, BufWriter<std::fs::File>)>,
    map: ServiceMap,
    detector: AnomalyDetector,
    batch: Vec<CallRecord>,
    anomalies: Vec<Anomaly>,
    last_flush_ns: u64,
    now_ns: u64,
    counters: OutputCounters,
    anomalies_total: u64,
}

impl std::fmt::Debug for CallsOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallsOutput")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Errors of the `calls` output.
#[derive(Debug, thiserror::Error)]
pub enum CallsError {
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] podtap_l7::store::StoreError),
    /// The directory of the store or the JSON-lines file could not be created.
    #[error("creating directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The JSON-lines file could not be opened or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CallsOutput {
    /// Opens the store and the JSON file.
    pub fn new(cfg: &CallsConfig) -> Result<CallsOutput, CallsError> {
        for path in [&cfg.store, &cfg.json].into_iter().flatten() {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|source| CallsError::Directory {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        let store = match &cfg.store {
            Some(path) => Some(CallStore::open(path, cfg.retention.clone())?),
            None => None,
        };
        let json = match &cfg.json {
            Some(path) => Some((
                path.clone(),
                BufWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| CallsError::Json {
                            path: path.clone(),
                            source,
                        })?,
                ),
            )),
            None => None,
        };
        let redaction = Redaction {
            disabled: cfg.keep_sensitive,
            ..Redaction::default()
        };
        Ok(CallsOutput {
            sessions: Sessions::new(
                SessionConfig {
                    reassembly: cfg.reassembly.clone(),
                    redaction,
                },
                Identities::new(),
            ),
            store,
            json,
            map: ServiceMap::new(cfg.service_map.clone()),
            detector: AnomalyDetector::new(cfg.anomalies.clone()),
            batch: Vec::new(),
            anomalies: Vec::new(),
            last_flush_ns: 0,
            now_ns: 0,
            counters: OutputCounters {
                kind: "calls",
                ..Default::default()
            },
            anomalies_total: 0,
        })
    }

    /// Names pods' addresses from the inventory (namespace, pod, workload).
    pub fn set_inventory(&mut self, inv: &Inventory) {
        let mut ids = Identities::new();
        for p in &inv.pods {
            if let Ok(ip) = p.ip.parse::<IpAddr>() {
                ids.insert(
                    ip,
                    Endpoint {
                        namespace: Some(p.namespace.clone()),
                        pod: Some(p.name.clone()),
                        workload: Some(workload_of(&p.name, &p.labels)),
                        ..Default::default()
                    },
                );
            }
        }
        self.sessions.set_identities(ids);
    }

    /// Decodes one packet.
    pub fn write(&mut self, pkt: Labelled<'_>) -> Result<(), CallsError> {
        let p = pkt.packet;
        self.counters.packets += 1;
        self.counters.bytes += p.data.len() as u64;
        let decrypted = p.source.tap & podtap_wire::vxlan::DECRYPTED != 0;
        self.now_ns = self.now_ns.max(p.timestamp_ns);
        self.sessions.frame(&p.data, p.timestamp_ns, decrypted);
        self.collect();
        Ok(())
    }

    /// Timers: gaps, idle connections, DNS timeouts, anomaly intervals, store flushes.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), CallsError> {
        self.now_ns = self.now_ns.max(now_ns);
        self.sessions.advance(now_ns);
        self.collect();
        self.map.advance(now_ns);
        self.detector.advance(now_ns, &mut self.anomalies);
        if now_ns.saturating_sub(self.last_flush_ns) >= FLUSH_NS {
            self.last_flush_ns = now_ns;
            self.flush()?;
        }
        Ok(())
    }

    /// Ends every connection and writes what is left.
    pub fn finish(&mut self) -> Result<(), CallsError> {
        self.sessions.flush(self.now_ns);
        self.collect();
        self.detector.advance(self.now_ns, &mut self.anomalies);
        self.flush()?;
        if let Some((path, j)) = self.json.as_mut() {
            j.flush().map_err(|source| CallsError::Json {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Records, anomalies and decoding problems counted so far.
    pub fn counters(&self) -> OutputCounters {
        let mut c = self.counters.clone();
        let s = self.sessions.counters();
        c.extra.insert("records", s.records);
        c.extra.insert("anomalies", self.anomalies_total);
        c.extra.insert("undetected_connections", s.undetected);
        c.extra.insert("decrypted_frames", s.decrypted_frames);
        for (name, n) in &s.detected {
            c.extra.insert(name, *n);
        }
        let mut errors: BTreeMap<&'static str, u64> = self.sessions.problems();
        errors.insert("malformed_frames", s.malformed);
        c.errors = errors;
        c
    }

    /// The service map's metrics (a snapshot).
    pub fn service_map_metrics(&self) -> ServiceMapMetrics {
        self.map.metrics()
    }

    /// The service map as JSON.
    pub fn service_map_json(&self) -> serde_json::Value {
        self.map.to_json(self.now_ns)
    }

    fn collect(&mut self) {
        for rec in self.sessions.drain() {
            self.map.observe(&rec);
            self.detector.observe(&rec, &mut self.anomalies);
            self.batch.push(rec);
        }
    }

    fn flush(&mut self) -> Result<(), CallsError> {
        if let Some((path, j)) = self.json.as_mut() {
            for rec in &self.batch {
                serde_json::to_writer(&mut *j, rec)
                    .map_err(std::io::Error::from)
                    .and_then(|()| j.write_all(b"\n"))
                    .map_err(|source| CallsError::Json {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        if !self.batch.is_empty() {
            if let Some(store) = &mut self.store {
                store.insert(&self.batch)?;
            }
            self.batch.clear();
        }
        if !self.anomalies.is_empty() {
            for a in &self.anomalies {
                tracing::warn!(
                    kind = ?a.kind,
                    client = %a.edge.client,
                    server = %a.edge.server,
                    "anomaly: {}",
                    serde_json::to_string(&a.evidence).unwrap_or_default()
                );
            }
            self.anomalies_total += self.anomalies.len() as u64;
            if let Some(store) = &mut self.store {
                store.insert_anomalies(&self.anomalies)?;
            }
            self.anomalies.clear();
        }
        Ok(())
    }
}
