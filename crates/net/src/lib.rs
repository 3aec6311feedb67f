//! Sandbox networking, host side. The daemon gives each sandbox a network
//! namespace and a veth (or tap) and then:
//! - [`dns`]: answers the sandbox's DNS queries itself, only for allowed
//!   names, and reports the addresses it hands out so they open for that
//!   sandbox only;
//! - [`proxy`]: takes the sandbox's TCP 80/443 (transparently, via DNAT),
//!   checks HTTP Host / TLS SNI against the policy, and swaps secret
//!   placeholders for their values for the hosts listed with a secret,
//!   terminating TLS with the sandbox's own CA ([`ca`]) and re-encrypting
//!   to the real host with full verification.

pub mod ca;
pub mod dns;
pub mod proxy;
