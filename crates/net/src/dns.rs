//! The per-sandbox DNS resolver.
//!
//! Every sandbox lives in its own network namespace and its
//! `/etc/resolv.conf` names an address of the host (the sandbox's gateway).
//! The daemon runs one [`Resolver`] per sandbox on that address, over UDP
//! ([`Resolver::serve_udp`]) and TCP ([`Resolver::serve_tcp`]).
//!
//! The resolver is the sandbox's only view of DNS, and it is also how the
//! firewall learns what to open: the sandbox may only connect to IPv4
//! addresses this resolver handed out for an allowed name. Hence:
//!
//! - the policy ([`DnsPolicy::policy`]) is read on every query, so a change
//!   applies to the next query at once;
//! - a name the policy does not allow gets NXDOMAIN (not REFUSED: glibc
//!   treats REFUSED as temporary and retries, NXDOMAIN fails fast);
//! - static hosts from the policy are answered locally (TTL 60, AA);
//! - A queries for allowed names are forwarded to the host's upstream
//!   resolvers, and every A record of the answer (CNAME chains included:
//!   the queried name was allowed) is reported to [`DnsPolicy::learned`]
//!   *before* the answer goes back to the sandbox, so the firewall is open
//!   by the time the sandbox tries to connect;
//! - AAAA, HTTPS, SVCB and ANY get an empty answer (NODATA): sandboxes are
//!   IPv4-only, and address hints in HTTPS/SVCB records must not bypass
//!   learning. Other types (MX, TXT, SRV, ...) are forwarded without
//!   learning: they carry no address the firewall would open.
//!
//! Upstream queries are built afresh (never the sandbox's bytes): a random
//! 16-bit id and a fresh ephemeral UDP socket per try, and only a response
//! with the same id and question is accepted. A truncated (TC) response is
//! redone over TCP to the same upstream. The upstream's answer is returned
//! byte for byte except for the id (and RD flag), which are the client's.
//!
//! A sandbox must not be able to hurt the daemon or other sandboxes by
//! flooding DNS, so each resolver has a token bucket (queries over the rate
//! are dropped silently and counted) and a bound on upstream queries in
//! flight (when none is free the answer is SERVFAIL at once, nothing
//! queues). The servers bound their tasks and connections too.
//!
//! Nothing here panics on any input: malformed messages get FORMERR (or
//! are dropped when they do not even carry a DNS header).

use anyhow::{anyhow, bail, Context};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use spinup_model::{NetMode, NetworkPolicy};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

/// Size of a DNS header; anything shorter is not DNS and is dropped.
const HEADER_LEN: usize = 12;
/// The classic UDP payload limit for clients without EDNS.
const UDP_MIN_PAYLOAD: usize = 512;
/// The EDNS payload size we advertise (upstream and to clients): the DNS
/// flag day 2020 recommendation, which avoids IP fragmentation.
const EDNS_PAYLOAD: u16 = 1232;
/// TTL of answers for the policy's static hosts.
const STATIC_TTL: u32 = 60;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP connections per resolver at once.
const MAX_TCP_CONNS: usize = 16;

/// What the resolver needs from the daemon for one sandbox.
#[async_trait::async_trait]
pub trait DnsPolicy: Send + Sync + 'static {
    /// The sandbox's current policy, read on every query (so a policy change applies at once).
    fn policy(&self) -> NetworkPolicy;
    /// Called with the IPv4 addresses about to be handed out for `name` (the queried name), BEFORE the answer is sent to the sandbox. `ttl` = the smallest TTL among them.
    async fn learned(&self, name: &str, addrs: &[Ipv4Addr], ttl: Duration);
}

/// Settings of one [`Resolver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// The upstream resolvers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Token bucket refill (queries per second); 0 disables the rate limit.
    pub queries_per_sec: u32,
    /// Token bucket size: how many queries may arrive at once.
    pub burst: u32,
    /// Upstream queries in flight at once; beyond that, SERVFAIL.
    pub max_inflight: usize,
    /// Time allowed for each upstream try (UDP, and again for a TCP retry).
    pub upstream_timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            upstreams: Vec::new(),
            queries_per_sec: 100,
            burst: 200,
            max_inflight: 64,
            upstream_timeout: Duration::from_secs(3),
        }
    }
}

impl ResolverConfig {
    /// nameserver lines of a resolv.conf (port 53); IPv6 ones too. Missing file or no nameserver → Err with a clear message.
    ///
    /// Other settings keep their defaults. An IPv6 zone (`fe80::1%eth0`) is
    /// kept as the scope id.
    pub fn from_resolv_conf(path: &Path) -> anyhow::Result<ResolverConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the host's resolver configuration {}", path.display()))?;
        let upstreams = parse_nameservers(&text);
        if upstreams.is_empty() {
            bail!(
                "{} has no usable `nameserver` line: the sandbox resolver has no upstream to forward to",
                path.display()
            );
        }
        Ok(ResolverConfig { upstreams, ..ResolverConfig::default() })
    }
}

/// The `nameserver` addresses of a resolv.conf text, as `addr:53`.
fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        // Comments start with '#' or ';' (anywhere on the line for glibc).
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        match parse_nameserver_addr(addr) {
            Some(sa) if !out.contains(&sa) => out.push(sa),
            Some(_) => {}
            None => warn!(addr, "ignoring unparseable nameserver in resolv.conf"),
        }
    }
    out
}

fn parse_nameserver_addr(addr: &str) -> Option<SocketAddr> {
    let (ip, zone) = match addr.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (addr, None),
    };
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(SocketAddr::new(IpAddr::V4(v4), 53)),
        IpAddr::V6(v6) => {
            let scope = match zone {
                None => 0,
                Some(z) => z.parse::<u32>().ok().or_else(|| if_index(z))?,
            };
            Some(SocketAddr::V6(SocketAddrV6::new(v6, 53, 0, scope)))
        }
    }
}

/// The index of the interface named `name`, if there is one.
fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// A token bucket: `rate` tokens per second, at most `capacity`.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate: u32, capacity: u32) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket { rate: f64::from(rate), capacity, state: Mutex::new((capacity, Instant::now())) }
    }

    /// Takes one token; false when the bucket is empty.
    fn take(&self) -> bool {
        if self.rate <= 0.0 {
            return true; // rate limit disabled
        }
        // A poisoned lock only means a panic elsewhere mid-update; the
        // numbers are still usable.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.rate).min(self.capacity);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which transport a query came in on (decides the reply size limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// One sandbox's resolver. Create with [`Resolver::new`], then run
/// [`Resolver::serve_udp`] and [`Resolver::serve_tcp`] as tasks; abort
/// them to stop.
pub struct Resolver {
    cfg: ResolverConfig,
    policy: Arc<dyn DnsPolicy>,
    bucket: TokenBucket,
    /// Permits for upstream queries in flight.
    inflight: Semaphore,
    answered: AtomicU64,
    rate_limited: AtomicU64,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("answered", &self.answered)
            .field("rate_limited", &self.rate_limited)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(cfg: ResolverConfig, policy: Arc<dyn DnsPolicy>) -> Arc<Resolver> {
        let bucket = TokenBucket::new(cfg.queries_per_sec, cfg.burst);
        let inflight = Semaphore::new(cfg.max_inflight.max(1));
        Arc::new(Resolver {
            cfg,
            policy,
            bucket,
            inflight,
            answered: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        })
    }

    /// Answer one DNS message (wire format). None = drop it (rate limited, or not even a DNS header).
    ///
    /// The reply is sized for UDP: at most 512 bytes, or the client's EDNS
    /// payload size; a larger answer becomes a truncated (TC) reply so the
    /// client retries over TCP.
    pub async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.handle(query, Transport::Udp).await
    }

    /// Like [`Resolver::answer`], for a query that came over TCP: no size
    /// limit on the reply beyond the 64 KiB of the length prefix.
    pub async fn answer_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.handle(query, Transport::Tcp).await
    }

    /// Serve UDP until the task is aborted. Each query handled in its own task (bounded by max_inflight); errors logged with tracing, never fatal.
    ///
    /// At most `2 × max_inflight` queries are handled at once (only half of
    /// them can wait on an upstream, the rest fail fast or are answered
    /// locally); beyond that the loop stops reading and the socket buffer
    /// absorbs (or the kernel drops) the excess. Aborting this task aborts
    /// the queries in progress too.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let slots = Arc::new(Semaphore::new(self.cfg.max_inflight.max(1).saturating_mul(2)));
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; 65535];
        loop {
            // Reap finished tasks so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "dns: udp receive failed");
                    // Avoid a hot loop on a persistent error.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let query = buf[..n].to_vec();
            let me = self.clone();
            let sock = sock.clone();
            tasks.spawn(async move {
                let _permit = permit;
                if let Some(reply) = me.handle(&query, Transport::Udp).await {
                    if let Err(e) = sock.send_to(&reply, peer).await {
                        debug!(%peer, error = %e, "dns: udp send failed");
                    }
                }
            });
        }
    }

    /// Serve DNS over TCP (2-byte length prefix, several queries per connection, 10 s idle timeout, at most 16 connections at once) until aborted.
    ///
    /// A connection beyond the 16th is closed at once. Queries on one
    /// connection are answered in order.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_TCP_CONNS));
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "dns: tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "dns: too many tcp connections, closing");
                drop(stream);
                continue;
            };
            let me = self.clone();
            conns.spawn(async move {
                let _permit = permit;
                if let Err(e) = me.serve_tcp_conn(stream).await {
                    debug!(%peer, error = %e, "dns: tcp connection ended");
                }
            });
        }
    }

    /// Counters for tests/metrics: queries answered, dropped by the rate limit.
    pub fn stats(&self) -> (u64, u64) {
        (self.answered.load(Ordering::Relaxed), self.rate_limited.load(Ordering::Relaxed))
    }

    /// One TCP connection: length-prefixed queries until EOF or idle.
    async fn serve_tcp_conn(&self, mut s: TcpStream) -> std::io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            match timeout(TCP_IDLE, s.read_exact(&mut len)).await {
                Err(_) => return Ok(()), // idle
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) => {}
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            timeout(TCP_IDLE, s.read_exact(&mut query)).await.map_err(|_| timed_out("reading a query"))??;
            // Rate limited (or not DNS): no reply, as over UDP.
            let Some(reply) = self.handle(&query, Transport::Tcp).await else { continue };
            let Ok(n) = u16::try_from(reply.len()) else {
                debug!(len = reply.len(), "dns: reply too large for tcp, dropped");
                continue;
            };
            let mut out = Vec::with_capacity(reply.len() + 2);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&reply);
            timeout(TCP_IDLE, s.write_all(&out)).await.map_err(|_| timed_out("writing a reply"))??;
        }
    }

    /// Rate limit, then answer; counts both outcomes.
    async fn handle(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if query.len() < HEADER_LEN {
            return None;
        }
        // The limit comes before any parsing, so a flood of garbage costs
        // as little as a flood of good queries.
        if !self.bucket.take() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let reply = self.respond(query, transport).await;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(reply)
    }

    /// The reply to a message of at least a header's length.
    async fn respond(&self, query: &[u8], transport: Transport) -> Vec<u8> {
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "dns: unparseable query, FORMERR");
                return header_reply(query, ResponseCode::FormErr);
            }
        };
        if msg.message_type() != MessageType::Query {
            return encode(&reply_to(&msg, ResponseCode::FormErr));
        }
        if msg.op_code() != OpCode::Query {
            return encode(&reply_to(&msg, ResponseCode::NotImp));
        }
        let [q] = msg.queries() else {
            return encode(&reply_to(&msg, ResponseCode::FormErr));
        };
        let reply = self.resolve(&msg, q).await;
        match transport {
            Transport::Tcp => reply,
            Transport::Udp => fit_udp(reply, &msg),
        }
    }

    /// The reply to a well-formed query with one question.
    async fn resolve(&self, msg: &Message, q: &Query) -> Vec<u8> {
        if q.query_class() != DNSClass::IN {
            return encode(&reply_to(msg, ResponseCode::Refused));
        }
        let qtype = q.query_type();
        // Names with odd bytes in a label (a literal '.', spaces, binary)
        // could match a policy rule after rendering while meaning
        // something else upstream: no real host name has them.
        let Some(name) = plain_name(q.name()) else {
            debug!(qname = %q.name(), "dns: odd query name, NXDOMAIN");
            return encode(&reply_to(msg, ResponseCode::NXDomain));
        };
        let policy = self.policy.policy();
        if policy.mode == NetMode::None || !policy.allows_domain(&name) {
            debug!(qname = %name, %qtype, "dns: name not allowed, NXDOMAIN");
            return encode(&reply_to(msg, ResponseCode::NXDomain));
        }
        if let Some(ip) = policy.static_host(&name) {
            let mut r = reply_to(msg, ResponseCode::NoError);
            r.set_authoritative(true);
            if qtype == RecordType::A {
                self.policy.learned(&name, &[ip], Duration::from_secs(STATIC_TTL.into())).await;
                r.add_answer(Record::from_rdata(q.name().clone(), STATIC_TTL, RData::A(ip.into())));
            }
            return encode(&r);
        }
        match qtype {
            // IPv4-only sandboxes; HTTPS/SVCB address hints and ANY would
            // hand out addresses without going through learning.
            RecordType::AAAA | RecordType::HTTPS | RecordType::SVCB | RecordType::ANY => {
                encode(&reply_to(msg, ResponseCode::NoError))
            }
            // Zone transfers are not a stub resolver's business.
            RecordType::AXFR | RecordType::IXFR => encode(&reply_to(msg, ResponseCode::NotImp)),
            RecordType::A => self.forward(msg, q, &name, true).await,
            _ => self.forward(msg, q, &name, false).await,
        }
    }

    /// Forwards `q` to the upstreams in order; learns the A records of the
    /// answer when `learn`. SERVFAIL when none answers usefully.
    async fn forward(&self, msg: &Message, q: &Query, name: &str, learn: bool) -> Vec<u8> {
        let Ok(_permit) = self.inflight.try_acquire() else {
            warn!(qname = name, "dns: too many upstream queries in flight, SERVFAIL");
            return encode(&reply_to(msg, ResponseCode::ServFail));
        };
        if self.cfg.upstreams.is_empty() {
            warn!(qname = name, "dns: no upstream resolver configured, SERVFAIL");
        }
        for &upstream in &self.cfg.upstreams {
            let (resp, mut raw) = match self.exchange(upstream, msg, q).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(%upstream, qname = name, error = %e, "dns: upstream failed");
                    continue;
                }
            };
            let rcode = resp.response_code();
            if matches!(
                rcode,
                ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp | ResponseCode::FormErr
            ) {
                debug!(%upstream, qname = name, %rcode, "dns: upstream could not answer, trying the next");
                continue;
            }
            if learn {
                let (addrs, ttl) = a_records(&resp);
                if !addrs.is_empty() {
                    self.policy.learned(name, &addrs, Duration::from_secs(ttl.into())).await;
                }
            }
            // Back to the client's id and RD flag; the rest is the
            // upstream's answer as sent.
            raw[..2].copy_from_slice(&msg.id().to_be_bytes());
            raw[2] = (raw[2] & !0x01) | u8::from(msg.recursion_desired());
            return raw;
        }
        encode(&reply_to(msg, ResponseCode::ServFail))
    }

    /// One upstream try: UDP, then TCP if the UDP answer was truncated.
    /// Returns the parsed response and its bytes.
    async fn exchange(&self, upstream: SocketAddr, msg: &Message, q: &Query) -> anyhow::Result<(Message, Vec<u8>)> {
        let t = self.cfg.upstream_timeout;
        let (resp, raw) = timeout(t, exchange_udp(upstream, msg, q))
            .await
            .map_err(|_| anyhow!("no answer over udp within {t:?}"))??;
        if !resp.truncated() {
            return Ok((resp, raw));
        }
        debug!(%upstream, qname = %q.name(), "dns: truncated answer, retrying over tcp");
        timeout(t, exchange_tcp(upstream, msg, q)).await.map_err(|_| anyhow!("no answer over tcp within {t:?}"))?
    }
}

/// Asks `upstream` over UDP from a fresh ephemeral socket; waits for a
/// response with our id and question (others are ignored).
async fn exchange_udp(upstream: SocketAddr, msg: &Message, q: &Query) -> anyhow::Result<(Message, Vec<u8>)> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.context("binding an upstream socket")?;
    // Connected: the kernel drops datagrams from any other source.
    sock.connect(upstream).await.context("connecting to the upstream")?;
    let id = random_id();
    sock.send(&upstream_query(msg, q, id)?).await.context("sending to the upstream")?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.context("receiving from the upstream")?;
        if let Some(resp) = matching_response(&buf[..n], id, q) {
            buf.truncate(n);
            return Ok((resp, buf));
        }
        debug!(%upstream, "dns: ignoring a mismatched upstream datagram");
    }
}

/// Asks `upstream` over TCP (a fresh connection and id).
async fn exchange_tcp(upstream: SocketAddr, msg: &Message, q: &Query) -> anyhow::Result<(Message, Vec<u8>)> {
    let mut s = TcpStream::connect(upstream).await.context("connecting to the upstream over tcp")?;
    let id = random_id();
    let wire = upstream_query(msg, q, id)?;
    let len = u16::try_from(wire.len()).context("query too large")?;
    let mut out = Vec::with_capacity(wire.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&wire);
    s.write_all(&out).await.context("writing to the upstream")?;
    loop {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.context("reading from the upstream")?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.context("reading from the upstream")?;
        if let Some(resp) = matching_response(&buf, id, q) {
            return Ok((resp, buf));
        }
        debug!(%upstream, "dns: ignoring a mismatched upstream tcp message");
    }
}

/// The query sent upstream: built afresh from the client's question, with
/// our id; EDNS (and its DO bit) only when the client used EDNS.
fn upstream_query(client: &Message, q: &Query, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_checking_disabled(client.checking_disabled());
    m.add_query(q.clone());
    if let Some(e) = client.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload().clamp(UDP_MIN_PAYLOAD as u16, EDNS_PAYLOAD))
            .set_version(0)
            .set_dnssec_ok(e.dnssec_ok());
        m.set_edns(edns);
    }
    m.to_vec().map_err(|e| anyhow!("encoding the upstream query: {e}"))
}

/// `bytes` parsed, if it is a response with `id` to exactly `q`.
fn matching_response(bytes: &[u8], id: u16, q: &Query) -> Option<Message> {
    if bytes.len() < HEADER_LEN || u16::from_be_bytes([bytes[0], bytes[1]]) != id {
        return None;
    }
    let resp = Message::from_vec(bytes).ok()?;
    // Query equality compares the name case-insensitively, type and class.
    (resp.message_type() == MessageType::Response && resp.queries() == std::slice::from_ref(q)).then_some(resp)
}

/// Every IN A record of the answer section (in order, without repeats) and
/// the smallest TTL among them.
fn a_records(resp: &Message) -> (Vec<Ipv4Addr>, u32) {
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for r in resp.answers() {
        if r.dns_class() != DNSClass::IN {
            continue;
        }
        if let Some(RData::A(a)) = r.data() {
            ttl = ttl.min(r.ttl());
            if !addrs.contains(&a.0) {
                addrs.push(a.0);
            }
        }
    }
    let ttl = if addrs.is_empty() { 0 } else { ttl };
    (addrs, ttl)
}

/// The lower-case dotted form of `name` (no trailing dot, "" for the
/// root), or None if a label holds anything but letters, digits, '-' and
/// '_'.
fn plain_name(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.iter() {
        if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        // Checked above: ASCII only.
        out.extend(label.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    }
    Some(out)
}

/// A reply to `q` with `rcode` and no records: the question echoed, RA
/// set, and an OPT record when the query had one.
fn reply_to(q: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(q.checking_disabled())
        .set_response_code(rcode);
    // Echo the question only when it is the single one we understood.
    if q.queries().len() == 1 {
        m.add_queries(q.queries().iter().cloned());
    }
    if q.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        m.set_edns(edns);
    }
    m
}

/// `m` in wire format; a bare SERVFAIL header should encoding ever fail.
fn encode(m: &Message) -> Vec<u8> {
    match m.to_vec() {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "dns: encoding a reply failed, SERVFAIL");
            let mut h = [0u8; HEADER_LEN];
            h[..2].copy_from_slice(&m.id().to_be_bytes());
            h[2] = u8::from(m.op_code()) << 3 & 0x78 | u8::from(m.recursion_desired());
            header_reply(&h, ResponseCode::ServFail)
        }
    }
}

/// A header-only reply built by hand from the raw header of `query` (which
/// may not parse): same id, opcode and RD, QR and RA set, `rcode`.
fn header_reply(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut r = vec![0u8; HEADER_LEN];
    r[0] = query[0];
    r[1] = query[1];
    r[2] = 0x80 | (query[2] & 0x78) | (query[2] & 0x01);
    r[3] = 0x80 | (u16::from(rcode) as u8 & 0x0f);
    r
}

/// Keeps a UDP reply within what the client can take: 512 bytes, or its
/// EDNS payload size. A larger reply becomes the question alone with TC
/// set, and the client retries over TCP.
fn fit_udp(reply: Vec<u8>, q: &Message) -> Vec<u8> {
    let limit = match q.extensions() {
        Some(e) => usize::from(e.max_payload()).max(UDP_MIN_PAYLOAD),
        None => UDP_MIN_PAYLOAD,
    };
    if reply.len() <= limit {
        return reply;
    }
    // Keep the rcode (and AA) of the full reply.
    let mut t = reply_to(q, ResponseCode::from(0, reply[3] & 0x0f));
    t.set_authoritative(reply[2] & 0x04 != 0).set_truncated(true);
    encode(&t)
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// A random 16-bit id for an upstream query (from the kernel's CSPRNG, or
/// a randomly keyed SipHash of the time and a counter should that fail).
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 2 {
        return u16::from_ne_bytes(b);
    }
    use std::hash::{BuildHasher, Hash, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    type Learned = (String, Vec<Ipv4Addr>, Duration);

    /// A policy behind a mutex that records what was learned.
    #[derive(Default)]
    struct TestPolicy {
        policy: Mutex<NetworkPolicy>,
        learned: Mutex<Vec<Learned>>,
    }

    impl TestPolicy {
        fn new(policy: NetworkPolicy) -> Arc<Self> {
            Arc::new(TestPolicy { policy: Mutex::new(policy), learned: Mutex::default() })
        }
        fn set(&self, p: NetworkPolicy) {
            *self.policy.lock().unwrap() = p;
        }
        fn learned(&self) -> Vec<Learned> {
            self.learned.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl DnsPolicy for TestPolicy {
        fn policy(&self) -> NetworkPolicy {
            self.policy.lock().unwrap().clone()
        }
        async fn learned(&self, name: &str, addrs: &[Ipv4Addr], ttl: Duration) {
            self.learned.lock().unwrap().push((name.to_string(), addrs.to_vec(), ttl));
        }
    }

    fn allow(names: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            mode: NetMode::Allow,
            allow: names.iter().map(|s| s.to_string()).collect(),
            hosts: BTreeMap::new(),
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// The fake upstream's answer to `req` (None: stay silent).
    fn upstream_answer(req: &Message, over_tcp: bool) -> Option<Message> {
        let q = req.queries().first()?.clone();
        let mut r = Message::new();
        r.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true);
        r.add_query(q.clone());
        let qn = q.name().to_ascii().to_ascii_lowercase();
        let a = |n: &str, ttl: u32, ip: [u8; 4]| Record::from_rdata(name(n), ttl, RData::A(Ipv4Addr::from(ip).into()));
        match (qn.as_str(), q.query_type()) {
            ("a.example.", RecordType::A) => {
                r.add_answer(a(q.name().to_ascii().as_str(), 300, [192, 0, 2, 7]));
                r.add_answer(a(q.name().to_ascii().as_str(), 300, [198, 51, 100, 9]));
            }
            ("c.example.", RecordType::A) => {
                r.add_answer(Record::from_rdata(
                    q.name().clone(),
                    120,
                    RData::CNAME(hickory_proto::rr::rdata::CNAME(name("t.example."))),
                ));
                r.add_answer(a("t.example.", 200, [192, 0, 2, 8]));
            }
            ("a.example." | "c.example.", _) => {}
            // Over UDP: truncated, no records; over TCP: 40 A records.
            ("big.example.", RecordType::A) => {
                if over_tcp {
                    for i in 0..40u8 {
                        r.add_answer(a("big.example.", 30 + u32::from(i), [203, 0, 113, i]));
                    }
                } else {
                    r.set_truncated(true);
                }
            }
            ("mx.example.", RecordType::MX) => {
                r.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::MX(hickory_proto::rr::rdata::MX::new(10, name("mail.example."))),
                ));
            }
            _ => {
                r.set_response_code(ResponseCode::NXDomain);
            }
        }
        Some(r)
    }

    /// A fake upstream on 127.0.0.1 (UDP and TCP on one port); counts the
    /// queries it gets.
    struct FakeUpstream {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for FakeUpstream {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    async fn fake_upstream() -> FakeUpstream {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).await.unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let t1 = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let Ok(req) = Message::from_vec(&buf[..n]) else { continue };
                if let Some(r) = upstream_answer(&req, false) {
                    let _ = udp.send_to(&r.to_vec().unwrap(), peer).await;
                }
            }
        });
        let h = hits.clone();
        let t2 = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else { continue };
                let h = h.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).await.is_ok() {
                        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        let Ok(req) = Message::from_vec(&buf) else { return };
                        let Some(r) = upstream_answer(&req, true) else { return };
                        let out = r.to_vec().unwrap();
                        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&out);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, hits, tasks: vec![t1, t2] }
    }

    fn cfg(upstreams: Vec<SocketAddr>) -> ResolverConfig {
        ResolverConfig { upstreams, upstream_timeout: Duration::from_millis(300), ..ResolverConfig::default() }
    }

    fn query(id: u16, n: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
        m.add_query(Query::query(name(n), t));
        m.to_vec().unwrap()
    }

    async fn ask(r: &Resolver, id: u16, n: &str, t: RecordType) -> Message {
        let reply = r.answer(&query(id, n, t)).await.expect("a reply");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.id(), id);
        assert_eq!(m.message_type(), MessageType::Response);
        m
    }

    fn a_addrs(m: &Message) -> Vec<Ipv4Addr> {
        a_records(m).0
    }

    /// An address where nothing answers: a bound socket nobody reads.
    async fn black_hole() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    #[tokio::test]
    async fn dns_allowed_name_is_forwarded_and_learned() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let m = ask(&r, 0x1234, "A.Example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        let want = vec![Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(198, 51, 100, 9)];
        assert_eq!(a_addrs(&m), want);
        assert_eq!(m.queries()[0].name().to_ascii(), "A.Example.", "question case preserved");
        assert_eq!(pol.learned(), vec![("a.example".to_string(), want, Duration::from_secs(300))]);
        assert_eq!(r.stats(), (1, 0));
    }

    #[tokio::test]
    async fn dns_disallowed_and_none_mode_get_nxdomain() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let m = ask(&r, 1, "b.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        // Subdomains need a wildcard rule.
        let m = ask(&r, 2, "x.a.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);

        pol.set(NetworkPolicy { mode: NetMode::None, allow: vec!["a.example".into()], hosts: BTreeMap::new() });
        let m = ask(&r, 3, "a.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.answers().is_empty());

        assert!(pol.learned().is_empty());
        assert_eq!(up.hits.load(Ordering::SeqCst), 0, "nothing forwarded");
    }

    #[tokio::test]
    async fn dns_open_mode_allows_any_name() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(NetworkPolicy::open());
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let m = ask(&r, 7, "a.example.", RecordType::A).await;
        assert_eq!(a_addrs(&m).len(), 2);
        // Unknown to the upstream: its NXDOMAIN is passed through.
        let m = ask(&r, 8, "whatever.test.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(up.hits.load(Ordering::SeqCst), 2);
        assert_eq!(pol.learned().len(), 1);
    }

    #[tokio::test]
    async fn dns_static_host_answered_locally() {
        // Nothing listens there: the static answer must not need it.
        let (_hole, dead) = black_hole().await;
        let mut p = allow(&["db.internal"]);
        p.hosts.insert("db.internal".into(), Ipv4Addr::new(10, 9, 8, 7));
        let pol = TestPolicy::new(p);
        let r = Resolver::new(cfg(vec![dead]), pol.clone());
        let t0 = Instant::now();
        let m = ask(&r, 9, "DB.internal.", RecordType::A).await;
        assert!(t0.elapsed() < Duration::from_millis(200));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && m.recursion_available());
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].ttl(), 60);
        assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(10, 9, 8, 7)]);
        assert_eq!(
            pol.learned(),
            vec![("db.internal".to_string(), vec![Ipv4Addr::new(10, 9, 8, 7)], Duration::from_secs(60))]
        );
        // Other types: NODATA.
        let m = ask(&r, 10, "db.internal.", RecordType::MX).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());

        // A static host outside the allowed names is still refused.
        let mut p = allow(&[]);
        p.hosts.insert("db.internal".into(), Ipv4Addr::new(10, 9, 8, 7));
        pol.set(p);
        let m = ask(&r, 11, "db.internal.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn dns_aaaa_https_svcb_any_get_nodata() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        for t in [RecordType::AAAA, RecordType::HTTPS, RecordType::SVCB, RecordType::ANY] {
            let m = ask(&r, 12, "a.example.", t).await;
            assert_eq!(m.response_code(), ResponseCode::NoError, "{t}");
            assert!(m.answers().is_empty(), "{t}");
        }
        assert_eq!(up.hits.load(Ordering::SeqCst), 0);
        assert!(pol.learned().is_empty());
    }

    #[tokio::test]
    async fn dns_other_types_forwarded_without_learning() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["mx.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let m = ask(&r, 13, "mx.example.", RecordType::MX).await;
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].record_type(), RecordType::MX);
        assert!(pol.learned().is_empty());
        // Non-IN class: REFUSED.
        let mut q = Message::new();
        q.set_id(14).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
        let mut qq = Query::query(name("mx.example."), RecordType::TXT);
        qq.set_query_class(DNSClass::CH);
        q.add_query(qq);
        let reply = r.answer(&q.to_vec().unwrap()).await.unwrap();
        assert_eq!(Message::from_vec(&reply).unwrap().response_code(), ResponseCode::Refused);
    }

    #[tokio::test]
    async fn dns_cname_chain_learned() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["*.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let m = ask(&r, 15, "c.example.", RecordType::A).await;
        assert_eq!(m.answers().len(), 2);
        assert_eq!(
            pol.learned(),
            vec![("c.example".to_string(), vec![Ipv4Addr::new(192, 0, 2, 8)], Duration::from_secs(200))]
        );
    }

    #[tokio::test]
    async fn dns_policy_change_applies_at_once() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        assert_eq!(ask(&r, 16, "a.example.", RecordType::A).await.response_code(), ResponseCode::NoError);
        pol.set(allow(&["c.example"]));
        assert_eq!(ask(&r, 17, "a.example.", RecordType::A).await.response_code(), ResponseCode::NXDomain);
        assert_eq!(ask(&r, 18, "c.example.", RecordType::A).await.response_code(), ResponseCode::NoError);
        assert_eq!(pol.learned().len(), 2);
    }

    #[tokio::test]
    async fn dns_rate_limit_drops_floods() {
        let pol = TestPolicy::new(NetworkPolicy::default());
        let c = ResolverConfig { burst: 5, queries_per_sec: 1, ..cfg(vec![]) };
        let r = Resolver::new(c, pol);
        let mut answered = 0;
        for i in 0..20 {
            if r.answer(&query(i, "x.example.", RecordType::A)).await.is_some() {
                answered += 1;
            }
        }
        assert!((5..=6).contains(&answered), "answered {answered}");
        let (ok, dropped) = r.stats();
        assert_eq!(ok, answered);
        assert_eq!(dropped, 20 - answered);
    }

    #[tokio::test]
    async fn dns_garbage_never_panics() {
        let pol = TestPolicy::new(NetworkPolicy::open());
        let c = ResolverConfig { burst: 100_000, ..cfg(vec![]) };
        let r = Resolver::new(c, pol);
        assert!(r.answer(b"").await.is_none());
        assert!(r.answer(b"hello").await.is_none());
        // A header and then junk: FORMERR with the same id.
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0xff; 20]);
        let reply = r.answer(&junk).await.unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[2] & 0x80, 0x80, "QR");
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
        // A response instead of a query: FORMERR; an UPDATE: NOTIMP; two
        // questions: FORMERR.
        let mut m = Message::new();
        m.set_id(5).set_message_type(MessageType::Response).add_query(Query::query(name("a.example."), RecordType::A));
        let rep = Message::from_vec(&r.answer(&m.to_vec().unwrap()).await.unwrap()).unwrap();
        assert_eq!(rep.response_code(), ResponseCode::FormErr);
        m.set_message_type(MessageType::Query).set_op_code(OpCode::Update);
        let rep = Message::from_vec(&r.answer(&m.to_vec().unwrap()).await.unwrap()).unwrap();
        assert_eq!(rep.response_code(), ResponseCode::NotImp);
        m.set_op_code(OpCode::Query).add_query(Query::query(name("b.example."), RecordType::A));
        let rep = Message::from_vec(&r.answer(&m.to_vec().unwrap()).await.unwrap()).unwrap();
        assert_eq!(rep.response_code(), ResponseCode::FormErr);
        // A label with a literal dot inside: NXDOMAIN even in open mode.
        let mut raw = query(6, "zz.example.", RecordType::A);
        raw[14] = b'.'; // the 2nd byte of the first label ("zz" → "z.")
        let rep = Message::from_vec(&r.answer(&raw).await.unwrap()).unwrap();
        assert_eq!(rep.response_code(), ResponseCode::NXDomain);
        // Pseudo-random junk (a fixed LCG), with and without a valid start.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let valid = query(7, "a.example.", RecordType::A);
        for i in 0..3000 {
            let len = (i % 80) as usize;
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            if i % 2 == 0 && len >= 12 {
                let k = len.min(valid.len());
                buf[..k / 2].copy_from_slice(&valid[..k / 2]);
            }
            if let Some(rep) = r.answer(&buf).await {
                assert!(rep.len() >= HEADER_LEN);
                assert_eq!(&rep[..2], &buf[..2]);
            }
        }
    }

    #[tokio::test]
    async fn dns_unreachable_upstream_servfails() {
        let (_h1, dead1) = black_hole().await;
        let (_h2, dead2) = black_hole().await;
        let pol = TestPolicy::new(NetworkPolicy::open());
        let r = Resolver::new(cfg(vec![dead1, dead2]), pol.clone());
        let t0 = Instant::now();
        let m = ask(&r, 19, "a.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(pol.learned().is_empty());
        // No upstream at all: SERVFAIL at once.
        let r = Resolver::new(cfg(vec![]), pol);
        assert_eq!(ask(&r, 20, "a.example.", RecordType::A).await.response_code(), ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn dns_inflight_bound_servfails_at_once() {
        let (_h, dead) = black_hole().await;
        let pol = TestPolicy::new(NetworkPolicy::open());
        let c = ResolverConfig { max_inflight: 1, upstream_timeout: Duration::from_secs(2), ..cfg(vec![dead]) };
        let r = Resolver::new(c, pol);
        let r2 = r.clone();
        let slow = tokio::spawn(async move { r2.answer(&query(24, "a.example.", RecordType::A)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        let m = ask(&r, 25, "b.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
        slow.abort();
    }

    #[tokio::test]
    async fn dns_falls_over_to_next_upstream() {
        let (_h, dead) = black_hole().await;
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example"]));
        let r = Resolver::new(cfg(vec![dead, up.addr]), pol.clone());
        let m = ask(&r, 21, "a.example.", RecordType::A).await;
        assert_eq!(a_addrs(&m).len(), 2);
        assert_eq!(pol.learned().len(), 1);
    }

    #[tokio::test]
    async fn dns_truncated_upstream_answer_retried_over_tcp() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["big.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        // Over UDP without EDNS: 40 records do not fit in 512 bytes, so
        // the client gets TC (the addresses are learned all the same).
        let m = ask(&r, 22, "big.example.", RecordType::A).await;
        assert!(m.truncated());
        assert!(m.answers().is_empty());
        let l = pol.learned();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].1.len(), 40);
        assert_eq!(l[0].2, Duration::from_secs(30));
        // Over TCP: the whole answer.
        let reply = r.answer_tcp(&query(23, "big.example.", RecordType::A)).await.unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 40);
        assert_eq!(m.id(), 23);
    }

    #[tokio::test]
    async fn dns_serve_udp_end_to_end() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let server = tokio::spawn(r.clone().serve_udp(sock));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        for (id, n, rcode) in [(30, "a.example.", ResponseCode::NoError), (31, "b.example.", ResponseCode::NXDomain)] {
            client.send(&query(id, n, RecordType::A)).await.unwrap();
            let len = timeout(Duration::from_secs(3), client.recv(&mut buf)).await.unwrap().unwrap();
            let m = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(m.id(), id);
            assert_eq!(m.response_code(), rcode);
        }
        assert_eq!(pol.learned().len(), 1);
        assert_eq!(r.stats(), (2, 0));
        server.abort();
    }

    #[tokio::test]
    async fn dns_serve_tcp_end_to_end() {
        let up = fake_upstream().await;
        let pol = TestPolicy::new(allow(&["a.example", "c.example"]));
        let r = Resolver::new(cfg(vec![up.addr]), pol.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(r.clone().serve_tcp(listener));

        let mut s = TcpStream::connect(addr).await.unwrap();
        // Two queries on one connection.
        for (id, n, count) in [(40u16, "a.example.", 2usize), (41, "c.example.", 2)] {
            let q = query(id, n, RecordType::A);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed).await.unwrap();
            let mut len = [0u8; 2];
            timeout(Duration::from_secs(3), s.read_exact(&mut len)).await.unwrap().unwrap();
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).await.unwrap();
            let m = Message::from_vec(&buf).unwrap();
            assert_eq!(m.id(), id);
            assert_eq!(m.answers().len(), count);
        }
        assert_eq!(pol.learned().len(), 2);
        server.abort();
    }

    #[test]
    fn dns_resolv_conf_parsing() {
        let dir = std::env::temp_dir().join(format!("spinup-dns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("resolv.conf");
        std::fs::write(
            &p,
            "# comment\nsearch lan\nnameserver 10.0.0.1\nnameserver  2001:db8::53 # v6\n;nameserver 9.9.9.9\nnameserver bogus\nnameserver fe80::1%7\noptions edns0\n",
        )
        .unwrap();
        let c = ResolverConfig::from_resolv_conf(&p).unwrap();
        assert_eq!(
            c.upstreams,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 7)),
            ]
        );
        assert_eq!(c.burst, 200);
        std::fs::write(&p, "search lan\n").unwrap();
        let e = ResolverConfig::from_resolv_conf(&p).unwrap_err().to_string();
        assert!(e.contains("nameserver"), "{e}");
        let e = ResolverConfig::from_resolv_conf(&dir.join("missing")).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The upstream half of the resolver, for the fuzz target in `fuzz/` (built
/// only under cargo-fuzz): what it makes of `bytes` as an upstream's reply
/// to `example.com A` (id taken from `bytes`), and that reply fitted to a
/// UDP client that sent no EDNS.
#[cfg(fuzzing)]
pub fn fuzz_upstream_reply(bytes: &[u8]) -> Option<(Vec<Ipv4Addr>, u32, Vec<u8>)> {
    let q = Query::query(Name::from_ascii("example.com.").ok()?, RecordType::A);
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    let resp = matching_response(bytes, id, &q)?;
    let (addrs, ttl) = a_records(&resp);
    let mut client = Message::new();
    client.set_id(id).add_query(q);
    let fitted = fit_udp(bytes.to_vec(), &client);
    Some((addrs, ttl, fitted))
}
