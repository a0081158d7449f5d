//! RESP2, the Redis protocol: GET and SET requests, and the replies they get (in order).

use anyhow::{bail, Result};

pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
    bulk(out, key);
}

pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
    bulk(out, key);
    bulk(out, value);
}

pub fn encode_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'$');
    push_decimal(out, data.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// What a reply was, as far as the generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+OK`, an integer, or a bulk string: success.
    Ok,
    /// `$-1`: a GET of a missing key, also a success.
    Nil,
    /// `-ERR message`: the whole line after `-`.
    Error(&'a [u8]),
}

/// One complete reply at the start of `buf` and the bytes it used, or `None` if more are needed.
/// Arrays are not replies to GET or SET, so they are refused.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>> {
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let line = &buf[1..line_end];
    let after_line = line_end + 2;
    match kind {
        b'+' | b':' => Ok(Some((Reply::Ok, after_line))),
        b'-' => Ok(Some((Reply::Error(line), after_line))),
        b'$' => {
            let length = parse_length(line)?;
            let Some(length) = length else {
                return Ok(Some((Reply::Nil, after_line)));
            };
            let total = after_line + length + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                bail!("a bulk string not ended by CRLF");
            }
            Ok(Some((Reply::Ok, total)))
        }
        other => bail!("unexpected RESP reply type {:?}", other as char),
    }
}

/// The bytes a bulk reply still needs before it can parse, so the reader can make room for it.
pub fn needed(buf: &[u8]) -> Option<usize> {
    if buf.first() != Some(&b'$') {
        return None;
    }
    let line_end = find_crlf(buf)?;
    let length = parse_length(&buf[1..line_end]).ok()??;
    Some(line_end + 2 + length + 2)
}

fn parse_length(line: &[u8]) -> Result<Option<usize>> {
    if line == b"-1" {
        return Ok(None);
    }
    if line.is_empty() || line.len() > 12 || !line.iter().all(u8::is_ascii_digit) {
        bail!("a bad bulk length {:?}", String::from_utf8_lossy(line));
    }
    Ok(Some(line.iter().fold(0usize, |n, d| n * 10 + (d - b'0') as usize)))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The error's kind: its first word (`ERR`, `WRONGTYPE`, `OOM`, ...).
pub fn error_kind(line: &[u8]) -> String {
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    format!("redis:{}", String::from_utf8_lossy(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode() {
        let mut out = Vec::new();
        encode_get(&mut out, b"key:000000000001");
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000001\r\n");
        out.clear();
        encode_set(&mut out, b"k", b"hello");
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
        out.clear();
        encode_set(&mut out, b"k", b"");
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        out.clear();
        encode_ping(&mut out);
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply(b"+OK\r\n").unwrap(), Some((Reply::Ok, 5)));
        assert_eq!(parse_reply(b":12\r\n").unwrap(), Some((Reply::Ok, 5)));
        assert_eq!(parse_reply(b"$-1\r\n").unwrap(), Some((Reply::Nil, 5)));
        assert_eq!(parse_reply(b"$3\r\nbar\r\n+OK").unwrap(), Some((Reply::Ok, 9)));
        assert_eq!(parse_reply(b"$0\r\n\r\n").unwrap(), Some((Reply::Ok, 6)));
        assert_eq!(parse_reply(b"-ERR wrong number\r\n").unwrap(), Some((Reply::Error(b"ERR wrong number"), 19)));
        assert_eq!(error_kind(b"ERR wrong number"), "redis:ERR");
        assert_eq!(error_kind(b"WRONGTYPE Operation"), "redis:WRONGTYPE");
    }

    #[test]
    fn partial_replies_wait() {
        let whole = b"$5\r\nhello\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse_reply(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(needed(b"$5\r\nhe"), Some(11));
        assert_eq!(needed(b"$5"), None);
        assert_eq!(needed(b"+OK"), None);
        assert_eq!(parse_reply(b"+O").unwrap(), None);
    }

    #[test]
    fn bad_replies_fail() {
        assert!(parse_reply(b"*1\r\n").is_err());
        assert!(parse_reply(b"$x\r\n").is_err());
        assert!(parse_reply(b"$3\r\nbarXX").is_err());
    }
}
