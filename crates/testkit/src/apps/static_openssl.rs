//! An HTTPS server whose OpenSSL is linked into the executable (no `libssl.so` mapped), built
//! from `static_server.c` with the system's C compiler and `libssl.a` / `libcrypto.a`
//! (Debian's `libssl-dev`): the case of binaries that carry OpenSSL themselves.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::{ServerProcess, TlsCert, path_str, prepare_dir, write_file};

const SOURCE: &str = include_str!("static_server.c");

/// The statically linked HTTPS server (HTTP/1.1, keep-alive, one connection at a time):
/// `/status/N` answers N, `/` and `/api/...` 200, anything else 404.
#[derive(Debug)]
pub struct StaticTlsServer {
    process: ServerProcess,
    port: u16,
}

impl StaticTlsServer {
    /// Compiles the server under `dir` and starts it in `netns` on `port`. Fails if the result
    /// maps a shared libssl (then it would not test static linking).
    pub fn start(netns: &str, dir: &Path, cert: &TlsCert, port: u16) -> Result<StaticTlsServer> {
        let dir = prepare_dir(dir)?;
        let source = dir.join("static_server.c");
        let exe = dir.join("static_server");
        write_file(&source, SOURCE)?;
        let out = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&exe)
            .arg(&source)
            .args([
                "-Wl,-Bstatic",
                "-lssl",
                "-lcrypto",
                "-Wl,-Bdynamic",
                "-lpthread",
                "-ldl",
            ])
            .output()
            .context("running cc (Debian packages gcc and libssl-dev)")?;
        ensure!(
            out.status.success(),
            "compiling the static OpenSSL server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args = vec![
            port.to_string(),
            path_str(&cert.cert)?.to_string(),
            path_str(&cert.key)?.to_string(),
        ];
        let process = ServerProcess::start(
            "static OpenSSL server",
            netns,
            path_str(&exe)?,
            &args,
            dir.join("static_server.log"),
            port,
        )?;
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", process.pid()))
            .context("reading the server's /proc/PID/maps")?;
        ensure!(
            !maps.contains("libssl.so"),
            "the static server maps a shared libssl"
        );
        Ok(StaticTlsServer { process, port })
    }

    /// The server process (OpenSSL is in its executable).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The HTTPS port.
    pub fn port(&self) -> u16 {
        self.port
    }
}
