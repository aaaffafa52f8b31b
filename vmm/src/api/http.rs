//! A minimal, bounded HTTP/1.1 server side for the API socket: one request per connection,
//! `Connection: close` on every response.
//!
//! Why not a crate: the rust-vmm/Firecracker `micro_http` that cloud-hypervisor uses is not
//! published on crates.io (its name there belongs to an unrelated async server that needs a
//! runtime), and the clients we serve (`ch-remote`, `curl`) send one small request per
//! connection. What is parsed here is exactly what they send: a request line, headers, and a
//! body of `Content-Length` bytes. Everything is bounded: the request line and headers together
//! at [`MAX_HEAD`] bytes, the body at [`MAX_BODY`], and every read and write by the socket
//! timeouts the caller sets, so a slow or hostile client cannot hold the API thread for long or
//! make the monitor allocate without limit. Nothing in here panics on input.

use std::io::{self, Read, Write};

/// Request line and headers, including the blank line that ends them.
pub const MAX_HEAD: usize = 8 * 1024;
/// Request body: a `vm.create` with 64 pmem devices and long paths fits easily.
pub const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Other,
}

#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The method as sent, for messages.
    pub method_text: String,
    /// The path without a query string.
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request could not be read: answered with `status` and `message`, or not at all when
/// the connection itself failed.
#[derive(Debug)]
pub enum ReadError {
    /// The client sent something this server refuses; it gets this status and message.
    Bad { status: u16, message: String },
    /// The connection closed or timed out; nobody to answer.
    Io(io::Error),
}

fn bad(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Bad {
        status,
        message: message.into(),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads one request from `stream`.
pub fn read_request(stream: &mut impl Read) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(bad(
                431,
                format!("request line and headers exceed {MAX_HEAD} bytes"),
            ));
        }
        let want = (MAX_HEAD + 4 - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before the end of the headers",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(bad(
            431,
            format!("request line and headers exceed {MAX_HEAD} bytes"),
        ));
    }
    let head = std::str::from_utf8(&buf[..head_end - 4])
        .map_err(|_| bad(400, "the request line or a header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method_text, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if parts.next().is_none() && !m.is_empty() => (m, t, v),
        _ => {
            return Err(bad(
                400,
                format!("malformed request line {request_line:?}; expected METHOD PATH HTTP/1.1"),
            ))
        }
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(505, format!("{version:?}: only HTTP/1.1 is served")));
    }
    let mut content_length: Option<usize> = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(400, format!("malformed header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| bad(400, format!("Content-Length {value:?} is not a number")))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad(400, "two different Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                411,
                format!("Transfer-Encoding {value:?} is not served; send Content-Length"),
            ));
        } else if name.eq_ignore_ascii_case("expect") {
            return Err(bad(417, format!("Expect {value:?} is not served")));
        }
    }
    let length = content_length.unwrap_or(0);
    if length > MAX_BODY {
        return Err(bad(
            413,
            format!("a body of {length} bytes exceeds the limit of {MAX_BODY}"),
        ));
    }
    let mut body = buf[head_end..].to_vec();
    if body.len() > length {
        return Err(bad(
            400,
            "more bytes than Content-Length (one request per connection)",
        ));
    }
    body.reserve_exact(length - body.len());
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before the end of the body",
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let method = match method_text {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        _ => Method::Other,
    };
    Ok(Request {
        method,
        method_text: method_text.to_string(),
        path,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response: a status and, unless it is 204, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            body: Some(value.to_string()),
        }
    }

    /// A one-line JSON error in cloud-hypervisor's shape: an array of messages, outermost
    /// first (`["pmem[0]: size=0: ..."]`); `ch-remote` prints them.
    pub fn error(status: u16, message: &str) -> Self {
        let one_line = message.replace(['\n', '\r'], " ");
        Response::json(status, &serde_json::json!([one_line]))
    }

    /// Writes the response. The status line has an empty reason phrase (`HTTP/1.1 200 `), as
    /// `micro_http` writes it: cloud-hypervisor's `api_client` (in `ch-remote`) parses
    /// everything between `HTTP/1.1 ` and the end of the line as the status number, so a
    /// reason phrase would make it fail. HTTP/1.1 allows an empty one; the phrase goes into a
    /// `Status-Text` header instead, for people reading `curl -i`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut text = format!(
            "HTTP/1.1 {} \r\nStatus-Text: {}\r\nServer: pmem-vmm\r\nConnection: close\r\n",
            self.status,
            reason(self.status)
        );
        match &self.body {
            Some(body) => {
                text.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => text.push_str("\r\n"),
        }
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Request, ReadError> {
        read_request(&mut io::Cursor::new(bytes.to_vec()))
    }

    fn status_of(bytes: &[u8]) -> u16 {
        match parse(bytes) {
            Err(ReadError::Bad { status, message }) => {
                assert!(!message.contains('\n'));
                status
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn what_ch_remote_and_curl_send() {
        let r = parse(b"PUT /api/v1/vm.boot HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.method, r.path.as_str()),
            (Method::Put, "/api/v1/vm.boot")
        );
        assert!(r.body.is_empty());
        let r = parse(
            b"PUT /api/v1/vm.create?x=1 HTTP/1.1\r\ncontent-length: 7\r\nContent-Type: application/json\r\n\r\n{\"a\":1}",
        )
        .unwrap();
        assert_eq!(r.path, "/api/v1/vm.create");
        assert_eq!(r.body, b"{\"a\":1}");
    }

    #[test]
    fn bounds_and_malformed_input() {
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&huge), 431);
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(status_of(big.as_bytes()), 413);
        assert_eq!(status_of(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"), 400);
        assert_eq!(
            status_of(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status_of(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\n\r\nxx"),
            400
        );
        assert_eq!(status_of(b"GET /\xff HTTP/1.1\r\n\r\n"), 400);
        // A short body or no end of headers: the connection failed, nobody to answer.
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        Response::no_content().write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 \r\n"), "{text}");
        assert!(text.contains("Status-Text: No Content\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        let mut out = Vec::new();
        Response::error(400, "bad\nthing")
            .write_to(&mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 \r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n[\"bad thing\"]"), "{text}");
        assert!(text.contains("Content-Length: 13\r\n"), "{text}");
    }
}
