//! `scripts/run.sh` (what `make run` starts) as a child process, for the
//! tests of the walkthrough a first-time user follows.
//!
//! The script runs in its own process group with the binaries of the running
//! test's target directory, in a directory of the test's (its database and
//! `llmlb-control.pid` land there), on ports picked for it. Dropping the
//! handle kills the group: the script and both binaries.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::bin_path;

/// The line `scripts/run.sh` prints once both binaries answer.
pub const BANNER: &str = "llmlb is running:";

/// A free port on 127.0.0.1. The script polls fixed addresses, so it cannot
/// be given port 0: the port is taken from the OS and released, and another
/// process could take it in between (rare; the test then fails loudly).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Addresses `scripts/run.sh` is told to use (`LLMLB_*` variables).
#[derive(Debug, Clone)]
pub struct RunAddrs {
    /// Control plane gRPC (`LLMLB_GRPC_LISTEN`).
    pub grpc: SocketAddr,
    /// Control plane HTTP (`LLMLB_HTTP_LISTEN`).
    pub http: SocketAddr,
    /// Proxy (`LLMLB_LISTEN`).
    pub proxy: SocketAddr,
}

impl RunAddrs {
    /// Three free ports.
    pub fn free() -> Self {
        RunAddrs {
            grpc: free_addr(),
            http: free_addr(),
            proxy: free_addr(),
        }
    }
}

/// A running `scripts/run.sh`.
#[derive(Debug)]
pub struct RunScript {
    child: Child,
    /// Its stdout lines so far are read from here.
    pub stdout: mpsc::Receiver<String>,
    /// File with its stderr (and the binaries' logs).
    pub stderr: PathBuf,
}

impl RunScript {
    /// Starts the script in `dir` with `addrs` and extra environment variables.
    pub fn spawn(dir: &Path, addrs: &RunAddrs, env: &[(&str, &str)]) -> RunScript {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/run.sh");
        let bin_dir = bin_path("llmlb-control")
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let stderr = dir.join("run.sh.stderr");
        let mut cmd = Command::new(script);
        cmd.arg(bin_dir)
            .current_dir(dir)
            .env("LLMLB_GRPC_LISTEN", addrs.grpc.to_string())
            .env("LLMLB_HTTP_LISTEN", addrs.http.to_string())
            .env("LLMLB_LISTEN", addrs.proxy.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn scripts/run.sh");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        RunScript {
            child,
            stdout: rx,
            stderr,
        }
    }

    /// Waits for the banner; `Err` with the exit status and everything the
    /// script printed if it exits first (or after `timeout`).
    pub fn wait_banner(&mut self, timeout: Duration) -> Result<(), (Option<ExitStatus>, String)> {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        while Instant::now() < deadline {
            match self.stdout.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.starts_with(BANNER) => return Ok(()),
                Ok(line) => seen.push_str(&format!("{line}\n")),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(30));
                    return Err((Some(status), seen + &self.stderr_text()));
                }
            }
        }
        Err((None, seen + &self.stderr_text()))
    }

    /// Waits for the script to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "run.sh did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for RunScript {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
