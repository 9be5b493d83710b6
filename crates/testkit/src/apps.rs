//! Real TLS and L7 applications for end-to-end tests, run inside a network namespace: nginx
//! (HTTP/1.1 and HTTP/2 over TLS, optionally plain HTTP), a Python `http.server` over TLS with
//! a fault switch, nghttpd (HTTP/2), a gRPC echo service, and the clients and load tools that
//! drive them (a Python HTTPS client, a Python gRPC client, h2load, wrk). Every client reports
//! its own ground truth: what it sent and which status it got back.
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
        let args = vec![
            "--address=0.0.0.0".to_string(),
            format!("--htdocs={}", path_str(&docroot)?),
            port.to_string(),
            path_str(&cert.key)?.to_string(),
            path_str(&cert.cert)?.to_string(),
        ];
        let process = ServerProcess::start(
            "nghttpd",
            netns,
            "nghttpd",
            &args,
            dir.join("nghttpd.log"),
            port,
        )?;
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
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
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
}
