//! Real TLS and L7 applications for end-to-end tests, run inside a network namespace: nginx
//! (HTTP/1.1 and HTTP/2 over TLS, optionally plain HTTP), a Python `http.server` over TLS with
//! a fault switch, nghttpd (HTTP/2, also cleartext h2c), a gRPC echo service, dnsmasq (DNS over
//! UDP and TCP), and the clients and load tools that drive them (a Python HTTPS client, a Python
//! gRPC client, a paced background client with a timestamp per answer, h2load, wrk, dig), and
//! an HTTPS server linked statically against OpenSSL ([`StaticTlsServer`]). Every client reports
//! its own ground truth: what it sent and which status it got back. [`LossyLink`] stands in for netem (loss, delay, reordering), which
//! the test machines' kernels lack.
//!
//! Servers listen on all IPv4 addresses of their namespace (so both `127.0.0.1` and a lab pod's
//! IP reach them), keep every file under the directory they are given, return only once their
//! port accepts connections, and are killed and reaped on drop. [`Nginx::pid`] and friends name
//! the one process that loads libssl and serves, for uprobe tests.
//!
//! Everything runs through `ip netns exec NETNS PROGRAM ...`, which execs the program, so a
//! child's pid is the program's own. The Debian packages come from `scripts/install-deps.sh`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};

mod static_openssl;
pub use static_openssl::StaticTlsServer;

/// The server name in [`TlsCert`]s (subject CN and DNS subjectAltName): what clients that check
/// names (gRPC) must expect.
pub const TLS_SERVER_NAME: &str = "podtap-lab";

/// The gRPC service [`GrpcServer`] serves.
pub const GRPC_SERVICE: &str = "podtap.lab.Echo";

/// Body of nginx's `/` (and every path without its own location).
pub const NGINX_SMALL_BODY: &str = "podtap lab: hello\n";

/// Size of the bodies nginx serves at `/big` and nghttpd at `/big.bin`.
pub const BIG_BODY_LEN: usize = 64 * 1024;

/// The Python that has `ssl`, `http.server` and Debian's `python3-grpcio`.
const PYTHON: &str = "/usr/bin/python3";

/// How long a server may take until its port accepts connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one client or load-tool run may take beyond its own planned duration.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A self-signed RSA key and certificate for [`TLS_SERVER_NAME`] (and IP 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCert {
    /// PEM private key, unencrypted.
    pub key: PathBuf,
    /// PEM certificate; also the root certificate clients that verify must trust.
    pub cert: PathBuf,
}

impl TlsCert {
    /// Makes `dir/tls.key` and `dir/tls.crt` with the openssl CLI (RSA 2048, valid 2 days).
    pub fn self_signed(dir: &Path) -> Result<TlsCert> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tls = TlsCert {
            key: dir.join("tls.key"),
            cert: dir.join("tls.crt"),
        };
        let subject = format!("/CN={TLS_SERVER_NAME}");
        let san = format!("subjectAltName=DNS:{TLS_SERVER_NAME},IP:127.0.0.1");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(&subject)
            .args(["-addext", &san, "-days", "2", "-keyout"])
            .arg(&tls.key)
            .arg("-out")
            .arg(&tls.cert)
            .output()
            .context("running openssl (install it with scripts/install-deps.sh)")?;
        ensure!(
            out.status.success(),
            "openssl req -x509 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(tls)
    }
}

/// A server process we started in a netns: killed and reaped on drop; its stdout and stderr
/// go to a log file under its directory.
#[derive(Debug)]
struct ServerProcess {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `program args...` in `netns` with output to `log`, then waits until
    /// `127.0.0.1:port` accepts inside the netns. Fails with the log when the process exits or
    /// the port stays closed.
    fn start(
        what: &'static str,
        netns: &str,
        program: &str,
        args: &[String],
        log: PathBuf,
        port: u16,
    ) -> Result<ServerProcess> {
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating {what} log {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {what} log file"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {what} ({program}) in netns {netns}"))?;
        let mut server = ServerProcess { what, child, log };
        server.wait_for_port(netns, port)?;
        Ok(server)
    }

    fn wait_for_port(&mut self, netns: &str, port: u16) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling the server")? {
                bail!(
                    "{} exited ({status}) before listening on port {port} in netns {netns}; \
                     its log {}:\n{}",
                    self.what,
                    self.log.display(),
                    self.log_text()
                );
            }
            // Another process may hold the port: the listener must be this one's.
            let connected = listens_on(self.pid(), port)
                && podtap_lab::in_netns(netns, move || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
                .with_context(|| format!("entering netns {netns}"))?;
            if connected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept on {addr} in netns {netns} within {:?}; its log {}:\n{}",
                    self.what,
                    START_TIMEOUT,
                    self.log.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // The pid is ours: `ip netns exec` exec'd the server in the child we spawned.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (IPv4 or IPv6, any address):
/// the inodes of listeners in its netns (`/proc/PID/net/tcp*`) against its open fds.
fn listens_on(pid: u32, port: u16) -> bool {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// Writes `text` to `path`, with the path in the error.
fn write_file(path: &Path, text: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Creates `dir` and returns it as an absolute path (servers resolve paths from elsewhere).
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// The deterministic 64 KiB body of `/big`: lines of `podtap-big-NNNNN` padding.
pub fn big_body() -> Vec<u8> {
    let mut s = String::with_capacity(BIG_BODY_LEN + 32);
    let mut i = 0;
    while s.len() < BIG_BODY_LEN {
        let _ = writeln!(s, "podtap-big-{i:05}-abcdefghijklmnopqrstuvwxyz");
        i += 1;
    }
    let mut bytes = s.into_bytes();
    bytes.truncate(BIG_BODY_LEN);
    bytes
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

/// nginx in the foreground as ONE process (`daemon off; master_process off;`) that loads libssl
/// and serves: HTTPS with HTTP/1.1 keep-alive and HTTP/2 on one listener (ALPN `h2`,
/// `http/1.1`), optionally plain HTTP/1.1 on a second port. Locations on both: `/` (and any
/// other path) 200 [`NGINX_SMALL_BODY`], `/big` 200 with [`big_body`], `/status/500` 500,
/// `/status/404` 404 (both with a short body, so nginx keeps the connection alive, as it would
/// not for its built-in 500 page). Config, logs, pid and temp files live under its directory.
#[derive(Debug)]
pub struct Nginx {
    process: ServerProcess,
    port: u16,
    http_port: Option<u16>,
}

impl Nginx {
    /// Starts nginx in `netns` with HTTPS on `port`, files under `dir`.
    pub fn start(netns: &str, dir: &Path, cert: &TlsCert, port: u16) -> Result<Nginx> {
        Nginx::start_with_http(netns, dir, cert, port, None)
    }

    /// Starts nginx in `netns` with HTTPS on `port` and, when given, plain HTTP/1.1 on
    /// `http_port` (same locations), files under `dir`.
    pub fn start_with_http(
        netns: &str,
        dir: &Path,
        cert: &TlsCert,
        port: u16,
        http_port: Option<u16>,
    ) -> Result<Nginx> {
        let dir = prepare_dir(dir)?;
        let www = dir.join("www");
        std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
        write_file(&www.join("big.bin"), big_body())?;
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let p = dir.join("tmp").join(t);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let conf = nginx_config(&dir, cert, port, http_port)?;
        let conf_path = dir.join("nginx.conf");
        write_file(&conf_path, conf)?;
        let error_log = dir.join("error.log");
        let args = vec![
            "-p".to_string(),
            format!("{}/", path_str(&dir)?),
            "-c".to_string(),
            path_str(&conf_path)?.to_string(),
            "-e".to_string(),
            path_str(&error_log)?.to_string(),
        ];
        let process =
            ServerProcess::start("nginx", netns, "nginx", &args, dir.join("nginx.log"), port)
                .map_err(|e| e.context(nginx_error_log(&error_log)))?;
        let mut nginx = Nginx {
            process,
            port,
            http_port,
        };
        if let Some(p) = http_port {
            nginx
                .process
                .wait_for_port(netns, p)
                .map_err(|e| e.context(nginx_error_log(&error_log)))?;
        }
        Ok(nginx)
    }

    /// The nginx process (the only one: it loads libssl and serves).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The HTTPS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The plain-HTTP port, when started with one.
    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }
}

fn nginx_error_log(path: &Path) -> String {
    format!(
        "nginx error log {}:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    )
}

/// nginx.conf for [`Nginx`].
fn nginx_config(dir: &Path, cert: &TlsCert, port: u16, http_port: Option<u16>) -> Result<String> {
    let d = path_str(dir)?;
    let cert_path = path_str(&cert.cert)?;
    let key_path = path_str(&cert.key)?;
    let body = NGINX_SMALL_BODY.escape_default();
    let locations = format!(
        r#"
        root {d}/www;
        location = /big {{ try_files /big.bin =404; }}
        location = /status/500 {{ return 500 "podtap lab: status 500\n"; }}
        location = /status/404 {{ return 404 "podtap lab: status 404\n"; }}
        location / {{ return 200 "{body}"; }}
"#
    );
    let mut conf = format!(
        r#"# Written by podtap-testkit: one foreground process, every file under {d}.
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    server {{
        listen 0.0.0.0:{port} ssl http2;
        ssl_certificate {cert_path};
        ssl_certificate_key {key_path};
        ssl_protocols TLSv1.2 TLSv1.3;
{locations}    }}
"#
    );
    if let Some(http_port) = http_port {
        let _ = write!(
            conf,
            r#"    server {{
        listen 0.0.0.0:{http_port};
{locations}    }}
"#
        );
    }
    conf.push_str("}\n");
    Ok(conf)
}

/// Python's `ssl` + `http.server` HTTPS server (`ThreadingHTTPServer`, HTTP/1.1 keep-alive with
/// Content-Length). `GET`/`POST /api/<anything>` answers 200 with a small JSON body, other paths
/// 404. The fault switch: `POST /fault/error` makes later `/api/*` requests answer 500,
/// `POST /fault/slow?ms=N` makes them sleep N ms first, `POST /fault/off` clears both.
#[derive(Debug)]
pub struct PyTlsServer {
    process: ServerProcess,
    netns: String,
    port: u16,
}

const PY_TLS_SERVER: &str = r#"
import json, ssl, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CTX.load_cert_chain(cert, key)
CTX.set_alpn_protocols(["http/1.1"])
LOCK = threading.Lock()
FAULT = {"error": False, "slow_ms": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def api(self, path):
        with LOCK:
            error, slow_ms = FAULT["error"], FAULT["slow_ms"]
        if slow_ms:
            time.sleep(slow_ms / 1000.0)
        if error:
            self.reply(500, {"error": "injected fault", "path": path})
        else:
            self.reply(200, {"ok": True, "path": path})

    def do_GET(self):
        path = urlsplit(self.path).path
        if path.startswith("/api/"):
            self.api(path)
        else:
            self.reply(404, {"error": "not found", "path": path})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        if url.path.startswith("/api/"):
            self.api(url.path)
            return
        with LOCK:
            if url.path == "/fault/error":
                FAULT["error"] = True
            elif url.path == "/fault/slow":
                try:
                    FAULT["slow_ms"] = int(parse_qs(url.query)["ms"][0])
                except (KeyError, ValueError):
                    self.reply(400, {"error": "want /fault/slow?ms=N"})
                    return
            elif url.path == "/fault/off":
                FAULT["error"], FAULT["slow_ms"] = False, 0
            else:
                self.reply(404, {"error": "not found", "path": url.path})
                return
            state = dict(FAULT)
        self.reply(200, state)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    # The TLS handshake runs in the connection's thread, never in the accept loop.
    def finish_request(self, request, client_address):
        try:
            tls = CTX.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


server = Server(("0.0.0.0", port), Handler)
print(f"podtap py tls server on port {port}", flush=True)
server.serve_forever()
"#;

/// Starts a Python TLS server script (`NAME.py` with `script`, log `NAME.log`, both under
/// `dir`) in `netns`, given its port, certificate and key as arguments.
fn python_tls_server(
    what: &'static str,
    name: &str,
    script: &str,
    netns: &str,
    dir: &Path,
    cert: &TlsCert,
    port: u16,
) -> Result<ServerProcess> {
    let dir = prepare_dir(dir)?;
    let path = dir.join(format!("{name}.py"));
    write_file(&path, script)?;
    let args = vec![
        path_str(&path)?.to_string(),
        port.to_string(),
        path_str(&cert.cert)?.to_string(),
        path_str(&cert.key)?.to_string(),
    ];
    ServerProcess::start(
        what,
        netns,
        PYTHON,
        &args,
        dir.join(format!("{name}.log")),
        port,
    )
}

impl PyTlsServer {
    /// Starts the server in `netns` on `port`; its script and log live under `dir`.
    pub fn start(netns: &str, dir: &Path, cert: &TlsCert, port: u16) -> Result<PyTlsServer> {
        let process = python_tls_server(
            "python TLS server",
            "py_tls_server",
            PY_TLS_SERVER,
            netns,
            dir,
            cert,
            port,
        )?;
        Ok(PyTlsServer {
            process,
            netns: netns.to_string(),
            port,
        })
    }

    /// The Python process (it loads libssl through the `_ssl` module and serves).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The HTTPS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT`, the base URL from inside its netns.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Flips the fault switch (one `POST /fault/...` from inside the netns) and checks it took.
    pub fn set_fault(&self, fault: Fault) -> Result<()> {
        let path = match fault {
            Fault::Off => "/fault/off".to_string(),
            Fault::Error => "/fault/error".to_string(),
            Fault::Slow(d) => format!("/fault/slow?ms={}", d.as_millis()),
        };
        let plan = HttpPlan::new(&[("POST", &path, 1)]);
        let report = py_tls_client(&self.netns, &self.base_url(), &plan)?;
        ensure!(
            report.count("POST", &path, 200) == 1,
            "setting fault {fault:?} failed: {report:?}"
        );
        Ok(())
    }
}

/// A state of [`PyTlsServer`]'s fault switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Normal answers (clears error and delay).
    Off,
    /// `/api/*` answers 500.
    Error,
    /// `/api/*` sleeps this long before answering.
    Slow(Duration),
}

/// The requests a client makes: `(method, path, count)` in order, over keep-alive connections
/// of at most `per_connection` requests each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpPlan {
    /// `(method, path, count)`, run in order.
    pub requests: Vec<(String, String, u32)>,
    /// Requests per connection before the client opens a new one (at least 1).
    pub per_connection: u32,
}

impl HttpPlan {
    /// A plan of `(method, path, count)`, 10 requests per connection.
    pub fn new(requests: &[(&str, &str, u32)]) -> HttpPlan {
        HttpPlan {
            requests: requests
                .iter()
                .map(|&(m, p, n)| (m.to_string(), p.to_string(), n))
                .collect(),
            per_connection: 10,
        }
    }

    /// The same plan with `n` requests per connection.
    pub fn per_connection(mut self, n: u32) -> HttpPlan {
        self.per_connection = n.max(1);
        self
    }

    /// Requests in the plan.
    pub fn total(&self) -> u64 {
        self.requests.iter().map(|r| u64::from(r.2)).sum()
    }
}

/// What a client did, by its own account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientReport {
    /// Answered requests per key. HTTP: `(method, path, HTTP status)`. gRPC: `(method name,
    /// full path "/podtap.lab.Echo/Say", gRPC status code number)`.
    pub counts: BTreeMap<(String, String, u16), u64>,
    /// Connections (HTTP) or channels (gRPC) opened.
    pub connections: u64,
    /// Requests that got no answer (or a wrong echo), each with what went wrong.
    pub errors: Vec<String>,
}

impl ClientReport {
    /// Answered requests of one key.
    pub fn count(&self, method: &str, path: &str, status: u16) -> u64 {
        self.counts
            .get(&(method.to_string(), path.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// All answered requests.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// The JSON the Python clients print.
#[derive(Deserialize)]
struct RawReport {
    counts: Vec<RawCount>,
    connections: u64,
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct RawCount {
    method: String,
    path: String,
    status: u16,
    count: u64,
}

impl From<RawReport> for ClientReport {
    fn from(raw: RawReport) -> ClientReport {
        let mut counts = BTreeMap::new();
        for c in raw.counts {
            *counts.entry((c.method, c.path, c.status)).or_insert(0) += c.count;
        }
        ClientReport {
            counts,
            connections: raw.connections,
            errors: raw.errors,
        }
    }
}

const PY_HTTP_CLIENT: &str = r#"
import http.client, json, ssl, sys
from urllib.parse import urlsplit

plan = json.loads(sys.argv[1])
url = urlsplit(plan["base_url"])
prefix = url.path.rstrip("/")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])


def connect():
    if url.scheme == "https":
        c = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=20)
    else:
        c = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=20)
    c.connect()
    return c


per = max(1, int(plan["per_connection"]))
counts, errors, connections = {}, [], 0
conn, used = None, 0
for method, path, n in plan["requests"]:
    for i in range(n):
        try:
            if conn is None or used >= per:
                if conn is not None:
                    conn.close()
                conn, used = connect(), 0
                connections += 1
            body = None
            if method in ("POST", "PUT", "PATCH"):
                body = json.dumps({"podtap": "lab", "i": i}).encode()
            conn.request(method, prefix + path, body=body,
                         headers={"User-Agent": "podtap-lab-client"})
            r = conn.getresponse()
            r.read()
            used += 1
            key = (method, path, r.status)
            counts[key] = counts.get(key, 0) + 1
            if r.will_close:
                conn.close()
                conn = None
        except Exception as e:
            errors.append(f"{method} {path}: {e!r}")
            if conn is not None:
                conn.close()
            conn = None
if conn is not None:
    conn.close()
print(json.dumps({
    "counts": [{"method": m, "path": p, "status": s, "count": c}
               for (m, p, s), c in sorted(counts.items())],
    "connections": connections,
    "errors": errors,
}))
"#;

/// Runs Python's `http.client` in `netns` against `base_url` (`https://...`, certificate check
/// off; `http://...` also works, for plain listeners): the requests of `plan` over keep-alive
/// connections. Every request is in the report, answered or as an error.
pub fn py_tls_client(netns: &str, base_url: &str, plan: &HttpPlan) -> Result<ClientReport> {
    #[derive(Serialize)]
    struct Args<'a> {
        base_url: &'a str,
        #[serde(flatten)]
        plan: &'a HttpPlan,
    }
    let args = serde_json::to_string(&Args { base_url, plan }).context("encoding the plan")?;
    let out = run_in_netns(
        netns,
        PYTHON,
        &["-c".into(), PY_HTTP_CLIENT.into(), args],
        CLIENT_TIMEOUT,
    )?;
    let raw: RawReport = out.json().context("python HTTP client report")?;
    Ok(raw.into())
}

/// nghttpd (Debian `nghttp2-server`): HTTP/2 over TLS (ALPN `h2` only), one process, serving a
/// docroot under its directory with `/index.html` (also `/`), `/small.txt` and `/big.bin`
/// ([`big_body`]); other paths 404.
#[derive(Debug)]
pub struct Nghttpd {
    process: ServerProcess,
    port: u16,
}

impl Nghttpd {
    /// Starts nghttpd in `netns` on `port`, docroot and log under `dir`.
    pub fn start(netns: &str, dir: &Path, cert: &TlsCert, port: u16) -> Result<Nghttpd> {
        Nghttpd::start_with(netns, dir, Some(cert), port)
    }

    /// Starts nghttpd in `netns` on `port` without TLS (`--no-tls`): HTTP/2 cleartext with
    /// prior knowledge (h2c, what `h2load http://...` speaks), the same docroot as
    /// [`Nghttpd::start`], files under `dir`.
    pub fn start_cleartext(netns: &str, dir: &Path, port: u16) -> Result<Nghttpd> {
        Nghttpd::start_with(netns, dir, None, port)
    }

    fn start_with(netns: &str, dir: &Path, cert: Option<&TlsCert>, port: u16) -> Result<Nghttpd> {
        let dir = prepare_dir(dir)?;
        let docroot = dir.join("htdocs");
        std::fs::create_dir_all(&docroot)
            .with_context(|| format!("creating {}", docroot.display()))?;
        write_file(
            &docroot.join("index.html"),
            "<html><body>podtap lab nghttpd</body></html>\n",
        )?;
        write_file(&docroot.join("small.txt"), "podtap lab: small\n")?;
        write_file(&docroot.join("big.bin"), big_body())?;
        let mut args = vec![
            "--address=0.0.0.0".to_string(),
            format!("--htdocs={}", path_str(&docroot)?),
            port.to_string(),
        ];
        match cert {
            Some(cert) => {
                args.push(path_str(&cert.key)?.to_string());
                args.push(path_str(&cert.cert)?.to_string());
            }
            None => args.insert(0, "--no-tls".to_string()),
        }
        let name = if cert.is_some() {
            "nghttpd"
        } else {
            "nghttpd (h2c)"
        };
        let process =
            ServerProcess::start(name, netns, "nghttpd", &args, dir.join("nghttpd.log"), port)?;
        Ok(Nghttpd { process, port })
    }

    /// The nghttpd process (it loads libssl and serves).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The HTTPS (h2) port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// What h2load reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2loadReport {
    /// `requests: N total`.
    pub total: u64,
    /// `N started`.
    pub started: u64,
    /// `N done`.
    pub done: u64,
    /// `N succeeded`.
    pub succeeded: u64,
    /// `N failed`.
    pub failed: u64,
    /// `N errored`.
    pub errored: u64,
    /// `N timeout`.
    pub timeout: u64,
    /// `status codes: N 2xx`.
    pub status_2xx: u64,
    /// `N 3xx`.
    pub status_3xx: u64,
    /// `N 4xx`.
    pub status_4xx: u64,
    /// `N 5xx`.
    pub status_5xx: u64,
    /// `Application protocol: ...` (`h2`), empty when h2load printed none.
    pub protocol: String,
}

/// Runs `h2load -n N -c C URL` in `netns` (Debian `nghttp2-client`; HTTP/2 over TLS for
/// `https://`, certificate not checked) and parses its summary.
pub fn h2load(netns: &str, url: &str, requests: u32, clients: u32) -> Result<H2loadReport> {
    let args = [
        "-n".to_string(),
        requests.to_string(),
        "-c".to_string(),
        clients.to_string(),
        url.to_string(),
    ];
    let out = run_in_netns(netns, "h2load", &args, CLIENT_TIMEOUT)?;
    parse_h2load(&out.stdout).with_context(|| format!("h2load output:\n{}", out.describe()))
}

/// Parses h2load's summary lines.
pub fn parse_h2load(text: &str) -> Result<H2loadReport> {
    let mut report = H2loadReport::default();
    let mut saw_requests = false;
    let mut saw_status = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("requests:") {
            let n = counted(rest);
            report.total = n.get("total").copied().context("requests: no total")?;
            report.started = n.get("started").copied().unwrap_or(0);
            report.done = n.get("done").copied().unwrap_or(0);
            report.succeeded = n.get("succeeded").copied().unwrap_or(0);
            report.failed = n.get("failed").copied().unwrap_or(0);
            report.errored = n.get("errored").copied().unwrap_or(0);
            report.timeout = n.get("timeout").copied().unwrap_or(0);
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            let n = counted(rest);
            report.status_2xx = n.get("2xx").copied().unwrap_or(0);
            report.status_3xx = n.get("3xx").copied().unwrap_or(0);
            report.status_4xx = n.get("4xx").copied().unwrap_or(0);
            report.status_5xx = n.get("5xx").copied().unwrap_or(0);
            saw_status = true;
        } else if let Some(rest) = line.strip_prefix("Application protocol:") {
            report.protocol = rest.trim().to_string();
        }
    }
    ensure!(
        saw_requests && saw_status,
        "no `requests:`/`status codes:` lines in h2load output"
    );
    Ok(report)
}

/// `N word, N word, ...` as word -> N.
fn counted(list: &str) -> BTreeMap<&str, u64> {
    list.split(',')
        .filter_map(|item| {
            let mut parts = item.split_whitespace();
            let n = parts.next()?.parse().ok()?;
            Some((parts.next()?, n))
        })
        .collect()
}

/// A gRPC server (Debian `python3-grpcio`, TLS with `grpc.ssl_server_credentials`) serving
/// [`GRPC_SERVICE`] without generated code: `Say` echoes its request bytes (OK), `Fail` aborts
/// with NOT_FOUND (5).
#[derive(Debug)]
pub struct GrpcServer {
    process: ServerProcess,
    port: u16,
}

const PY_GRPC_SERVER: &str = r#"
import sys
from concurrent import futures
import grpc

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def identity(b):
    return b


def say(request, context):
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "podtap lab: Fail always fails")


handler = grpc.method_handlers_generic_handler("podtap.lab.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(
        say, request_deserializer=identity, response_serializer=identity),
    "Fail": grpc.unary_unary_rpc_method_handler(
        fail, request_deserializer=identity, response_serializer=identity),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler],
                     options=[("grpc.so_reuseport", 0)])
with open(key, "rb") as k, open(cert, "rb") as c:
    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
# Raises (with the bind error in the log) when the port is taken.
server.add_secure_port(f"0.0.0.0:{port}", creds)
server.start()
print(f"podtap grpc server on port {port}", flush=True)
server.wait_for_termination()
"#;

impl GrpcServer {
    /// Starts the server in `netns` on `port`; script and log under `dir`.
    pub fn start(netns: &str, dir: &Path, cert: &TlsCert, port: u16) -> Result<GrpcServer> {
        let process = python_tls_server(
            "gRPC server",
            "grpc_server",
            PY_GRPC_SERVER,
            netns,
            dir,
            cert,
            port,
        )?;
        Ok(GrpcServer { process, port })
    }

    /// The Python process (grpcio's core loads libssl into it).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the target from inside its netns.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

const PY_GRPC_CLIENT: &str = r#"
import json, sys
import grpc

args = json.loads(sys.argv[1])
payload = b"podtap-lab-" + b"x" * max(0, int(args["payload"]) - 11)


def identity(b):
    return b


with open(args["cert"], "rb") as f:
    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
counts, errors = {}, []
channel = grpc.secure_channel(
    args["target"], creds, options=[("grpc.ssl_target_name_override", args["name"])])
try:
    grpc.channel_ready_future(channel).result(timeout=15)
    for method, n in args["plan"]:
        path = f"/podtap.lab.Echo/{method}"
        call = channel.unary_unary(path, request_serializer=identity,
                                   response_deserializer=identity)
        for i in range(n):
            try:
                reply = call(payload, timeout=15)
                if reply != payload:
                    errors.append(f"{method}: echo of {len(payload)} bytes came back as {len(reply)}")
                    continue
                code = grpc.StatusCode.OK.value[0]
            except grpc.RpcError as e:
                code = e.code().value[0]
            key = (method, path, code)
            counts[key] = counts.get(key, 0) + 1
except Exception as e:
    errors.append(f"channel to {args['target']}: {e!r}")
finally:
    channel.close()
print(json.dumps({
    "counts": [{"method": m, "path": p, "status": s, "count": c}
               for (m, p, s), c in sorted(counts.items())],
    "connections": 1,
    "errors": errors,
}))
"#;

/// A gRPC client plan: `(method of [`GRPC_SERVICE`], count)` in order, each request carrying
/// `payload` bytes, all on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcPlan {
    /// `(method, count)`: `Say` or `Fail` (others answer UNIMPLEMENTED, 12).
    pub calls: Vec<(String, u32)>,
    /// Request size in bytes (at least the 11-byte marker `podtap-lab-`).
    pub payload: usize,
}

impl GrpcPlan {
    /// A plan of `(method, count)` with 32-byte requests.
    pub fn new(calls: &[(&str, u32)]) -> GrpcPlan {
        GrpcPlan {
            calls: calls.iter().map(|&(m, n)| (m.to_string(), n)).collect(),
            payload: 32,
        }
    }
}

/// Runs a Python gRPC client (TLS trusting `cert`, name override [`TLS_SERVER_NAME`]) in
/// `netns` against `target` (`host:port`). Counts are keyed `(method, "/podtap.lab.Echo/M",
/// grpc status code)`.
pub fn grpc_client(
    netns: &str,
    target: &str,
    cert: &TlsCert,
    plan: &GrpcPlan,
) -> Result<ClientReport> {
    let args = serde_json::json!({
        "target": target,
        "cert": path_str(&cert.cert)?,
        "name": TLS_SERVER_NAME,
        "payload": plan.payload,
        "plan": plan.calls,
    })
    .to_string();
    let out = run_in_netns(
        netns,
        PYTHON,
        &["-c".into(), PY_GRPC_CLIENT.into(), args],
        CLIENT_TIMEOUT,
    )?;
    let raw: RawReport = out.json().context("python gRPC client report")?;
    Ok(raw.into())
}

/// What wrk reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkReport {
    /// `N requests in ...`: completed requests.
    pub requests: u64,
    /// `Requests/sec:`.
    pub requests_per_sec: f64,
    /// The 99th percentile latency (`--latency` distribution).
    pub p99: Duration,
    /// `Non-2xx or 3xx responses:` (0 when wrk printed no such line).
    pub non_2xx_3xx: u64,
    /// Sum of `Socket errors:` (connect, read, write, timeout); 0 when none printed.
    pub socket_errors: u64,
}

/// Runs `wrk -t THREADS -c CONNECTIONS -d SECONDS --latency URL` in `netns` (Debian `wrk`,
/// HTTP/1.1, TLS for `https://`) and parses its summary.
pub fn wrk(
    netns: &str,
    url: &str,
    seconds: u32,
    connections: u32,
    threads: u32,
) -> Result<WrkReport> {
    let args = [
        "-t".to_string(),
        threads.to_string(),
        "-c".to_string(),
        connections.to_string(),
        "-d".to_string(),
        format!("{seconds}s"),
        "--latency".to_string(),
        url.to_string(),
    ];
    let limit = CLIENT_TIMEOUT + Duration::from_secs(u64::from(seconds));
    let out = run_in_netns(netns, "wrk", &args, limit)?;
    parse_wrk(&out.stdout).with_context(|| format!("wrk output:\n{}", out.describe()))
}

/// Parses wrk's `--latency` summary.
pub fn parse_wrk(text: &str) -> Result<WrkReport> {
    let mut report = WrkReport::default();
    let (mut saw_requests, mut saw_rate, mut saw_p99) = (false, false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["99%", latency] => {
                report.p99 = parse_wrk_duration(latency)?;
                saw_p99 = true;
            }
            [n, "requests", "in", ..] => {
                report.requests = n.parse().with_context(|| format!("in `{line}`"))?;
                saw_requests = true;
            }
            ["Requests/sec:", rate] => {
                report.requests_per_sec = rate.parse().with_context(|| format!("in `{line}`"))?;
                saw_rate = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                report.non_2xx_3xx = n.parse().with_context(|| format!("in `{line}`"))?;
            }
            ["Socket", "errors:", ..] => {
                // `connect 0, read 0, write 0, timeout 0`: the number after each word.
                report.socket_errors = line
                    .trim_start_matches("Socket errors:")
                    .split(',')
                    .filter_map(|item| item.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    ensure!(
        saw_requests && saw_rate && saw_p99,
        "wrk output lacks the requests, Requests/sec or 99% latency line"
    );
    Ok(report)
}

/// wrk's durations: `812.00us`, `1.50ms`, `2.00s`, `1.00m`.
fn parse_wrk_duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in wrk duration `{text}`"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("bad wrk duration `{text}`"))?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("unknown unit in wrk duration `{text}`"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// The output of a finished client command.
struct Finished {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "`{}` exited {}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }

    fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        serde_json::from_str(self.stdout.trim()).with_context(|| self.describe())
    }
}

/// Threads reading a child's piped stdout and stderr to the end (so it never blocks on a full
/// pipe), each giving the text.
fn drain_output(
    child: &mut Child,
) -> (
    std::thread::JoinHandle<String>,
    std::thread::JoinHandle<String>,
) {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    }
    (drain(child.stdout.take()), drain(child.stderr.take()))
}

/// Runs `ip netns exec NETNS program args...` to completion (killed after `limit`) and fails
/// unless it exits 0.
fn run_in_netns(netns: &str, program: &str, args: &[String], limit: Duration) -> Result<Finished> {
    let command = format!("ip netns exec {netns} {program} ...");
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in netns {netns}"))?;
    let (stdout, stderr) = drain_output(&mut child);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the client")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Our own child (the program itself, exec'd by `ip netns exec`).
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        bail!("`{command}` did not finish within {limit:?}; stdout:\n{stdout}\nstderr:\n{stderr}");
    };
    let finished = Finished {
        command,
        status,
        stdout,
        stderr,
    };
    ensure!(status.success(), "{}", finished.describe());
    Ok(finished)
}

/// A steady stream of one request for [`PacedClient`]: `workers` keep-alive connections, each
/// sending `method path` at `rate / workers` per second. A worker never catches up in a burst:
/// after a slow answer it sends the next request at once and keeps its pace from there, so the
/// stream never runs faster than `rate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacedPlan {
    /// HTTP method (`POST` sends a small JSON body).
    pub method: String,
    /// Path, appended to the base URL.
    pub path: String,
    /// Requests per second, all workers together.
    pub rate: f64,
    /// Connections sending in parallel (at least 1), so slow answers do not stop the stream.
    pub workers: u32,
    /// The client stops by itself after this long, if [`PacedClient::finish`] was not called.
    #[serde(serialize_with = "seconds")]
    pub max_duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl PacedPlan {
    /// `rate` requests per second of `method path` over `workers` connections, for at most
    /// ten minutes.
    pub fn new(method: &str, path: &str, rate: f64, workers: u32) -> PacedPlan {
        PacedPlan {
            method: method.to_string(),
            path: path.to_string(),
            rate,
            workers: workers.max(1),
            max_duration: Duration::from_secs(600),
        }
    }
}

/// One answered request of a [`PacedClient`], timed by the client's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TimedCall {
    /// When the request was sent (Unix ns).
    pub start_ns: u64,
    /// When the whole answer was read (Unix ns).
    pub end_ns: u64,
    /// The HTTP status.
    pub status: u16,
}

impl TimedCall {
    /// From sending the request to reading the whole answer.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
}

/// What a [`PacedClient`] did, by its own account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacedReport {
    /// Counts per `(method, path, status)`, connections and unanswered requests.
    pub report: ClientReport,
    /// Every answered request, in the order answers arrived.
    pub calls: Vec<TimedCall>,
}

const PY_PACED_CLIENT: &str = r#"
import http.client, json, ssl, sys, threading, time
from urllib.parse import urlsplit

plan = json.loads(sys.argv[1])
url = urlsplit(plan["base_url"])
prefix = url.path.rstrip("/")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
method, path = plan["method"], plan["path"]
workers = max(1, int(plan["workers"]))
period = workers / float(plan["rate"])
deadline = time.monotonic() + float(plan["max_duration"])
stop = threading.Event()
lock = threading.Lock()
calls, errors, connections = [], [], [0]


def watch_stdin():
    # The test closes our stdin to stop us.
    sys.stdin.read()
    stop.set()


def connect():
    if url.scheme == "https":
        c = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=20)
    else:
        c = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=20)
    c.connect()
    with lock:
        connections[0] += 1
    return c


def worker(w):
    conn = None
    due = time.monotonic() + period * w / workers
    i = 0
    while not stop.is_set() and time.monotonic() < deadline:
        wait = due - time.monotonic()
        if wait > 0 and stop.wait(wait):
            break
        due = max(due + period, time.monotonic())
        i += 1
        try:
            if conn is None:
                conn = connect()
            body = None
            if method in ("POST", "PUT", "PATCH"):
                body = json.dumps({"podtap": "lab", "worker": w, "i": i}).encode()
            start = time.time_ns()
            conn.request(method, prefix + path, body=body,
                         headers={"User-Agent": "podtap-lab-paced"})
            r = conn.getresponse()
            r.read()
            end = time.time_ns()
            with lock:
                calls.append({"start_ns": start, "end_ns": end, "status": r.status})
            if r.will_close:
                conn.close()
                conn = None
        except Exception as e:
            with lock:
                errors.append(f"{method} {path}: {e!r}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


threading.Thread(target=watch_stdin, daemon=True).start()
threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
counts = {}
for c in calls:
    key = (method, path, c["status"])
    counts[key] = counts.get(key, 0) + 1
print(json.dumps({
    "counts": [{"method": m, "path": p, "status": s, "count": n}
               for (m, p, s), n in sorted(counts.items())],
    "connections": connections[0],
    "errors": errors,
    "calls": calls,
}))
"#;

/// A client sending a [`PacedPlan`] in the background (Python's `http.client` in a netns,
/// certificate check off) until [`PacedClient::finish`]; killed and reaped on drop.
#[derive(Debug)]
pub struct PacedClient {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PacedClient {
    /// Starts sending `plan` to `base_url` (`https://...` or `http://...`) from `netns`.
    pub fn start(netns: &str, base_url: &str, plan: &PacedPlan) -> Result<PacedClient> {
        #[derive(Serialize)]
        struct Args<'a> {
            base_url: &'a str,
            #[serde(flatten)]
            plan: &'a PacedPlan,
        }
        ensure!(plan.rate > 0.0, "a paced plan needs a positive rate");
        let args = serde_json::to_string(&Args { base_url, plan }).context("encoding the plan")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, PYTHON, "-c", PY_PACED_CLIENT])
            .arg(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the paced client in netns {netns}"))?;
        let (stdout, stderr) = drain_output(&mut child);
        Ok(PacedClient {
            stdin: child.stdin.take(),
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// Stops sending (requests in flight are answered first) and returns the report.
    pub fn finish(mut self) -> Result<PacedReport> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(flatten)]
            report: RawReport,
            calls: Vec<TimedCall>,
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for the client")? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("the paced client did not stop within {CLIENT_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        let finished = Finished {
            command: "ip netns exec ... python3 (paced client)".to_string(),
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        };
        ensure!(status.success(), "{}", finished.describe());
        let raw: Raw = finished.json().context("paced client report")?;
        Ok(PacedReport {
            report: raw.report.into(),
            calls: raw.calls,
        })
    }
}

impl Drop for PacedClient {
    fn drop(&mut self) {
        // Our own child (python itself, exec'd by `ip netns exec`); already reaped after
        // `finish`, when kill only fails.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// dnsmasq (Debian `dnsmasq-base`) as a local DNS server over UDP and TCP, one foreground
/// process with no upstream: the `records` it is given answer (NOERROR), any other name in
/// its `zone` is NXDOMAIN (as is a record's name asked for a type it has no address of), and
/// names outside the zone are REFUSED. Queries are logged to `dnsmasq.log` under its
/// directory.
#[derive(Debug)]
pub struct Dnsmasq {
    process: ServerProcess,
    port: u16,
}

impl Dnsmasq {
    /// Starts dnsmasq in `netns` on `port` (all addresses), authoritative for `zone`
    /// (`lab.test`) with `records` of `(name, IPv4 or IPv6 address)`; log under `dir`.
    pub fn start(
        netns: &str,
        dir: &Path,
        port: u16,
        zone: &str,
        records: &[(&str, &str)],
    ) -> Result<Dnsmasq> {
        let dir = prepare_dir(dir)?;
        let mut args = vec![
            "--no-daemon".to_string(),
            "--conf-file=/dev/null".to_string(),
            "--pid-file=".to_string(),
            "--no-resolv".to_string(),
            "--no-hosts".to_string(),
            "--no-poll".to_string(),
            "--log-queries".to_string(),
            "--log-facility=-".to_string(),
            format!("--port={port}"),
            format!("--local=/{zone}/"),
        ];
        args.extend(
            records
                .iter()
                .map(|(name, addr)| format!("--host-record={name},{addr}")),
        );
        let process = ServerProcess::start(
            "dnsmasq",
            netns,
            "dnsmasq",
            &args,
            dir.join("dnsmasq.log"),
            port,
        )?;
        Ok(Dnsmasq { process, port })
    }

    /// The dnsmasq process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The port (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// One query and its answer, as dig printed them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DigAnswer {
    /// The question's name: lowercase, without the trailing dot.
    pub name: String,
    /// The question's type (`A`, `AAAA`, `MX`, ...).
    pub qtype: String,
    /// The response code's name (`NOERROR`, `NXDOMAIN`, `REFUSED`, ...).
    pub status: String,
    /// The response code's number (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...).
    pub rcode: u32,
    /// How the answer came: `UDP` or `TCP` (dig's `;; SERVER:` line).
    pub transport: String,
}

/// Runs one `dig` (Debian `bind9-dnsutils`) in `netns` asking `server` (`IP`, port 53) every
/// `(name, type)` of `queries` in order, over UDP, or over TCP on one kept-open connection
/// (`+tcp +keepopen`) when `tcp`; one try each. Fails unless every query got an answer.
pub fn dig(
    netns: &str,
    server: &str,
    queries: &[(&str, &str)],
    tcp: bool,
) -> Result<Vec<DigAnswer>> {
    let mut args = vec![
        format!("@{server}"),
        "+tries=1".to_string(),
        "+time=5".to_string(),
    ];
    if tcp {
        args.extend(["+tcp".to_string(), "+keepopen".to_string()]);
    }
    for (name, qtype) in queries {
        args.extend([name.to_string(), qtype.to_string()]);
    }
    let out = run_in_netns(netns, "dig", &args, CLIENT_TIMEOUT)?;
    let answers =
        parse_dig(&out.stdout).with_context(|| format!("dig output:\n{}", out.describe()))?;
    ensure!(
        answers.len() == queries.len(),
        "dig answered {} of {} queries:\n{}",
        answers.len(),
        queries.len(),
        out.describe()
    );
    Ok(answers)
}

/// Parses dig's default output: per answer its `->>HEADER<<-` status, the question line
/// after `;; QUESTION SECTION:` and the transport on `;; SERVER:`.
pub fn parse_dig(text: &str) -> Result<Vec<DigAnswer>> {
    let mut answers = Vec::new();
    let mut status: Option<String> = None;
    let mut question: Option<(String, String)> = None;
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            let s = rest
                .split(',')
                .find_map(|f| f.trim().strip_prefix("status:"))
                .with_context(|| format!("no status in `{line}`"))?;
            status = Some(s.trim().to_string());
        } else if line == ";; QUESTION SECTION:" {
            let q = lines.next().context("no line after the question section")?;
            let f: Vec<&str> = q.trim_start_matches(';').split_whitespace().collect();
            let [name, "IN", qtype] = f.as_slice() else {
                bail!("unexpected question line `{q}`");
            };
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            question = Some((name, qtype.to_string()));
        } else if let Some(rest) = line.strip_prefix(";; SERVER:") {
            let transport = rest
                .rsplit_once('(')
                .map(|(_, t)| t.trim_end_matches(')').to_string())
                .with_context(|| format!("no transport in `{line}`"))?;
            let status = status.take().context("`;; SERVER:` before a header")?;
            let (name, qtype) = question.take().context("`;; SERVER:` before a question")?;
            let rcode = match status.as_str() {
                "NOERROR" => 0,
                "FORMERR" => 1,
                "SERVFAIL" => 2,
                "NXDOMAIN" => 3,
                "NOTIMP" => 4,
                "REFUSED" => 5,
                other => bail!("unknown DNS status `{other}`"),
            };
            answers.push(DigAnswer {
                name,
                qtype,
                status,
                rcode,
                transport,
            });
        }
    }
    Ok(answers)
}

/// A netem stand-in for kernels without `sch_netem`: in one network namespace, TCP packets the
/// namespace sends pass a user-space queue (iptables `NFQUEUE` in `OUTPUT`, served by a Python
/// program over raw nfnetlink) that drops `loss` of them, lets `reorder` of them through at
/// once and holds the others `delay` (so the ones let through overtake them), and TCP packets
/// it receives are dropped with probability `loss` again (iptables `statistic`), after any tap
/// on the host side has seen them. Like `netem loss L delay D reorder R` on the namespace's
/// interface plus `netem loss L` on its peer. The program is killed and the rules removed on
/// drop; the program's decisions come from a fixed seed.
#[derive(Debug)]
pub struct LossyLink {
    process: Option<Child>,
    netns: String,
    rules: Vec<Vec<String>>,
    log: PathBuf,
}

/// The settings of a [`LossyLink`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability of a drop, on the way out and again on the way in (0.03: 3%).
    pub loss: f64,
    /// How long held packets wait.
    pub delay: Duration,
    /// Probability that a packet is not held (and overtakes the held ones).
    pub reorder: f64,
}

const PY_NFQUEUE: &str = r#"
import os, random, select, socket, struct, sys, time

queue, loss, delay, reorder, seed = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
SUBSYS_QUEUE = 3
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 0, 1, 2
F_REQUEST, F_ACK = 1, 4
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
seq = 0


def attr(t, payload):
    a = struct.pack("=HH", 4 + len(payload), t) + payload
    return a + b"\0" * (-len(a) % 4)


def send(msg_type, attrs, flags=F_REQUEST):
    global seq
    seq += 1
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    hdr = struct.pack("=IHHII", 16 + len(body), (SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0)
    s.send(hdr + body)


def config(attrs):
    send(MSG_CONFIG, attrs, F_REQUEST | F_ACK)
    data = s.recv(65536)
    length, typ = struct.unpack_from("=IH", data)
    if typ == 2:  # NLMSG_ERROR
        err = struct.unpack_from("=i", data, 16)[0]
        if err != 0:
            raise SystemExit(f"nfqueue config failed: {os.strerror(-err)}")


config([attr(1, struct.pack("!BBH", 1, 0, socket.AF_INET))])  # CMD_BIND
config([attr(2, struct.pack("!IB", 0, 1))])  # PARAMS: copy metadata only
print(f"podtap nfqueue {queue} ready", flush=True)


def verdict(pid, v):
    send(MSG_VERDICT, [attr(2, struct.pack("!II", v, pid))])


held = []  # (release time, packet id), in arrival order
while True:
    timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
    ready, _, _ = select.select([s], [], [], timeout)
    if ready:
        data = s.recv(65536)
        off = 0
        while off + 16 <= len(data):
            length, typ = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if typ == (SUBSYS_QUEUE << 8) | MSG_PACKET:
                a = off + 20
                pid = None
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype & 0x7FFF == 1:  # PACKET_HDR
                        pid = struct.unpack_from("!I", data, a + 4)[0]
                    a += (alen + 3) & ~3
                if pid is not None:
                    r = rng.random()
                    if r < loss:
                        verdict(pid, 0)  # NF_DROP
                    elif r < loss + reorder:
                        verdict(pid, 1)  # NF_ACCEPT, ahead of the held ones
                    else:
                        held.append((time.monotonic() + delay, pid))
            off += (length + 3) & ~3
    now = time.monotonic()
    while held and held[0][0] <= now:
        verdict(held.pop(0)[1], 1)
"#;

impl LossyLink {
    /// Impairs `netns`'s TCP traffic as described on [`LossyLink`], with NFQUEUE number
    /// `queue` (unique in the namespace) and the program's log under `dir`. Returns once the
    /// queue is bound and the rules are in.
    pub fn start(netns: &str, dir: &Path, queue: u16, how: Impairment) -> Result<LossyLink> {
        let dir = prepare_dir(dir)?;
        let log = dir.join(format!("nfqueue-{queue}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns, PYTHON, "-c", PY_NFQUEUE])
            .arg(queue.to_string())
            .arg(how.loss.to_string())
            .arg(how.delay.as_secs_f64().to_string())
            .arg(how.reorder.to_string())
            .arg(u64::from(queue).to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting the nfqueue program in netns {netns}"))?;
        let mut link = LossyLink {
            process: Some(child),
            netns: netns.to_string(),
            rules: Vec::new(),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&link.log).unwrap_or_default();
            if text.contains("ready") {
                break;
            }
            if let Some(child) = link.process.as_mut()
                && let Some(status) = child.try_wait().context("polling the nfqueue program")?
            {
                bail!("the nfqueue program exited ({status}):\n{text}");
            }
            ensure!(
                Instant::now() < deadline,
                "the nfqueue program did not bind queue {queue}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let queue = queue.to_string();
        let loss = how.loss.to_string();
        for rule in [
            vec![
                "OUTPUT",
                "-p",
                "tcp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
            ],
            vec![
                "INPUT",
                "-p",
                "tcp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &loss,
                "-j",
                "DROP",
            ],
        ] {
            let rule: Vec<String> = rule.into_iter().map(str::to_string).collect();
            link.iptables("-A", &rule)?;
            link.rules.push(rule);
        }
        Ok(link)
    }

    fn iptables(&self, op: &str, rule: &[String]) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "iptables", op])
            .args(rule)
            .output()
            .context("running iptables (install it with scripts/install-deps.sh)")?;
        ensure!(
            out.status.success(),
            "iptables {op} {} in netns {}: {}",
            rule.join(" "),
            self.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        // Rules first: a queue rule without its program would hold the namespace's packets.
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.iptables("-D", &rule);
        }
        // Our own child (python, exec'd by `ip netns exec`).
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summary_parses() {
        let text = "\
finished in 45.30ms, 2207.51 req/s, 1.21MB/s
requests: 100 total, 100 started, 98 done, 97 succeeded, 3 failed, 2 errored, 1 timeout
status codes: 90 2xx, 1 3xx, 4 4xx, 2 5xx
traffic: 56.19KB (57538) total
Application protocol: h2
";
        let r = parse_h2load(text).unwrap();
        assert_eq!(
            r,
            H2loadReport {
                total: 100,
                started: 100,
                done: 98,
                succeeded: 97,
                failed: 3,
                errored: 2,
                timeout: 1,
                status_2xx: 90,
                status_3xx: 1,
                status_4xx: 4,
                status_5xx: 2,
                protocol: "h2".into(),
            }
        );
        assert!(parse_h2load("no summary").is_err());
    }

    #[test]
    fn wrk_summary_parses() {
        let text = "\
Running 1s test @ https://127.0.0.1:8443/
  2 threads and 4 connections
  Latency Distribution
     50%  415.00us
     75%  600.00us
     90%    1.01ms
     99%    2.50ms
  5000 requests in 1.00s, 1.20MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   4990.02
Transfer/sec:      1.20MB
";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 5000);
        assert_eq!(r.non_2xx_3xx, 7);
        assert_eq!(r.socket_errors, 6);
        assert_eq!(r.p99, Duration::from_micros(2500));
        assert!((r.requests_per_sec - 4990.02).abs() < 1e-9);
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
        assert_eq!(
            parse_wrk_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_wrk_duration("3parsecs").is_err());
    }

    #[test]
    fn big_body_has_its_size() {
        assert_eq!(big_body().len(), BIG_BODY_LEN);
    }

    #[test]
    fn dig_output_parses() {
        let text = "\
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> @10.0.0.2 web.lab.test A
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 6161
;; flags: qr aa rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1

;; QUESTION SECTION:
;WEB.lab.test.\t\t\tIN\tA

;; ANSWER SECTION:
web.lab.test.\t\t0\tIN\tA\t10.96.0.10

;; SERVER: 10.0.0.2#53(10.0.0.2) (UDP)

;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 45496
;; QUESTION SECTION:
;missing.lab.test.\t\tIN\tAAAA

;; SERVER: 10.0.0.2#53(10.0.0.2) (TCP)
";
        let answers = parse_dig(text).unwrap();
        let got: Vec<(&str, &str, u32, &str)> = answers
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.qtype.as_str(),
                    a.rcode,
                    a.transport.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("web.lab.test", "A", 0, "UDP"),
                ("missing.lab.test", "AAAA", 3, "TCP")
            ]
        );
        assert!(parse_dig(";; SERVER: 10.0.0.2#53(10.0.0.2) (UDP)\n").is_err());
    }
}
