//! The real binaries as child processes.
//!
//! Each child runs in its own process group; dropping the handle kills the
//! group with SIGKILL, so a failed test leaves nothing running. Its stderr
//! (the logs) goes to the test's stderr, or to a file when asked (to check
//! what the binaries log).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

/// Path of a workspace binary in the target directory of the running test.
pub fn bin_path(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// A running child in its own process group.
#[derive(Debug)]
struct Group {
    child: Child,
    name: &'static str,
}

impl Group {
    fn spawn(
        name: &'static str,
        args: &[String],
        env: &[(String, String)],
        stderr: Option<&Path>,
    ) -> (Group, mpsc::Receiver<String>) {
        let stderr = match stderr {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
            ),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(bin_path(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() && !env.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (Group { child, name }, rx)
    }

    fn signal(&self, signal: Signal) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), signal);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Waits for the startup line starting with `prefix` and returns `key=value` pairs.
fn wait_ready(rx: &mpsc::Receiver<String>, prefix: &str) -> Vec<(String, String)> {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("no `{prefix}` line within 30 s (did the process fail? see stderr)")
            });
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest
                .split_whitespace()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
        }
    }
}

fn addr_of(pairs: &[(String, String)], key: &str) -> SocketAddr {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("startup line has no {key}=ADDR"))
}

/// Options of a control plane under test.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Database file.
    pub database: PathBuf,
    /// gRPC address (`127.0.0.1:0` picks one).
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Extra flags.
    pub args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`, default `warn`).
    pub env: Vec<(String, String)>,
    /// File that receives stderr (appended to; restarts add to it), instead
    /// of the test's stderr.
    pub stderr: Option<PathBuf>,
}

impl ControlPlaneOptions {
    /// Fast health checks, ports picked by the OS.
    pub fn new(database: PathBuf) -> Self {
        ControlPlaneOptions {
            database,
            grpc: "127.0.0.1:0".parse().expect("addr"),
            http: "127.0.0.1:0".parse().expect("addr"),
            args: vec![
                "--health-check-interval".into(),
                "200ms".into(),
                "--health-check-timeout".into(),
                "1s".into(),
            ],
            env: Vec::new(),
            stderr: None,
        }
    }
}

/// A running `llmlb-control`.
#[derive(Debug)]
pub struct ControlPlane {
    group: Group,
    /// How it was started (ports filled in), to restart it identically.
    pub options: ControlPlaneOptions,
}

impl ControlPlane {
    /// Starts it and waits until it listens.
    pub fn start(options: ControlPlaneOptions) -> ControlPlane {
        let mut args = vec![
            "--database".to_string(),
            options.database.display().to_string(),
            "--grpc-listen".into(),
            options.grpc.to_string(),
            "--http-listen".into(),
            options.http.to_string(),
        ];
        args.extend(options.args.iter().cloned());
        let (group, rx) = Group::spawn(
            "llmlb-control",
            &args,
            &options.env,
            options.stderr.as_deref(),
        );
        let pairs = wait_ready(&rx, "llmlb-control listening");
        let mut options = options;
        options.grpc = addr_of(&pairs, "grpc");
        options.http = addr_of(&pairs, "http");
        ControlPlane { group, options }
    }

    /// `http://` URL of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.options.grpc)
    }

    /// `http://` URL of the HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.options.http)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.group.signal(Signal::SIGTERM);
        self.group.wait_exit(Duration::from_secs(30))
    }

    /// SIGKILL, then waits for the exit.
    pub fn kill(mut self) -> ExitStatus {
        self.group.signal(Signal::SIGKILL);
        self.group.wait_exit(Duration::from_secs(30))
    }

    /// Starts a new process with the same database and ports.
    pub fn restart_same(options: &ControlPlaneOptions) -> ControlPlane {
        ControlPlane::start(options.clone())
    }
}

/// How to start a proxy beyond its control plane URL.
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Extra flags.
    pub args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`, default `warn`).
    pub env: Vec<(String, String)>,
    /// File that receives stderr instead of the test's stderr.
    pub stderr: Option<PathBuf>,
}

/// A running `llmlb-proxy`.
#[derive(Debug)]
pub struct Proxy {
    group: Group,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts a proxy against `control_plane` (gRPC URL) with extra flags.
    pub fn start(control_plane: &str, args: &[&str]) -> Proxy {
        Proxy::start_with(
            control_plane,
            ProxyOptions {
                args: args.iter().map(|a| a.to_string()).collect(),
                ..ProxyOptions::default()
            },
        )
    }

    /// Starts a proxy against `control_plane` with `options`.
    pub fn start_with(control_plane: &str, options: ProxyOptions) -> Proxy {
        let mut all = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--control-plane".into(),
            control_plane.to_string(),
        ];
        all.extend(options.args);
        let (group, rx) =
            Group::spawn("llmlb-proxy", &all, &options.env, options.stderr.as_deref());
        let pairs = wait_ready(&rx, "llmlb-proxy listening");
        Proxy {
            group,
            addr: addr_of(&pairs, "http"),
        }
    }

    /// Base URL (`http://ADDR`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.group.signal(Signal::SIGTERM);
        self.group.wait_exit(Duration::from_secs(60))
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        self.group.signal(Signal::SIGTERM);
    }

    /// Waits for the exit after a signal.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        self.group.wait_exit(timeout)
    }
}
