//! What every decoder produces, and the contract between the reassembler and the decoders.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// Which end of a connection bytes came from. The client is the end that opened the connection
/// (the SYN's sender), or the session's best guess when the capture started mid-connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Sent by the client (requests).
    Client,
    /// Sent by the server (responses).
    Server,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// The application protocol of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 (not gRPC).
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// DNS over UDP or TCP.
    Dns,
}

impl Protocol {
    /// The name used in records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Dns => "dns",
        }
    }
}

/// How completely a call was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "reason")]
pub enum Outcome {
    /// Request and response both seen whole.
    Complete,
    /// The request was seen, no response before the connection ended or the call timed out.
    NoResponse,
    /// Part of the call was lost (capture gap, mid-stream start, missing header context); the
    /// fields that are known are right, the others are empty. The reason is a snake_case word.
    Incomplete(&'static str),
}

/// gRPC details of a call (over HTTP/2, `content-type: application/grpc...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GrpcCall {
    /// `package.Service` from the path `/package.Service/Method`.
    pub service: String,
    /// `Method` from the path.
    pub method: String,
    /// `grpc-status` from the trailers (or headers, for a trailers-only response).
    pub status: Option<u32>,
    /// Length-prefixed messages the client sent.
    pub request_messages: u64,
    /// Length-prefixed messages the server sent.
    pub response_messages: u64,
}

/// One request and its response as a decoder saw them, before endpoints are attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Call {
    /// The protocol.
    pub protocol: Protocol,
    /// HTTP method (`GET`), gRPC's HTTP method (`POST`), DNS query type (`A`, `AAAA`, ...).
    pub method: String,
    /// HTTP path with the query string (sensitive query values redacted), gRPC
    /// `/package.Service/Method`, DNS query name.
    pub path: String,
    /// HTTP `Host` / `:authority`, if sent.
    pub authority: Option<String>,
    /// HTTP status code, or the DNS response code (0 = NOERROR, 3 = NXDOMAIN, ...).
    pub status: Option<u32>,
    /// gRPC details, for gRPC calls.
    pub grpc: Option<GrpcCall>,
    /// When the request's first byte was seen (Unix nanoseconds).
    pub request_ns: u64,
    /// When the response's first byte was seen.
    pub response_ns: Option<u64>,
    /// When the response's last byte was seen.
    pub response_end_ns: Option<u64>,
    /// Request body bytes (after transfer/content decoding of framing: chunk sizes and HTTP/2
    /// frame headers are not counted; gRPC counts message bytes with their 5-byte prefixes).
    pub request_bytes: u64,
    /// Response body bytes, counted the same way.
    pub response_bytes: u64,
    /// Request headers kept in the record (name lowercased), values of sensitive ones
    /// replaced by [`REDACTED`].
    pub headers: Vec<(String, String)>,
    /// How completely the call was seen.
    pub outcome: Outcome,
}

impl Call {
    /// Latency from the request's first byte to the response's first byte, if both were seen.
    pub fn latency_ns(&self) -> Option<u64> {
        self.response_ns.map(|r| r.saturating_sub(self.request_ns))
    }

    /// Whether the call failed by its protocol's own rules: HTTP 5xx, gRPC status other than
    /// 0, DNS SERVFAIL (2) or REFUSED (5), or no response.
    pub fn is_error(&self) -> bool {
        if self.outcome == Outcome::NoResponse {
            return true;
        }
        match self.protocol {
            Protocol::Grpc => self
                .grpc
                .as_ref()
                .and_then(|g| g.status)
                .is_some_and(|s| s != 0),
            Protocol::Http1 | Protocol::Http2 => self.status.is_some_and(|s| s >= 500),
            Protocol::Dns => matches!(self.status, Some(2 | 5)),
        }
    }
}

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Which header names and query parameters count as sensitive. By default: credentials and
/// session state (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`,
/// `x-api-key`, `x-auth-token`) and any name containing `token`, `secret`, `password`,
/// `passwd`, `session` or `key`.
#[derive(Debug, Clone)]
pub struct Redaction {
    /// Exact names (lowercase).
    pub names: Vec<String>,
    /// Substrings of names (lowercase).
    pub substrings: Vec<String>,
    /// Keep sensitive values anyway (off by default; for a lab, never for production).
    pub disabled: bool,
}

impl Default for Redaction {
    fn default() -> Self {
        Redaction {
            names: [
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
                "x-api-key",
                "x-auth-token",
            ]
            .map(String::from)
            .to_vec(),
            substrings: ["token", "secret", "password", "passwd", "session", "key"]
                .map(String::from)
                .to_vec(),
            disabled: false,
        }
    }
}

impl Redaction {
    /// Whether a header or query parameter name is sensitive (case-insensitive).
    pub fn is_sensitive(&self, name: &str) -> bool {
        if self.disabled {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        self.names.contains(&lower) || self.substrings.iter().any(|s| lower.contains(s))
    }

    /// `value`, or [`REDACTED`] when `name` is sensitive.
    pub fn header_value(&self, name: &str, value: &str) -> String {
        if self.is_sensitive(name) {
            REDACTED.to_string()
        } else {
            value.to_string()
        }
    }

    /// The path with the values of sensitive query parameters replaced
    /// (`/login?user=a&password=x` -> `/login?user=a&password=[redacted]`).
    pub fn path(&self, path: &str) -> String {
        let Some((base, query)) = path.split_once('?') else {
            return path.to_string();
        };
        let mut out = String::with_capacity(path.len());
        out.push_str(base);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if self.is_sensitive(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        out
    }
}

/// Where a decoder's calls and problems go.
#[derive(Debug, Default)]
pub struct Emit {
    /// Calls finished (or given up on) since the last drain.
    pub calls: Vec<Call>,
    /// Problems counted by reason (snake_case): malformed input, a gap that cost a call, ...
    /// Never a panic: a decoder that cannot go on counts why and skips to what it can read.
    pub problems: BTreeMap<&'static str, u64>,
}

impl Emit {
    /// Counts one problem.
    pub fn problem(&mut self, reason: &'static str) {
        *self.problems.entry(reason).or_default() += 1;
    }
}

/// A decoder for one connection: it gets each side's bytes in order (from the reassembler),
/// is told about bytes that were lost, and emits calls.
pub trait StreamDecoder: Send {
    /// The next in-order bytes from `side`, first seen at `ts_ns`.
    fn data(&mut self, side: Side, bytes: &[u8], ts_ns: u64, emit: &mut Emit);
    /// `len` bytes from `side` were lost (the reassembler gave up waiting for them). The
    /// decoder resynchronises if it can and marks the calls that lost bytes
    /// [`Outcome::Incomplete`].
    fn gap(&mut self, side: Side, len: u64, ts_ns: u64, emit: &mut Emit);
    /// The connection ended (FIN/RST seen on both sides, evicted or idle): emit every call
    /// still open (as `NoResponse` or `Incomplete`).
    fn close(&mut self, ts_ns: u64, emit: &mut Emit);
}

/// One end of a call, with what the inventory knows about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    /// Address (IPv4-mapped IPv6 addresses are shown as IPv4).
    pub ip: Option<IpAddr>,
    /// Port.
    pub port: u16,
    /// `namespace`, when the address belongs to a known pod or service.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Workload: the pod's `app.kubernetes.io/name` or `app` label, else its name without the
    /// replica suffix.
    pub workload: Option<String>,
    /// Service whose address (or whose selected pods) this is.
    pub service: Option<String>,
}

impl Endpoint {
    /// `namespace/workload`, or the address when the endpoint is not a known pod.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.workload) {
            (Some(ns), Some(w)) => format!("{ns}/{w}"),
            _ => self
                .ip
                .map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
        }
    }
}

/// A call with both ends: what is stored, mapped and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    /// The call.
    #[serde(flatten)]
    pub call: Call,
    /// The end that sent the request.
    pub client: Endpoint,
    /// The end that answered.
    pub server: Endpoint,
    /// Whether the bytes came from the decrypted (TLS plaintext) view rather than the wire.
    pub decrypted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_credentials_and_query_values() {
        let r = Redaction::default();
        assert_eq!(r.header_value("Authorization", "Bearer x"), REDACTED);
        assert_eq!(r.header_value("Cookie", "a=b"), REDACTED);
        assert_eq!(r.header_value("X-Session-Id", "1"), REDACTED);
        assert_eq!(r.header_value("User-Agent", "curl/8"), "curl/8");
        assert_eq!(
            r.path("/login?user=a&password=hunter2&next=/"),
            "/login?user=a&password=[redacted]&next=/"
        );
        assert_eq!(r.path("/plain"), "/plain");
        let off = Redaction {
            disabled: true,
            ..Redaction::default()
        };
        assert_eq!(off.header_value("authorization", "x"), "x");
    }

    #[test]
    fn errors_follow_each_protocol() {
        let mut c = Call {
            protocol: Protocol::Http1,
            method: "GET".into(),
            path: "/".into(),
            authority: None,
            status: Some(503),
            grpc: None,
            request_ns: 10,
            response_ns: Some(25),
            response_end_ns: Some(30),
            request_bytes: 0,
            response_bytes: 0,
            headers: vec![],
            outcome: Outcome::Complete,
        };
        assert!(c.is_error());
        assert_eq!(c.latency_ns(), Some(15));
        c.status = Some(404);
        assert!(!c.is_error());
        c.protocol = Protocol::Grpc;
        c.status = Some(200);
        c.grpc = Some(GrpcCall {
            status: Some(14),
            ..Default::default()
        });
        assert!(c.is_error());
        c.outcome = Outcome::NoResponse;
        c.protocol = Protocol::Dns;
        assert!(c.is_error());
    }
}
