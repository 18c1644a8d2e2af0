//! The control socket of a running VM (`hvkvm run --api-socket PATH`, `hvkvm restore …
//! --api-socket PATH`) and its client (`hvkvm ctl`).
//!
//! # Protocol
//! A Unix stream socket, mode 0600 (only its owner may connect). The client writes one request
//! per line, a JSON object; the server answers each with one line, a JSON object, in order.
//!
//! | request | answer `result` |
//! |---|---|
//! | `{"cmd":"pause"}` | `{"state":"paused"}` once every vCPU is out of KVM_RUN |
//! | `{"cmd":"resume"}` | `{"state":"running"}` |
//! | `{"cmd":"info"}` | the VM's state, size, uptime, TSC rate, Hyper-V backend, migration blockers, exits per vCPU |
//! | `{"cmd":"report"}` | the live Hyper-V usage report (as `--hv-report-json` writes it) |
//! | `{"cmd":"snapshot","dir":"/abs/path","for_migration":false}` | where and how big; the VM must be paused and stays paused |
//!
//! Every answer is `{"ok":true,"result":…,"text":"…"}` (`text`: the same for people) or
//! `{"ok":false,"error":"…"}`. A request line longer than [`MAX_LINE`] bytes, a line that is
//! not JSON, an unknown command or a bad argument gets an error answer and changes nothing;
//! after an over-long line the server also closes that connection. A client that disconnects
//! before finishing its line changes nothing. Requests from all connections run one at a time.
//! Connections idle for [`IDLE_TIMEOUT`] are closed; at most [`MAX_CLIENTS`] are served at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotKind;
use crate::vm::VmHandle;

/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Pause every vCPU.
    Pause,
    /// Resume.
    Resume,
    /// What the VM is doing.
    Info,
    /// The live Hyper-V usage report.
    Report,
    /// Snapshot the paused VM into `dir` (an absolute path).
    Snapshot {
        /// Where.
        dir: PathBuf,
        /// Refuse if the guest cannot move to another host; allow restoring elsewhere.
        #[serde(default)]
        for_migration: bool,
    },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// The result, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The result for people, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What went wrong, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn ok(result: impl Serialize, text: String) -> Self {
        Response {
            ok: true,
            result: serde_json::to_value(result).ok(),
            text: Some(text),
            error: None,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            text: None,
            error: Some(message.into()),
        }
    }
}

/// Errors setting up the socket or talking to it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something other than a socket is at the path.
    #[error(
        "'{0}' exists and is not a socket; hvkvm will not replace it: choose another \
         --api-socket path"
    )]
    NotASocket(PathBuf),
    /// Another process serves the socket.
    #[error(
        "'{0}' is in use by a running process (another hvkvm?): choose another --api-socket path"
    )]
    InUse(PathBuf),
    /// A socket operation failed.
    #[error("cannot {what} '{path}'")]
    Io {
        /// What.
        what: &'static str,
        /// Which socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Nobody serves the socket.
    #[error(
        "cannot connect to '{path}': is an hvkvm running with --api-socket {path}? (its socket \
         exists only while its VM runs)"
    )]
    Connect {
        /// Which socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's answer was not one.
    #[error("the answer from '{path}' is not an hvkvm API answer: {problem}")]
    BadAnswer {
        /// Which socket.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApiError {
    let path = path.to_owned();
    move |source| ApiError::Io { what, path, source }
}

/// What the server controls: swapped when `hvkvm run` reboots the guest into a new VM.
pub type Target = Arc<Mutex<Option<VmHandle>>>;

/// A listening control socket; removed (if it is still ours) when dropped.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    inode: u64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    target: Target,
}

impl ApiServer {
    /// Binds `path` (mode 0600) and serves it on a thread. A stale socket nobody listens on
    /// is replaced; anything else at the path is an error.
    pub fn start(path: &Path) -> Result<Self, ApiError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => return Err(ApiError::NotASocket(path.into())),
            Ok(_) => {
                if UnixStream::connect(path).is_ok() {
                    return Err(ApiError::InUse(path.into()));
                }
                std::fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(io_err("listen on", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("restrict the permissions of", path))?;
        let inode = std::fs::metadata(path)
            .map_err(io_err("inspect", path))?
            .ino();
        listener
            .set_nonblocking(true)
            .map_err(io_err("configure", path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let target: Target = Arc::new(Mutex::new(None));
        let thread = {
            let stop = stop.clone();
            let target = target.clone();
            std::thread::Builder::new()
                .name("api".into())
                .spawn(move || serve(listener, stop, target))
                .map_err(io_err("start the thread serving", path))?
        };
        Ok(ApiServer {
            path: path.into(),
            inode,
            stop,
            thread: Some(thread),
            target,
        })
    }

    /// Makes the server control `vm` (or nothing).
    pub fn set_target(&self, vm: Option<VmHandle>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = vm;
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only our own socket: someone may have replaced the path meanwhile.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn serve(listener: UnixListener, stop: Arc<AtomicBool>, target: Target) {
    let clients = Arc::new(AtomicUsize::new(0));
    // One request at a time across connections.
    let serial = Arc::new(Mutex::new(()));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if clients.load(Ordering::SeqCst) >= MAX_CLIENTS {
                    let _ = write_response(
                        &mut stream,
                        &Response::error(format!("too many connections (at most {MAX_CLIENTS})")),
                    );
                    continue;
                }
                clients.fetch_add(1, Ordering::SeqCst);
                let (clients, serial, target, stop) = (
                    clients.clone(),
                    serial.clone(),
                    target.clone(),
                    stop.clone(),
                );
                let spawned =
                    std::thread::Builder::new()
                        .name("api-client".into())
                        .spawn(move || {
                            client(stream, &serial, &target, &stop);
                            clients.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    log::warn!("API: cannot start a thread for a client");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                log::warn!("API: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn write_response(stream: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    line.push(b'\n');
    stream.write_all(&line)
}

/// Serves one connection until it closes, idles out, or sends an over-long line.
fn client(stream: UnixStream, serial: &Mutex<()>, target: &Target, stop: &AtomicBool) {
    // The read timeout also lets the thread notice `stop`.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut idle = Duration::ZERO;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut limited = (&mut reader).take((MAX_LINE + 1 - line.len().min(MAX_LINE)) as u64);
        match limited.read_until(b'\n', &mut line) {
            // EOF: a partial line is dropped unexecuted.
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                idle += Duration::from_millis(200);
                if idle >= IDLE_TIMEOUT {
                    let _ =
                        write_response(&mut writer, &Response::error("idle for too long; closing"));
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                let _ = write_response(
                    &mut writer,
                    &Response::error(format!(
                        "request line longer than {MAX_LINE} bytes; closing the connection"
                    )),
                );
                return;
            }
            // Not complete yet (or EOF next time round).
            continue;
        }
        idle = Duration::ZERO;
        let text = String::from_utf8_lossy(&line[..line.len() - 1])
            .trim()
            .to_string();
        line.clear();
        if text.is_empty() {
            continue;
        }
        let response = {
            let _one_at_a_time = serial.lock().unwrap_or_else(|p| p.into_inner());
            handle_line(&text, target)
        };
        if write_response(&mut writer, &response).is_err() {
            return;
        }
    }
}

/// Parses a request line strictly: a JSON object with a known `cmd` and only that command's
/// arguments.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("a request is a JSON object")?;
    let allowed: &[&str] = match object.get("cmd").and_then(|c| c.as_str()) {
        Some("snapshot") => &["cmd", "dir", "for_migration"],
        Some(_) => &["cmd"],
        None => return Err("the request has no \"cmd\"".into()),
    };
    if let Some(extra) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown field \"{extra}\""));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Parses and carries out one request line.
pub fn handle_line(line: &str, target: &Target) -> Response {
    let request: Request = match parse_request(line) {
        Ok(r) => r,
        Err(e) => {
            return Response::error(format!(
                "bad request ({e}); send one JSON object per line, e.g. {{\"cmd\":\"info\"}}; \
                 commands: pause, resume, info, report, snapshot"
            ))
        }
    };
    let vm = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(vm) = vm else {
        return Response::error("no VM is running right now (it is starting, rebooting or ending)");
    };
    execute(request, &vm)
}

fn execute(request: Request, vm: &VmHandle) -> Response {
    use crate::vm::control::RunState;
    match request {
        Request::Pause => {
            if vm.state() == RunState::Stopping {
                return Response::error("the VM is stopping");
            }
            if vm.pause() {
                Response::ok(serde_json::json!({"state": "paused"}), "paused".into())
            } else {
                Response::error(format!(
                    "the VM is pausing but not every vCPU left KVM_RUN within {:?}",
                    crate::vm::handle::PAUSE_WAIT
                ))
            }
        }
        Request::Resume => match vm.state() {
            RunState::Stopping => Response::error("the VM is stopping"),
            _ => {
                vm.resume();
                Response::ok(serde_json::json!({"state": "running"}), "running".into())
            }
        },
        Request::Info => {
            let info = vm.info();
            let text =
                format!(
                "state {}, {} vCPUs, {} MiB, up {:.1} s, guest TSC {} kHz, Hyper-V {}, boot: {}{}",
                info.state,
                info.cpus,
                info.memory_mib,
                info.uptime_s,
                info.guest_tsc_khz,
                info.hyperv_backend.as_deref().unwrap_or("off"),
                info.boot,
                if info.migration_blockers.is_empty() {
                    String::new()
                } else {
                    format!("\nmigration blockers: {}", info.migration_blockers.join("; "))
                }
            );
            Response::ok(info, text)
        }
        Request::Report => match vm.report() {
            Some(report) => {
                let text = report.render();
                Response::ok(report, text)
            }
            None => {
                Response::error("the VM has no Hyper-V enlightenments, so there is no usage report")
            }
        },
        Request::Snapshot { dir, for_migration } => {
            if !dir.is_absolute() {
                return Response::error(format!(
                    "snapshot directory '{}' is not absolute (hvkvm ctl sends absolute paths)",
                    dir.display()
                ));
            }
            let kind = if for_migration {
                SnapshotKind::Migration
            } else {
                SnapshotKind::SameHost
            };
            match vm.snapshot(&dir, kind) {
                Ok(info) => {
                    let text = format!(
                        "{} snapshot written to {}: {} MiB of RAM, {} non-zero pages, {:.1} MiB \
                         on disk, {:.0} ms",
                        info.kind,
                        info.dir.display(),
                        info.ram_bytes >> 20,
                        info.ram_nonzero_pages,
                        info.disk_bytes as f64 / (1 << 20) as f64,
                        info.elapsed_ms
                    );
                    Response::ok(info, text)
                }
                Err(e) => Response::error(crate::cli::error_chain(&e)),
            }
        }
    }
}

/// Sends one request and returns the answer (`hvkvm ctl`).
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ApiError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ApiError::Connect {
        path: path.into(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_err("configure", path))?;
    let mut line = serde_json::to_vec(request).map_err(|e| ApiError::BadAnswer {
        path: path.into(),
        problem: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err("write to", path))?;
    let mut answer = Vec::new();
    BufReader::new(&stream)
        .take(16 << 20)
        .read_until(b'\n', &mut answer)
        .map_err(io_err("read the answer from", path))?;
    serde_json::from_slice(&answer).map_err(|e| ApiError::BadAnswer {
        path: path.into(),
        problem: if answer.is_empty() {
            "the server closed the connection".into()
        } else {
            e.to_string()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            parse_request(r#"{"cmd":"snapshot","dir":"/x"}"#).unwrap(),
            Request::Snapshot {
                dir: "/x".into(),
                for_migration: false
            }
        );
        for bad in [
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"pause","now":true}"#,
            r#"{"dir":"/x"}"#,
            "pause",
            "",
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_lines_get_errors_and_no_vm_is_an_error() {
        let target: Target = Arc::new(Mutex::new(None));
        let r = handle_line("{not json", &target);
        assert!(!r.ok && r.error.unwrap().contains("bad request"));
        let r = handle_line(r#"{"cmd":"info"}"#, &target);
        assert!(!r.ok && r.error.unwrap().contains("no VM"));
    }

    #[test]
    fn the_socket_is_private_and_never_clobbers_a_file() {
        let dir = std::env::temp_dir().join(format!("hvkvm-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            ApiServer::start(&file),
            Err(ApiError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        let sock = dir.join("api.sock");
        let server = ApiServer::start(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(ApiServer::start(&sock), Err(ApiError::InUse(_))));
        // Over-long line: an error, then the connection closes; the server goes on.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        assert!(answer.contains("longer than"), "{answer}");
        // A client that leaves mid-line changes nothing; the next one is served.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(br#"{"cmd":"pa"#).unwrap();
        drop(s);
        let r = call(&sock, &Request::Info, Duration::from_secs(5)).unwrap();
        assert!(!r.ok && r.error.unwrap().contains("no VM"));
        drop(server);
        assert!(!sock.exists(), "removed on exit");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
