//! The egress proxy's parsers, fed what a guest sends: a connection's
//! first bytes (a TLS ClientHello or an HTTP request head), then an HTTP
//! request's target and Host headers. The input is those parts joined by
//! `\n--\n`; the contracts are checked inside `fuzz_parsers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"\n--\n";

fuzz_target!(|data: &[u8]| {
    let mut parts = vec![];
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest);
    let first = parts[0];
    let target = parts.get(1).and_then(|t| std::str::from_utf8(t).ok()).unwrap_or("/");
    let hosts = parts.get(2..).unwrap_or_default();
    spinup_net::proxy::fuzz_parsers(first, target, hosts);
});
