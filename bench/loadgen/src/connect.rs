//! Before the load: parse the addresses, open every connection (blocking, with a timeout), say
//! HELLO (kv) or PING (redis) on each, and for kv learn the ring from TOPOLOGY.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::cli::Target;
use crate::protocol::{self, Hello, Topology};
use crate::resp;
use crate::ring::Ring;

pub const CLIENT_NAME: &str = "kv-loadgen";

/// `host:port`, `[v6]:port`, or a bare host (then `default_port`), as (host, port).
pub fn parse_address(text: &str, default_port: u16) -> Result<(String, u16)> {
    let text = text.trim();
    ensure!(!text.is_empty(), "an empty address");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').with_context(|| format!("address {text:?} lacks a ']'"))?;
        (host, after.strip_prefix(':').unwrap_or(after))
    } else if text.matches(':').count() == 1 {
        text.split_once(':').expect("one colon")
    } else {
        (text, "")
    };
    ensure!(!host.is_empty(), "address {text:?} has no host");
    if port.is_empty() {
        return Ok((host.to_string(), default_port));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host.to_string(), port)),
        _ => bail!("address {text:?} has an invalid port {port:?}"),
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub fn join_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub fn split_addresses(nodes: &str) -> Result<Vec<String>> {
    let list: Vec<String> = nodes.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    ensure!(!list.is_empty(), "no addresses in --nodes");
    Ok(list)
}

/// A connected socket, Nagle off, blocking, with `timeout` on reads and writes.
pub fn open(address: &str, timeout: Duration) -> Result<TcpStream> {
    let (host, port) = parse_address(address, 0)?;
    ensure!(port != 0, "address {address:?} has no port");
    let candidates: Vec<SocketAddr> =
        (host.as_str(), port).to_socket_addrs().with_context(|| format!("cannot resolve {address}"))?.collect();
    let mut last = None;
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    match last {
        Some(err) => bail!("cannot connect to {address}: {err}"),
        None => bail!("cannot resolve {address}: no addresses"),
    }
}

/// Sends one kv request and reads its reply frame: (status, body).
fn kv_call(stream: &mut TcpStream, request: &[u8], address: &str) -> Result<(u8, Vec<u8>)> {
    stream.write_all(request).with_context(|| format!("cannot send to {address}"))?;
    let mut head = [0u8; protocol::HEADER];
    stream.read_exact(&mut head).with_context(|| format!("no reply from {address}"))?;
    let size = protocol::frame_size(&head).expect("a whole header");
    ensure!((protocol::HEADER..=64 << 20).contains(&size), "a bad frame from {address} (not our protocol?)");
    let mut body = vec![0u8; size - protocol::HEADER];
    stream.read_exact(&mut body).with_context(|| format!("a short reply from {address}"))?;
    Ok((head[8], body))
}

pub fn hello(stream: &mut TcpStream, address: &str) -> Result<Hello> {
    let mut request = Vec::new();
    protocol::encode_hello(&mut request, 1, CLIENT_NAME);
    let (status, body) = kv_call(stream, &request, address)?;
    if status != protocol::OK {
        bail!("{address} refused HELLO: {} {}", protocol::status_name(status), protocol::error_message(status, &body));
    }
    let hello = protocol::decode_hello(&body).with_context(|| format!("a bad HELLO reply from {address}"))?;
    ensure!(hello.version == protocol::VERSION, "{address} chose protocol version {}", hello.version);
    Ok(hello)
}

fn topology(stream: &mut TcpStream, address: &str) -> Result<Topology> {
    let mut request = Vec::new();
    protocol::encode_topology(&mut request, 2);
    let (status, body) = kv_call(stream, &request, address)?;
    ensure!(status == protocol::OK, "{address} refused TOPOLOGY: {}", protocol::status_name(status));
    protocol::decode_topology(&body).with_context(|| format!("a bad TOPOLOGY reply from {address}"))
}

fn redis_ping(stream: &mut TcpStream, address: &str) -> Result<()> {
    let mut request = Vec::new();
    resp::encode_ping(&mut request);
    stream.write_all(&request).with_context(|| format!("cannot send to {address}"))?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).with_context(|| format!("no PING reply from {address} (not Redis?)"))?;
    ensure!(&reply == b"+PONG\r\n", "{address} did not answer PING with +PONG (not Redis, or AUTH needed?)");
    Ok(())
}

/// The cluster as the generator routes to it.
pub struct Cluster {
    pub ring: Ring,
    /// The address used for each node, in `ring.node_ids` order: the seed address where a seed
    /// is that node, else the address the node advertises.
    pub addresses: Vec<String>,
    pub topology: Topology,
    pub limits: Hello,
}

/// Connects to every seed, learns their node ids from HELLO and the ring from the first's TOPOLOGY.
pub fn discover(seeds: &[String], timeout: Duration) -> Result<Cluster> {
    let mut known: Vec<(String, String)> = Vec::new(); // (node id, seed address)
    let mut first: Option<(TcpStream, String, Hello)> = None;
    for seed in seeds {
        let (host, port) = parse_address(seed, 0)?;
        let address = join_address(&host, port);
        let mut stream = open(&address, timeout)?;
        let hello = hello(&mut stream, &address)?;
        known.push((hello.node_id.clone(), address.clone()));
        if first.is_none() {
            first = Some((stream, address, hello));
        }
    }
    let (mut stream, address, limits) = first.context("no seed addresses")?;
    let topology = topology(&mut stream, &address)?;
    let ids: Vec<String> = topology.nodes.iter().map(|node| node.node_id.clone()).collect();
    let ring = Ring::new(&ids, topology.partitions);
    let addresses = ring
        .node_ids
        .iter()
        .map(|id| {
            known.iter().find(|(known_id, _)| known_id == id).map(|(_, seed)| seed.clone()).unwrap_or_else(|| {
                let node = topology.nodes.iter().find(|node| &node.node_id == id).expect("a node of the topology");
                join_address(&node.host, node.port)
            })
        })
        .collect();
    Ok(Cluster { ring, addresses, topology, limits })
}

/// One connection ready for load: HELLO done (kv) or PING answered (redis).
pub fn connect(target: Target, address: &str, timeout: Duration, expect_node: Option<&str>) -> Result<TcpStream> {
    let mut stream = open(address, timeout)?;
    match target {
        Target::Kv => {
            let hello = hello(&mut stream, address)?;
            if let Some(expected) = expect_node {
                ensure!(
                    hello.node_id == expected,
                    "{address} is node {:?}, but the topology says {expected:?} is there",
                    hello.node_id
                );
            }
        }
        Target::Redis => redis_ping(&mut stream, address)?,
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_address("127.0.0.1:5000", 1).unwrap(), ("127.0.0.1".into(), 5000));
        assert_eq!(parse_address("[::1]:6379", 1).unwrap(), ("::1".into(), 6379));
        assert_eq!(parse_address("[::1]", 7).unwrap(), ("::1".into(), 7));
        assert_eq!(parse_address("::1", 7).unwrap(), ("::1".into(), 7));
        assert_eq!(parse_address("node1", 5000).unwrap(), ("node1".into(), 5000));
        assert!(parse_address("host:99999", 1).is_err());
        assert!(parse_address("host:0", 1).is_err());
        assert!(parse_address(":5000", 1).is_err());
        assert!(parse_address("[::1", 1).is_err());
        assert_eq!(join_address("::1", 5), "[::1]:5");
        assert_eq!(join_address("node1", 5), "node1:5");
        assert_eq!(split_addresses(" a:1, b:2 ,").unwrap(), vec!["a:1", "b:2"]);
        assert!(split_addresses(" , ").is_err());
    }

    #[test]
    fn a_refused_connection_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = open(&format!("127.0.0.1:{port}"), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("cannot connect to 127.0.0.1:{port}")), "{err}");
    }
}
