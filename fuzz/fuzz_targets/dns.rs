//! The sandbox's DNS resolver, given what a guest can send it (any bytes,
//! over UDP and TCP) and what an upstream can answer. It never panics, a
//! reply to a UDP query fits in 512 bytes or the client's EDNS size, and
//! nothing goes upstream for a name the policy does not allow (there is no
//! upstream here: a query that reached one would SERVFAIL, not NXDOMAIN).
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spinup_model::{NetMode, NetworkPolicy};
use spinup_net::dns::{DnsPolicy, Resolver, ResolverConfig};

#[derive(Debug)]
struct Policy(NetworkPolicy);

#[async_trait::async_trait]
impl DnsPolicy for Policy {
    fn policy(&self) -> NetworkPolicy {
        self.0.clone()
    }
    async fn learned(&self, name: &str, addrs: &[Ipv4Addr], _ttl: Duration) {
        assert!(self.0.allows_domain(name), "learned {addrs:?} for {name}, which the policy refuses");
    }
}

fn resolver() -> &'static (tokio::runtime::Runtime, Arc<Resolver>) {
    static R: OnceLock<(tokio::runtime::Runtime, Arc<Resolver>)> = OnceLock::new();
    R.get_or_init(|| {
        let policy = NetworkPolicy {
            mode: NetMode::Allow,
            allow: vec!["example.com".into(), "*.example.org".into()],
            hosts: [("db.example.com".to_string(), Ipv4Addr::new(10, 0, 0, 7))].into(),
        };
        // No rate limit, no upstream.
        let cfg = ResolverConfig { queries_per_sec: 0, ..Default::default() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (rt, Resolver::new(cfg, Arc::new(Policy(policy))))
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, r) = resolver();
    if let Some(reply) = rt.block_on(r.answer(data)) {
        // 512 bytes, or at most the 1232 the resolver offers with EDNS.
        assert!(reply.len() <= 1232, "a {}-byte UDP reply", reply.len());
        assert!(reply.len() >= 12, "a reply without a header");
        assert_eq!(reply[..2], data[..2], "the reply's id is not the query's");
    }
    let _ = rt.block_on(r.answer_tcp(data));
    let _ = spinup_net::dns::fuzz_upstream_reply(data);
});
