//! The API thread: accepts one connection at a time, reads one bounded request (with read and
//! write timeouts, so a client that stalls costs at most [`IO_TIMEOUT`]), answers it and closes
//! the connection. It sleeps in `accept` while nobody calls: no wake-ups when idle. It installs
//! its seccomp filter (`seccomp::ThreadKind::Api`) before it accepts anything.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};

use super::http::{self, ReadError};
use super::{Command, CommandKind, Controller, Then};
use crate::seccomp::{self, Sandbox, SelftestThread, ThreadKind};

/// How long one connection may take to send its request or read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the API thread on `listener`; returns once the thread has installed its seccomp
/// filter (an error if it could not: then it serves nothing and is gone).
pub fn spawn(
    listener: UnixListener,
    controller: Controller,
    sandbox: Sandbox,
) -> io::Result<JoinHandle<()>> {
    let program = seccomp::filter(ThreadKind::Api, sandbox.mode)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (installed, result) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let filtered = seccomp::apply(ThreadKind::Api, program.as_ref());
            let ok = filtered.is_ok();
            let _ = installed.send(filtered);
            if ok {
                sandbox.selftest(SelftestThread::Api);
                serve(listener, controller);
            }
        })?;
    match result.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(io::Error::other(e.to_string()))
        }
        Err(_) => Err(io::Error::other("the API thread ended before it started")),
    }
}

fn serve(listener: UnixListener, controller: Controller) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Then::ExitVmm = serve_one(stream, &controller) {
                    let (reply, _answer) = mpsc::channel();
                    let _ = controller.send(Command {
                        kind: CommandKind::ExitVmm,
                        reply,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                warn!("API socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// After refusing a request whose body was not read (413, say), reads and discards what the
/// client is still sending, at most [`LINGER_BYTES`] and [`LINGER_TIME`], so that closing the
/// socket does not make the client's write fail before it reads the answer.
fn linger(stream: &mut UnixStream) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER_TIME));
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES && start.elapsed() < LINGER_TIME {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Bounds of [`linger`].
const LINGER_BYTES: usize = 4 << 20;
const LINGER_TIME: Duration = Duration::from_secs(1);

fn serve_one(mut stream: UnixStream, controller: &Controller) -> Then {
    if let Err(e) = stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
    {
        warn!("API connection: {e}");
        return Then::Nothing;
    }
    // A refused request may have bytes the server did not read.
    let mut unread = false;
    let (response, then) = match http::read_request(&mut stream) {
        Ok(req) => {
            controller.state.update(|s| s.in_flight = true);
            let (response, then) = controller.handle(&req);
            debug!(
                "API {} {} -> {}",
                req.method_text, req.path, response.status
            );
            (response, then)
        }
        Err(ReadError::Bad { status, message }) => {
            debug!("API request refused: {status} {message}");
            unread = true;
            (http::Response::error(status, &message), Then::Nothing)
        }
        Err(ReadError::Io(e)) => {
            debug!("API connection: {e}");
            return Then::Nothing;
        }
    };
    if let Err(e) = response.write_to(&mut stream) {
        debug!("API connection: writing the answer: {e}");
    }
    if unread {
        linger(&mut stream);
    }
    drop(stream);
    controller.state.update(|s| s.in_flight = false);
    then
}
