//! Our binary protocol, version 1 (`client/PROTOCOL.md`): only what the generator sends and reads.
//!
//! A frame is `u32 length` (bytes after it), `u32 request_id`, `u8 code`, then the body; all
//! integers big-endian.

use anyhow::{bail, ensure, Context, Result};

pub const VERSION: u8 = 1;
pub const HEADER: usize = 9;

pub const OP_HELLO: u8 = 0x01;
pub const OP_GET: u8 = 0x03;
pub const OP_PUT: u8 = 0x04;
pub const OP_TOPOLOGY: u8 = 0x06;

pub const OK: u8 = 0x00;
pub const NOT_FOUND: u8 = 0x01;

pub fn status_name(code: u8) -> &'static str {
    match code {
        0x00 => "OK",
        0x01 => "NOT_FOUND",
        0x10 => "BAD_REQUEST",
        0x11 => "KEY_TOO_LARGE",
        0x12 => "VALUE_TOO_LARGE",
        0x13 => "FRAME_TOO_LARGE",
        0x14 => "UNSUPPORTED_VERSION",
        0x20 => "UNAVAILABLE",
        0x21 => "TIMEOUT",
        0x30 => "INTERNAL_ERROR",
        _ => "UNKNOWN_STATUS",
    }
}

fn header(out: &mut Vec<u8>, request_id: u32, code: u8, body_len: usize) {
    out.extend_from_slice(&((5 + body_len) as u32).to_be_bytes());
    out.extend_from_slice(&request_id.to_be_bytes());
    out.push(code);
}

pub fn encode_hello(out: &mut Vec<u8>, request_id: u32, client_name: &str) {
    header(out, request_id, OP_HELLO, 3 + client_name.len());
    out.extend_from_slice(&[VERSION, VERSION, client_name.len() as u8]);
    out.extend_from_slice(client_name.as_bytes());
}

pub fn encode_topology(out: &mut Vec<u8>, request_id: u32) {
    header(out, request_id, OP_TOPOLOGY, 0);
}

/// GET: `quorum` (0: the node's R), `key`.
pub fn encode_get(out: &mut Vec<u8>, request_id: u32, quorum: u8, key: &[u8]) {
    header(out, request_id, OP_GET, 1 + 2 + key.len());
    out.push(quorum);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
}

/// PUT: `quorum` (0: the node's W), `u64 after`, `key`, `value`.
pub fn encode_put(out: &mut Vec<u8>, request_id: u32, quorum: u8, after: u64, key: &[u8], value: &[u8]) {
    header(out, request_id, OP_PUT, 1 + 8 + 2 + key.len() + 4 + value.len());
    out.push(quorum);
    out.extend_from_slice(&after.to_be_bytes());
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// One frame, borrowed from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub request_id: u32,
    pub code: u8,
    pub body: &'a [u8],
    /// Bytes the whole frame took.
    pub size: usize,
}

/// One complete frame at the start of `buf`, or `None` if more bytes are needed. A length below 5
/// is an error.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame<'_>>> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    ensure!(length >= 5, "a frame of length {length} (below 5)");
    let total = 4 + length;
    if buf.len() < total {
        return Ok(None);
    }
    let request_id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Ok(Some(Frame { request_id, code: buf[8], body: &buf[HEADER..total], size: total }))
}

/// The total size of the frame starting `buf`, once its length field is in.
pub fn frame_size(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
}

/// Reads fields off a body, failing cleanly on a short one.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(self.0.len() >= n, "reply body too short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str8(&mut self) -> Result<String> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).context("a str8 field that is not UTF-8")
    }
    fn str16(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// The error message that ends an error status's body, if it parses.
pub fn error_message(code: u8, body: &[u8]) -> String {
    let mut reader = Reader(body);
    if code == 0x20 || code == 0x21 {
        let _ = reader.take(2);
    }
    reader.str16().unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub node_id: String,
    pub max_key_bytes: u32,
    pub max_value_bytes: u32,
    pub max_frame_bytes: u32,
}

pub fn decode_hello(body: &[u8]) -> Result<Hello> {
    let mut r = Reader(body);
    Ok(Hello {
        version: r.u8()?,
        node_id: r.str8()?,
        max_key_bytes: r.u32()?,
        max_value_bytes: r.u32()?,
        max_frame_bytes: r.u32()?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyNode {
    pub node_id: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub replicas: u8,
    pub read_quorum: u8,
    pub write_quorum: u8,
    pub partitions: u16,
    pub nodes: Vec<TopologyNode>,
}

pub fn decode_topology(body: &[u8]) -> Result<Topology> {
    let mut r = Reader(body);
    let (replicas, read_quorum, write_quorum, partitions) = (r.u8()?, r.u8()?, r.u8()?, r.u16()?);
    let count = r.u16()?;
    let mut nodes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        nodes.push(TopologyNode { node_id: r.str8()?, host: r.str8()?, port: r.u16()? });
    }
    if partitions == 0 || nodes.is_empty() {
        bail!("TOPOLOGY reply with {partitions} partitions and {} nodes", nodes.len());
    }
    Ok(Topology { replicas, read_quorum, write_quorum, partitions, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    // The byte examples of client/PROTOCOL.md.
    #[test]
    fn hello_matches_protocol_md() {
        let mut out = Vec::new();
        encode_hello(&mut out, 1, "kv-cli");
        assert_eq!(out, hex("00 00 00 0e  00 00 00 01  01  01 01  06 6b 76 2d 63 6c 69"));
        let reply = hex("00 00 00 18  00 00 00 01  00  01  05 6e 6f 64 65 31  00 00 04 00  00 10 00 00  00 10 08 00");
        let frame = parse_frame(&reply).unwrap().unwrap();
        assert_eq!((frame.request_id, frame.code, frame.size), (1, OK, reply.len()));
        let hello = decode_hello(frame.body).unwrap();
        assert_eq!(
            hello,
            Hello {
                version: 1,
                node_id: "node1".into(),
                max_key_bytes: 1024,
                max_value_bytes: 1_048_576,
                max_frame_bytes: 1_050_624,
            }
        );
    }

    #[test]
    fn put_matches_protocol_md() {
        let mut out = Vec::new();
        encode_put(&mut out, 3, 0, 0x01a2_b3c4_d5e6_0000, b"foo", b"bar");
        assert_eq!(
            out,
            hex("00 00 00 1a  00 00 00 03  04  00  01 a2 b3 c4 d5 e6 00 00  00 03 66 6f 6f  00 00 00 03 62 61 72")
        );
        let reply = hex("00 00 00 13  00 00 00 03  00  01 a2 b3 c4 d5 e6 00 00  05 6e 6f 64 65 32");
        let frame = parse_frame(&reply).unwrap().unwrap();
        assert_eq!((frame.request_id, frame.code, frame.body.len(), frame.size), (3, OK, 14, reply.len()));
    }

    #[test]
    fn get_matches_protocol_md() {
        let mut out = Vec::new();
        encode_get(&mut out, 4, 0, b"foo");
        assert_eq!(out, hex("00 00 00 0b  00 00 00 04  03  00  00 03 66 6f 6f"));
        let hit = hex("00 00 00 1a  00 00 00 04  00  01 a2 b3 c4 d5 e6 00 00  05 6e 6f 64 65 32  00 00 00 03 62 61 72");
        assert_eq!(parse_frame(&hit).unwrap().unwrap().code, OK);
        let miss = hex("00 00 00 05  00 00 00 04  01");
        let frame = parse_frame(&miss).unwrap().unwrap();
        assert_eq!(frame, Frame { request_id: 4, code: NOT_FOUND, body: &[], size: 9 });
    }

    #[test]
    fn error_statuses_have_names_and_messages() {
        let reply = hex("00 00 00 0b  00 00 00 05  20  01 02  00 02 6e 6f");
        let frame = parse_frame(&reply).unwrap().unwrap();
        assert_eq!((frame.request_id, status_name(frame.code)), (5, "UNAVAILABLE"));
        assert_eq!(error_message(frame.code, frame.body), "no");
        assert_eq!(error_message(0x10, &hex("00 03 62 61 64")), "bad");
        assert_eq!(status_name(0x99), "UNKNOWN_STATUS");
    }

    #[test]
    fn partial_frames_wait_and_short_lengths_fail() {
        let mut pipelined = Vec::new();
        encode_get(&mut pipelined, 7, 2, b"k");
        encode_get(&mut pipelined, 8, 2, b"kk");
        let first = frame_size(&pipelined).unwrap();
        assert_eq!(first, 13);
        for cut in 0..first {
            assert!(parse_frame(&pipelined[..cut]).unwrap().is_none());
        }
        let frame = parse_frame(&pipelined).unwrap().unwrap();
        assert_eq!(frame, Frame { request_id: 7, code: OP_GET, body: &[2, 0, 1, b'k'], size: 13 });
        assert_eq!(parse_frame(&pipelined[frame.size..]).unwrap().unwrap().request_id, 8);
        assert!(parse_frame(&hex("00 00 00 04  00 00 00 01  00")).is_err());
    }

    #[test]
    fn topology_decodes() {
        let mut body = vec![2, 1, 2, 0x10, 0x00, 0, 2];
        for (id, host, port) in [("node1", "node1", 5000u16), ("node2", "::1", 5001)] {
            body.push(id.len() as u8);
            body.extend_from_slice(id.as_bytes());
            body.push(host.len() as u8);
            body.extend_from_slice(host.as_bytes());
            body.extend_from_slice(&port.to_be_bytes());
        }
        let topology = decode_topology(&body).unwrap();
        assert_eq!((topology.replicas, topology.read_quorum, topology.write_quorum), (2, 1, 2));
        assert_eq!(topology.partitions, 4096);
        assert_eq!(topology.nodes[1], TopologyNode { node_id: "node2".into(), host: "::1".into(), port: 5001 });
        assert!(decode_topology(&body[..body.len() - 1]).is_err());
        let mut out = Vec::new();
        encode_topology(&mut out, 9);
        assert_eq!(out, hex("00 00 00 05  00 00 00 09  06"));
    }
}
