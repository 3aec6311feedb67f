//! Per-sandbox networks: a network namespace per sandbox joined to the
//! host by a veth, NAT and policy in one nftables table per daemon, and a
//! resolver and egress proxy per sandbox on its gateway address.
//!
//! ```text
//!  sandbox netns                host                                 outside
//!  eth0 10.P.x.2 ──veth── spP v<i> 10.P.x.1 ── forward: sb_<i> chain ── masquerade ──▶
//!   (VMs: tap0 ─ br0 ─ eth0)     :53  resolver (only allowed names; the
//!                                     addresses it hands out open for <i>)
//!                                :15001 proxy (80/443 DNAT'd here when the
//!                                     policy or a proxy secret needs it)
//! ```
//!
//! Every packet a sandbox sends is judged by its chain, not only the first
//! of a connection, so a policy change cuts existing connections at once
//! (TCP gets a reset). The forbidden set (the host, other sandboxes,
//! link-local/metadata, the host's private networks unless listed as a CIDR)
//! comes first in every mode. Addresses learned from DNS never open a
//! private range (no DNS rebinding into the host's networks).

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use spinup_host::HostTools;
use spinup_model::network::{domain_matches, DomainRule};
use spinup_model::{Cidr, Error, GuestNet, NetMode, NetSlot, NetworkPolicy, Result};
use spinup_net::ca::SandboxCa;
use spinup_net::dns::{DnsPolicy, Resolver, ResolverConfig};
use spinup_net::proxy::{EgressPolicy, Proxy, ProxyConfig};
use zeroize::Zeroizing;

/// The egress proxy's port on each sandbox's gateway address.
pub const PROXY_PORT: u16 = 15001;
/// The first /16 tried for a daemon's address pool (10.P.0.0/16).
const POOL_FIRST: u8 = 213;
const POOL_LAST: u8 = 250;
/// /30s in a /16.
const POOL_SLOTS: u32 = 16_384;

/// `[network]` in the config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// The mode sandboxes get when a request names none: `none` (default).
    pub default_mode: Option<NetMode>,
    /// Second octet of the daemon's 10.P.0.0/16 pool; default: the first
    /// free one from 213, kept in `<data>/net-pool` across restarts.
    pub pool: Option<u8>,
    /// Extra PEM files the egress proxy trusts upstream (besides the
    /// system's bundle), e.g. an internal CA.
    pub upstream_ca: Vec<PathBuf>,
    /// Concurrent connections per sandbox (default 512).
    pub max_connections: Option<u32>,
    /// New connections per second per sandbox (default 200, burst 2x).
    pub new_connections_per_sec: Option<u32>,
    /// DNS queries per second per sandbox (default 100, burst 2x).
    pub dns_queries_per_sec: Option<u32>,
}

/// What the sandbox is wired as (drivers choose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    /// The guest runs in the netns: `eth0` there is addressed by the host.
    Veth,
    /// A VM: `eth0` in the netns is bridged to `tap0`; the guest addresses
    /// its own NIC.
    Tap,
}

/// A proxy-mode secret as the proxy holds it.
pub struct ProxySecret {
    pub placeholder: String,
    pub value: Zeroizing<String>,
    pub hosts: Vec<DomainRule>,
}

/// Never the value.
impl std::fmt::Debug for ProxySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySecret")
            .field("placeholder", &self.placeholder)
            .field("value", &"<redacted>")
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// One sandbox's live network state.
pub struct SandboxNet {
    id: String,
    slot: NetSlot,
    policy: RwLock<NetworkPolicy>,
    /// Addresses the resolver handed out: address → (name, expiry).
    learned: Mutex<HashMap<Ipv4Addr, (String, Instant)>>,
    secrets: RwLock<Vec<ProxySecret>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    proxy: Mutex<Option<Arc<Proxy>>>,
    shared: Arc<Shared>,
}

/// Its secrets by count only.
impl std::fmt::Debug for SandboxNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxNet")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .field("policy", &self.policy)
            .field("learned", &self.learned.lock().map(|l| l.len()).unwrap_or_default())
            .field("secrets", &self.secrets.read().map(|s| s.len()).unwrap_or_default())
            .finish_non_exhaustive()
    }
}

/// What every sandbox's policy checks against, and how its chain changes.
struct Shared {
    table: String,
    forbidden: Vec<Cidr>,
    private: Vec<Cidr>,
    host: Arc<dyn HostTools>,
}

impl Shared {
    fn forbidden(&self, ip: Ipv4Addr) -> bool {
        self.forbidden.iter().any(|c| c.contains(ip))
    }
    fn private(&self, ip: Ipv4Addr) -> bool {
        self.private.iter().any(|c| c.contains(ip))
    }
}

pub struct Network {
    pub pool: u8,
    table: String,
    prefix: String,
    cfg: NetConfig,
    data_dir: PathBuf,
    shared: Arc<Shared>,
    resolver_cfg: ResolverConfig,
    roots: Arc<rustls::RootCertStore>,
    used: Mutex<BTreeSet<u32>>,
    live: Mutex<HashMap<String, Arc<SandboxNet>>>,
    /// What a proxy terminates TLS with until its sandbox has proxy-mode
    /// secrets (it intercepts nothing before that, so this never signs).
    idle_ca: Arc<SandboxCa>,
    /// Links, namespaces and nftables.
    host: Arc<dyn HostTools>,
    /// Held for the daemon's life (none in unit tests).
    _pool_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("pool", &self.pool)
            .field("table", &self.table)
            .field("prefix", &self.prefix)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The host's own addresses, and the networks of its uplinks (the
/// interfaces its default routes leave by: its LAN).
async fn host_networks(host: &dyn HostTools) -> (Vec<Cidr>, Vec<Cidr>) {
    let addresses = host.ipv4_addresses().await;
    let uplinks = host.default_route_links().await;
    let mut own = vec![];
    let mut nets = vec![];
    for a in addresses {
        own.push(Cidr { addr: a.addr, prefix: 32 });
        if uplinks.contains(&a.link) {
            let c = Cidr { addr: a.addr, prefix: a.prefix };
            nets.push(Cidr { addr: c.network(), prefix: c.prefix });
        }
    }
    (own, nets)
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).expect("constant CIDR")
}

/// The forbidden and private sets of pool `pool` on a host with addresses
/// `own` whose uplinks are on `on_link`.
fn address_sets(pool: u8, own: Vec<Cidr>, on_link: Vec<Cidr>) -> (Vec<Cidr>, Vec<Cidr>) {
    // Always forbidden: the host, every sandbox pool, link-local and
    // metadata, loopback, "this network", multicast and reserved.
    let mut forbidden = own;
    forbidden.extend(["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "255.255.255.255/32"].map(cidr));
    forbidden.push(Cidr { addr: Ipv4Addr::new(10, pool, 0, 0), prefix: 16 });
    // Private unless listed: RFC 1918, shared address space, and the
    // networks the host is on.
    let mut private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"].map(cidr).to_vec();
    private.extend(on_link);
    (forbidden, private)
}

/// Slot `idx` of pool 10.`pool`.0.0/16: a /30 (gateway .1, sandbox .2)
/// whose host link is `<link_prefix><idx>`.
fn slot_in(pool: u8, link_prefix: &str, idx: u32) -> NetSlot {
    let base = u32::from(Ipv4Addr::new(10, pool, 0, 0)) + idx * 4;
    NetSlot {
        index: idx,
        host_if: format!("{link_prefix}{idx}"),
        gateway: Ipv4Addr::from(base + 1),
        address: Ipv4Addr::from(base + 2),
        prefix: 30,
    }
}

impl Network {
    /// Set up the daemon's table and pool on `host`. `live`: the slots of
    /// sandboxes the store still has (their objects are kept; others are
    /// removed).
    pub async fn create(
        data_dir: &Path,
        cfg: NetConfig,
        live: &[NetSlot],
        host: Arc<dyn HostTools>,
    ) -> anyhow::Result<Network> {
        use anyhow::Context;
        for tool in ["ip", "nft"] {
            if host.which(tool).is_none() {
                anyhow::bail!(
                    "{tool} not found: sandbox networking needs iproute2 and nftables (scripts/install-deps.sh)"
                );
            }
        }
        host.enable_ipv4_forwarding().await.context("enabling IPv4 forwarding")?;
        let (own, on_link) = host_networks(&*host).await;
        let (pool, lock) = claim_pool(data_dir, cfg.pool, &own)?;
        let roots = spinup_net::proxy::load_roots(Path::new("/etc/ssl/certs/ca-certificates.crt"), &cfg.upstream_ca)
            .context("loading the egress proxy's trusted roots ([network] upstream_ca)")?;
        let net = Network::assemble(data_dir, cfg, live, pool, Some(lock), (own, on_link), roots, host)?;
        net.install_base(live).await.context("installing the nftables table")?;
        Ok(net)
    }

    /// The network of pool `pool` on a host with addresses `own` whose
    /// uplinks are on `on_link` (nothing made on the host yet).
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of a network, each from a different source; a struct would only rename them"
    )]
    fn assemble(
        data_dir: &Path,
        cfg: NetConfig,
        live: &[NetSlot],
        pool: u8,
        lock: Option<nix::fcntl::Flock<std::fs::File>>,
        (own, on_link): (Vec<Cidr>, Vec<Cidr>),
        roots: rustls::RootCertStore,
        host: Arc<dyn HostTools>,
    ) -> anyhow::Result<Network> {
        let table = format!("spinup_{pool}");
        let prefix = format!("sp{pool}v");
        let (forbidden, private) = address_sets(pool, own, on_link);
        let resolver_cfg = ResolverConfig {
            queries_per_sec: cfg.dns_queries_per_sec.unwrap_or(100),
            burst: cfg.dns_queries_per_sec.unwrap_or(100) * 2,
            ..ResolverConfig::from_resolv_conf(Path::new("/etc/resolv.conf")).unwrap_or_default()
        };
        let shared = Arc::new(Shared { table: table.clone(), forbidden, private, host: host.clone() });
        Ok(Network {
            pool,
            table,
            prefix,
            cfg,
            data_dir: data_dir.to_path_buf(),
            shared,
            resolver_cfg,
            roots: Arc::new(roots),
            used: Mutex::new(live.iter().map(|s| s.index).collect()),
            live: Default::default(),
            idle_ca: Arc::new(SandboxCa::generate("Spinup idle proxy CA (never used to sign)")?),
            host,
            _pool_lock: lock,
        })
    }

    pub fn default_mode(&self) -> NetMode {
        self.cfg.default_mode.unwrap_or(NetMode::None)
    }

    /// The base table: sets, maps and hook chains (rebuilt), keeping each
    /// live sandbox's chain and learned addresses; removing the rest.
    async fn install_base(&self, live: &[NetSlot]) -> Result<()> {
        let t = &self.table;
        let p = &self.prefix;
        let live_idx: BTreeSet<u32> = live.iter().map(|s| s.index).collect();
        // Objects of sandboxes that are gone.
        let _ = self.host.nft(&format!("add table inet {t}")).await;
        let (stale_chains, stale_sets) = match self.host.nft_list_table(t).await {
            Ok(json) => stale_objects(t, &json, &live_idx),
            Err(_) => Default::default(),
        };
        let r = base_script(t, p, &self.shared.forbidden, &self.shared.private, &stale_chains, &stale_sets, live);
        if let Err(e) = self.host.nft(&r).await {
            // Whatever state the table is in, start it over: running
            // sandboxes get their chains back when they are re-attached
            // (their learned addresses are lost; they resolve again).
            tracing::warn!("rebuilding the nftables table {t}: {e}");
            let _ = self.host.nft(&format!("delete table inet {t}")).await;
            let r = r.replace(&stale_chains, "").replace(&stale_sets, "");
            self.host.nft(&r).await?;
        }
        Ok(())
    }

    /// A slot for a new sandbox.
    pub fn allocate(&self) -> Result<NetSlot> {
        let mut used = self.used.lock().unwrap();
        // /30 per sandbox: .0 network, .1 gateway (host), .2 guest.
        let idx = (0..POOL_SLOTS)
            .find(|i| !used.contains(i))
            .ok_or_else(|| Error::Unavailable("the address pool is full (16384 sandboxes); remove some".into()))?;
        used.insert(idx);
        Ok(self.slot_at(idx))
    }

    /// The slot with index `idx` (its names and addresses follow from it).
    fn slot_at(&self, idx: u32) -> NetSlot {
        slot_in(self.pool, &self.prefix, idx)
    }

    pub fn netns_name(id: &str) -> String {
        format!("spinup-{id}")
    }

    pub fn guest(&self, id: &str, slot: &NetSlot) -> GuestNet {
        let i = slot.index;
        GuestNet {
            netns: PathBuf::from("/run/netns").join(Self::netns_name(id)),
            address: slot.address,
            prefix: slot.prefix,
            gateway: slot.gateway,
            dns: slot.gateway,
            mac: format!("02:5e:{:02x}:{:02x}:{:02x}:{:02x}", self.pool, (i >> 16) as u8, (i >> 8) as u8, i as u8),
        }
    }

    /// Make the namespace, the veth (and bridge + tap for VMs), the
    /// sandbox's chain, and start its resolver and proxy.
    pub async fn setup(&self, id: &str, slot: &NetSlot, kind: NetKind, policy: &NetworkPolicy) -> Result<()> {
        let t0 = Instant::now();
        let ns = Self::netns_name(id);
        // Leftovers of a killed daemon only: checking is cheaper than `ip`.
        if self.host.link_exists(&slot.host_if).await {
            let _ = self.host.link_del(&slot.host_if).await;
        }
        if self.host.netns_exists(&ns).await {
            let _ = self.host.netns_del(&ns).await;
        }
        // Recorded before anything is made, so that `gc` can find a
        // namespace whose sandbox the store lost.
        self.record(id, slot)?;
        // The chain names the interface, not its index: write it while the
        // links are made.
        let sn = self.attach_live(id, slot, policy.clone());
        let chain = {
            let (sn, this) = (sn.clone(), self.chain_writer());
            tokio::spawn(async move { this.write_chain(&sn, true).await })
        };
        self.host
            .ip_batch(
                None,
                &format!(
                "netns add {ns}\nlink add {h} type veth peer name eth0 netns {ns}\naddr add {g}/{p} dev {h}\nlink set {h} up\n",
                h = slot.host_if,
                g = slot.gateway,
                p = slot.prefix
            ),
            )
            .await?;
        let inside = match kind {
            NetKind::Veth => format!(
                "link set lo up\naddr add {a}/{p} dev eth0\nlink set eth0 up\nroute add default via {g}\n",
                a = slot.address,
                p = slot.prefix,
                g = slot.gateway
            ),
            NetKind::Tap => "link set lo up\nlink add br0 type bridge\nlink set eth0 master br0\ntuntap add dev tap0 mode tap\nlink set tap0 master br0\nlink set eth0 up\nlink set tap0 up\nlink set br0 up\n".to_string(),
        };
        self.host.ip_batch(Some(&ns), &inside).await?;
        let t_links = t0.elapsed();
        chain.await.map_err(|e| Error::internal("nftables task", e))??;
        let t_chain = t0.elapsed();
        self.start(&sn).await?;
        tracing::debug!(
            id,
            links_ms = t_links.as_millis() as u64,
            chain_ms = t_chain.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "network ready"
        );
        Ok(())
    }

    fn attach_live(&self, id: &str, slot: &NetSlot, policy: NetworkPolicy) -> Arc<SandboxNet> {
        let sn = Arc::new(SandboxNet {
            id: id.to_string(),
            slot: slot.clone(),
            policy: RwLock::new(policy),
            learned: Default::default(),
            secrets: Default::default(),
            tasks: Default::default(),
            proxy: Default::default(),
            shared: self.shared.clone(),
        });
        if let Some(old) = self.live.lock().unwrap().insert(id.to_string(), sn.clone()) {
            old.stop();
        }
        sn
    }

    /// After a daemon restart: the namespace and veth are still there;
    /// rebuild the chain and start the resolver and proxy again.
    pub async fn reattach(&self, id: &str, slot: &NetSlot, policy: &NetworkPolicy) -> Result<()> {
        let sn = self.attach_live(id, slot, policy.clone());
        self.write_chain(&sn, true).await?;
        self.start(&sn).await
    }

    /// The per-sandbox CA (made on first use, kept 0600 in the data dir).
    fn ca(&self, id: &str) -> Result<Arc<SandboxCa>> {
        let ca = self.load_or_make_ca(id)?;
        let sn = self.live.lock().unwrap().get(id).cloned();
        if let Some(p) = sn.and_then(|sn| sn.proxy.lock().unwrap().clone()) {
            p.set_ca(&ca);
        }
        Ok(ca)
    }

    fn load_or_make_ca(&self, id: &str) -> Result<Arc<SandboxCa>> {
        let dir = self.data_dir.join("net").join(id);
        let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
        if let (Ok(cert), Ok(key)) = (std::fs::read_to_string(&c), std::fs::read_to_string(&k)) {
            return SandboxCa::from_pem(&cert, &key).map(Arc::new).map_err(|e| Error::internal("sandbox CA", e));
        }
        let ca = SandboxCa::generate(&format!("Spinup sandbox {id} egress CA"))
            .map_err(|e| Error::internal("sandbox CA", e))?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal("net dir", e))?;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let _ = std::fs::set_permissions(self.data_dir.join("net"), std::fs::Permissions::from_mode(0o700));
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&k)
            .and_then(|mut f| std::io::Write::write_all(&mut f, ca.key_pem().as_bytes()))
            .map_err(|e| Error::internal("writing the sandbox CA key", e))?;
        std::fs::write(&c, ca.cert_pem()).map_err(|e| Error::internal("writing the sandbox CA", e))?;
        Ok(Arc::new(ca))
    }

    /// The CA certificate the sandbox must trust for proxy-mode secrets.
    pub fn ca_cert(&self, id: &str) -> Result<String> {
        Ok(self.ca(id)?.cert_pem().to_string())
    }

    /// The proxy's upstream roots for a sandbox starting now: the system's
    /// and `[network] upstream_ca`, plus any PEM file dropped into
    /// `<data>/net/upstream-ca.d/` (read at each sandbox start).
    fn roots_now(&self) -> Arc<rustls::RootCertStore> {
        let dir = self.data_dir.join("net/upstream-ca.d");
        let extra: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pem" || e == "crt"))
            .collect();
        if extra.is_empty() {
            return self.roots.clone();
        }
        let mut files = self.cfg.upstream_ca.clone();
        files.extend(extra);
        match spinup_net::proxy::load_roots(Path::new("/etc/ssl/certs/ca-certificates.crt"), &files) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!("{}: {e:#}", dir.display());
                self.roots.clone()
            }
        }
    }

    async fn start(&self, sn: &Arc<SandboxNet>) -> Result<()> {
        let gw = sn.slot.gateway;
        let resolver = Resolver::new(self.resolver_cfg.clone(), sn.clone());
        let udp = tokio::net::UdpSocket::bind((gw, 53))
            .await
            .map_err(|e| Error::internal(format!("binding the sandbox's resolver on {gw}:53"), e))?;
        let tcp = tokio::net::TcpListener::bind((gw, 53))
            .await
            .map_err(|e| Error::internal(format!("binding the sandbox's resolver on {gw}:53/tcp"), e))?;
        let pl = tokio::net::TcpListener::bind((gw, PROXY_PORT))
            .await
            .map_err(|e| Error::internal(format!("binding the sandbox's proxy on {gw}:{PROXY_PORT}"), e))?;
        let proxy = Proxy::new(
            ProxyConfig {
                upstream_roots: self.roots_now(),
                max_conns: self.cfg.max_connections.unwrap_or(512) as usize / 2,
                peek_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
            },
            // Its own CA if it has one already (a restart), else made when
            // it first gets a proxy-mode secret.
            match self.data_dir.join("net").join(&sn.id).join("ca.pem").exists() {
                true => self.load_or_make_ca(&sn.id)?,
                false => self.idle_ca.clone(),
            },
            sn.clone(),
        );
        *sn.proxy.lock().unwrap() = Some(proxy.clone());
        let mut t = sn.tasks.lock().unwrap();
        t.push(tokio::spawn(resolver.clone().serve_udp(udp)));
        t.push(tokio::spawn(resolver.serve_tcp(tcp)));
        t.push(tokio::spawn(proxy.serve(pl)));
        Ok(())
    }

    fn chain_writer(&self) -> ChainWriter {
        ChainWriter {
            table: self.table.clone(),
            max_connections: self.cfg.max_connections.unwrap_or(512),
            new_per_sec: self.cfg.new_connections_per_sec.unwrap_or(200),
        }
    }

    async fn write_chain(&self, sn: &SandboxNet, fresh: bool) -> Result<()> {
        self.chain_writer().write_chain(sn, fresh).await
    }

    /// Apply a new policy to a running sandbox at once: its chain is
    /// rewritten, learned addresses no longer allowed are dropped, and
    /// proxied connections to what is now forbidden are cut.
    pub async fn set_policy(&self, id: &str, policy: &NetworkPolicy) -> Result<()> {
        let sn = self.live.lock().unwrap().get(id).cloned();
        let Some(sn) = sn else { return Ok(()) };
        *sn.policy.write().unwrap() = policy.clone();
        self.write_chain(&sn, false).await?;
        if let Some(p) = sn.proxy.lock().unwrap().clone() {
            p.recheck();
        }
        // Conntrack entries of the sandbox's NATed flows: every packet is
        // judged again anyway, so nothing else to cut.
        Ok(())
    }

    /// The proxy-mode secrets of a running sandbox (80/443 go through its
    /// proxy while it has any).
    pub async fn set_proxy_secrets(&self, id: &str, secrets: Vec<ProxySecret>) -> Result<()> {
        let sn = self.live.lock().unwrap().get(id).cloned();
        let Some(sn) = sn else { return Ok(()) };
        let had = !sn.secrets.read().unwrap().is_empty();
        let has = !secrets.is_empty();
        *sn.secrets.write().unwrap() = secrets;
        if had != has {
            self.write_chain(&sn, false).await?;
        }
        Ok(())
    }

    /// `<data>/net/<id>/slot.json`: which slot sandbox `id` has (0700
    /// dir). It goes last, with the CA, in `teardown`.
    fn record(&self, id: &str, slot: &NetSlot) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.data_dir.join("net").join(id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal("net dir", e))?;
        let _ = std::fs::set_permissions(self.data_dir.join("net"), std::fs::Permissions::from_mode(0o700));
        let body = serde_json::to_vec(slot).map_err(|e| Error::internal("slot record", e))?;
        std::fs::write(dir.join("slot.json"), body).map_err(|e| Error::internal("writing the slot record", e))
    }

    /// The sandboxes this daemon made networks for (`<data>/net/<id>`),
    /// with the slot each recorded.
    pub fn traces(&self) -> Vec<(String, Option<NetSlot>)> {
        let dir = self.data_dir.join("net");
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_str()?.to_string();
                spinup_model::validate_id(&id).ok()?;
                let slot = std::fs::read(e.path().join("slot.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
                Some((id, slot))
            })
            .collect()
    }

    /// Remove the network of a sandbox the store does not have; what was
    /// there, in words. Its slot's objects go only when no live sandbox
    /// has been given that slot since.
    pub async fn remove_orphan(&self, id: &str, slot: Option<&NetSlot>) -> Vec<String> {
        let ns = Self::netns_name(id);
        let mut what = vec![];
        if self.host.netns_exists(&ns).await {
            what.push(format!("network namespace {ns}"));
        }
        // Taken for the teardown (which frees it), so no create gets it
        // meanwhile. Names come from the index, never from the file.
        let reserved = slot
            .filter(|s| s.index < POOL_SLOTS)
            .map(|s| self.slot_at(s.index))
            .filter(|s| self.used.lock().unwrap().insert(s.index));
        match reserved {
            Some(slot) => {
                if self.host.link_exists(&slot.host_if).await {
                    what.push(format!("link {}", slot.host_if));
                }
                what.push(format!("nftables objects of slot {}", slot.index));
                self.teardown(id, &slot).await;
            }
            None => {
                let _ = self.host.netns_del(&ns).await;
                let _ = std::fs::remove_dir_all(self.data_dir.join("net").join(id));
            }
        }
        what.push(format!("network record of sandbox {id}"));
        what
    }

    /// Links of this daemon's pool and nftables chains and sets of slots
    /// no sandbox holds (`used`: the store's and those of creates in flight).
    pub async fn sweep(&self) -> (Vec<String>, Vec<String>) {
        let used = self.used.lock().unwrap().clone();
        let mut stale: BTreeSet<u32> = BTreeSet::new();
        let (mut removed, mut failed) = (vec![], vec![]);
        let mut namespaces = vec![];
        for n in self.host.links().await {
            if let Some(i) = n.strip_prefix(&self.prefix).and_then(|i| i.parse::<u32>().ok()) {
                if !used.contains(&i) && i < POOL_SLOTS {
                    stale.insert(i);
                    removed.push(format!("link {n}"));
                    // The namespace at its other end is a sandbox's of ours
                    // too, even with no record of it.
                    namespaces.extend(self.host.link_peer_netns(&n).await.filter(|ns| ns.starts_with("spinup-")));
                }
            }
        }
        for ns in namespaces {
            match self.host.netns_del(&ns).await {
                Ok(()) => removed.push(format!("network namespace {ns}")),
                Err(e) => failed.push(format!("network namespace {ns}: {e}")),
            }
        }
        if let Ok(json) = self.host.nft_list_table(&self.table).await {
            for (kind, name, i) in slot_objects(&json) {
                if !used.contains(&i) && i < POOL_SLOTS {
                    stale.insert(i);
                    removed.push(format!("nftables {kind} {name}"));
                }
            }
        }
        for i in stale {
            let slot = self.slot_at(i);
            self.remove_slot_objects(&slot).await;
            let _ = self.host.link_del(&slot.host_if).await;
            if self.host.link_exists(&slot.host_if).await {
                failed.push(format!("link {}{i}", self.prefix));
            }
        }
        (removed, failed)
    }

    /// nftables commands removing a slot's objects: references first (map
    /// elements, then the chains' rules), then the objects.
    fn slot_steps(&self, slot: &NetSlot) -> Vec<String> {
        slot_steps(&self.table, slot)
    }

    /// A slot's nftables objects: one transaction when everything is
    /// there; else one per step, so what is already gone fails alone.
    async fn remove_slot_objects(&self, slot: &NetSlot) {
        let steps = self.slot_steps(slot);
        if self.host.nft(&steps.join("\n")).await.is_err() {
            for cmd in &steps {
                let _ = self.host.nft(cmd).await;
            }
        }
    }

    /// Remove everything: tasks, chain and sets, veth, namespace, CA.
    pub async fn teardown(&self, id: &str, slot: &NetSlot) {
        let sn = self.live.lock().unwrap().remove(id);
        if let Some(sn) = sn {
            sn.stop();
        }
        let (i, h) = (slot.index, &slot.host_if);
        self.remove_slot_objects(slot).await;
        let _ = self.host.link_del(h).await;
        let _ = self.host.netns_del(&Self::netns_name(id)).await;
        let _ = std::fs::remove_dir_all(self.data_dir.join("net").join(id));
        self.used.lock().unwrap().remove(&i);
    }

    /// Forget a slot that was allocated but never set up.
    pub fn release(&self, slot: &NetSlot) {
        self.used.lock().unwrap().remove(&slot.index);
    }
}

/// The per-slot chains and sets (`sb_`, `rd_`, `explicit_`, `dyn_` + the
/// slot's index) in `nft -j list table` output: (kind, name, index).
fn slot_objects(json: &[u8]) -> Vec<(&'static str, String, u32)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else { return vec![] };
    let mut out = vec![];
    for o in v["nftables"].as_array().into_iter().flatten() {
        for (kind, obj) in [("chain", &o["chain"]), ("set", &o["set"])] {
            let Some(name) = obj["name"].as_str() else { continue };
            let idx = name.split_once('_').and_then(|(k, i)| {
                ["sb", "rd", "explicit", "dyn"].contains(&k).then(|| i.parse::<u32>().ok()).flatten()
            });
            if let Some(i) = idx {
                out.push((kind, name.to_string(), i));
            }
        }
    }
    out
}

/// nftables commands removing a slot's objects from table `t`: references
/// first (map elements, then the chains' rules), then the objects.
fn slot_steps(t: &str, slot: &NetSlot) -> Vec<String> {
    let (i, h) = (slot.index, &slot.host_if);
    vec![
        format!("delete element inet {t} egress {{ \"{h}\" }}"),
        format!("delete element inet {t} proxied {{ \"{h}\" }}"),
        format!("delete element inet {t} gw {{ \"{h}\" . {} }}", slot.gateway),
        format!("flush chain inet {t} sb_{i}"),
        format!("flush chain inet {t} rd_{i}"),
        format!("delete chain inet {t} sb_{i}"),
        format!("delete chain inet {t} rd_{i}"),
        format!("delete set inet {t} explicit_{i}"),
        format!("delete set inet {t} dyn_{i}"),
    ]
}

/// The command opening `ip` for `ttl` to the sandbox of slot `index`.
fn open_command(t: &str, index: u32, ip: Ipv4Addr, ttl: Duration) -> String {
    format!("add element inet {t} dyn_{index} {{ {ip} timeout {}s }}", ttl.as_secs().clamp(60, 86_400))
}

/// Commands removing the per-slot objects in `json` (`nft -j list table`)
/// of slots not in `live`: (chains, sets).
fn stale_objects(t: &str, json: &[u8], live: &BTreeSet<u32>) -> (String, String) {
    let (mut stale_chains, mut stale_sets) = (String::new(), String::new());
    for (kind, name, i) in slot_objects(json) {
        if !live.contains(&i) {
            // A chain goes empty first; sets after the chains that
            // name them (below).
            if kind == "chain" {
                stale_chains.push_str(&format!("flush chain inet {t} {name}\ndelete chain inet {t} {name}\n"));
            } else {
                stale_sets.push_str(&format!("delete set inet {t} {name}\n"));
            }
        }
    }
    (stale_chains, stale_sets)
}

/// The base table's script: sets, maps and hook chains (rebuilt), the
/// stale objects' removal, and each live sandbox's chain and map elements.
fn base_script(
    t: &str,
    p: &str,
    forbidden: &[Cidr],
    private: &[Cidr],
    stale_chains: &str,
    stale_sets: &str,
    live: &[NetSlot],
) -> String {
    let sets = |c: &[Cidr]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ");
    let mut r = format!(
        "add table inet {t}
add set inet {t} forbidden {{ type ipv4_addr; flags interval; auto-merge; }}
flush set inet {t} forbidden
add element inet {t} forbidden {{ {forbidden} }}
add set inet {t} private {{ type ipv4_addr; flags interval; auto-merge; }}
flush set inet {t} private
add element inet {t} private {{ {private} }}
add set inet {t} gw {{ type ifname . ipv4_addr; }}
add map inet {t} egress {{ type ifname : verdict; }}
add map inet {t} proxied {{ type ifname : verdict; }}
add chain inet {t} forward {{ type filter hook forward priority filter - 5; policy accept; }}
add chain inet {t} input {{ type filter hook input priority filter - 5; policy accept; }}
add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {t} forward
flush chain inet {t} input
flush chain inet {t} prerouting
flush chain inet {t} postrouting
flush map inet {t} egress
flush map inet {t} proxied
flush set inet {t} gw
{stale_chains}{stale_sets}add chain inet {t} refuse
flush chain inet {t} refuse
add rule inet {t} refuse meta l4proto tcp reject with tcp reset
add rule inet {t} refuse reject with icmpx admin-prohibited
add rule inet {t} forward iifname \"{p}*\" iifname vmap @egress
add rule inet {t} forward iifname \"{p}*\" jump refuse
add rule inet {t} forward oifname \"{p}*\" ct state established,related accept
add rule inet {t} forward oifname \"{p}*\" jump refuse
add rule inet {t} input iifname \"{p}*\" iifname . ip daddr @gw udp dport 53 accept
add rule inet {t} input iifname \"{p}*\" iifname . ip daddr @gw tcp dport {{ 53, {PROXY_PORT} }} accept
add rule inet {t} input iifname \"{p}*\" ct state established,related accept
add rule inet {t} input iifname \"{p}*\" jump refuse
add rule inet {t} prerouting iifname \"{p}*\" iifname vmap @proxied
add rule inet {t} postrouting iifname \"{p}*\" oifname != \"{p}*\" masquerade
",
        forbidden = sets(forbidden),
        private = sets(private),
    );
    for s in live {
        // The chain may not exist yet (a daemon killed mid-create): an
        // empty one refuses everything (the forward chain's next rule).
        r.push_str(&format!(
            "add chain inet {t} sb_{i}\nadd element inet {t} gw {{ \"{h}\" . {g} }}\nadd element inet {t} egress {{ \"{h}\" : jump sb_{i} }}\n",
            i = s.index,
            h = s.host_if,
            g = s.gateway
        ));
    }
    r
}

/// Writes one sandbox's chain (owned, so it can run on a task of its own).
#[derive(Debug, Clone)]
struct ChainWriter {
    table: String,
    max_connections: u32,
    new_per_sec: u32,
}

impl ChainWriter {
    /// Write the sandbox's chain for its current policy (atomically).
    async fn write_chain(&self, sn: &SandboxNet, fresh: bool) -> Result<()> {
        let policy = sn.policy.read().unwrap().clone();
        let has_secrets = !sn.secrets.read().unwrap().is_empty();
        let learned = sn.learned.lock().unwrap().clone();
        let script = self.chain_script(&sn.slot, &policy, has_secrets, &learned, fresh, Instant::now());
        sn.shared.host.nft(&script).await
    }

    /// The script writing a sandbox's chain for `policy` (`learned`: the
    /// addresses its resolver handed out, as of `now`).
    fn chain_script(
        &self,
        slot: &NetSlot,
        policy: &NetworkPolicy,
        has_secrets: bool,
        learned: &HashMap<Ipv4Addr, (String, Instant)>,
        fresh: bool,
        now: Instant,
    ) -> String {
        let t = &self.table;
        let i = slot.index;
        let h = &slot.host_if;
        let proxied = policy.mode == NetMode::Allow || (policy.mode == NetMode::Open && has_secrets);
        let maxc = self.max_connections;
        let rate = self.new_per_sec;
        let mut r = format!(
            "add set inet {t} explicit_{i} {{ type ipv4_addr; flags interval; auto-merge; }}
add set inet {t} dyn_{i} {{ type ipv4_addr; flags timeout; }}
add chain inet {t} sb_{i}
add chain inet {t} rd_{i}
flush set inet {t} explicit_{i}
flush chain inet {t} sb_{i}
flush chain inet {t} rd_{i}
add rule inet {t} sb_{i} meta nfproto ipv6 jump refuse
add rule inet {t} sb_{i} ct state new ct count over {maxc} jump refuse
add rule inet {t} sb_{i} ct state new limit rate over {rate}/second burst {burst} packets jump refuse
add rule inet {t} sb_{i} ip daddr @forbidden jump refuse
",
            burst = rate * 2
        );
        if fresh {
            r.push_str(&format!("flush set inet {t} dyn_{i}\n"));
        }
        let cidrs = policy.cidrs();
        if !cidrs.is_empty() && policy.mode != NetMode::None {
            let list: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
            r.push_str(&format!("add element inet {t} explicit_{i} {{ {} }}\n", list.join(", ")));
        }
        match policy.mode {
            NetMode::None => {}
            NetMode::Open => r.push_str(&format!(
                "add rule inet {t} sb_{i} ip daddr @explicit_{i} accept\nadd rule inet {t} sb_{i} ip daddr @private jump refuse\nadd rule inet {t} sb_{i} accept\n"
            )),
            NetMode::Allow => r.push_str(&format!(
                "add rule inet {t} sb_{i} ip daddr @explicit_{i} accept\nadd rule inet {t} sb_{i} ip daddr @private jump refuse\nadd rule inet {t} sb_{i} ip daddr @dyn_{i} accept\n"
            )),
        }
        r.push_str(&format!("add rule inet {t} sb_{i} jump refuse\n"));
        r.push_str(&format!(
            "add rule inet {t} rd_{i} ip daddr != @forbidden tcp dport {{ 80, 443 }} dnat ip to {}:{PROXY_PORT}\n",
            slot.gateway
        ));
        // Map elements: add is idempotent; delete the proxied one first.
        r.push_str(&format!(
            "add element inet {t} gw {{ \"{h}\" . {} }}\nadd element inet {t} egress {{ \"{h}\" : jump sb_{i} }}\nadd element inet {t} proxied {{ \"{h}\" : jump rd_{i} }}\ndelete element inet {t} proxied {{ \"{h}\" }}\n",
            slot.gateway
        ));
        if proxied {
            r.push_str(&format!("add element inet {t} proxied {{ \"{h}\" : jump rd_{i} }}\n"));
        }
        // Keep learned addresses that the new policy still allows.
        if !fresh && policy.mode == NetMode::Allow {
            // In address order (a set: the order is only for reading).
            let mut keep: Vec<(&Ipv4Addr, &(String, Instant))> = learned.iter().collect();
            keep.sort_by_key(|(ip, _)| **ip);
            let keep: Vec<String> = keep
                .into_iter()
                .filter(|(_, (name, exp))| *exp > now && policy.allows_domain(name))
                .map(|(ip, (_, exp))| format!("{ip} timeout {}s", exp.duration_since(now).as_secs().max(1)))
                .collect();
            r.push_str(&format!("flush set inet {t} dyn_{i}\n"));
            if !keep.is_empty() {
                r.push_str(&format!("add element inet {t} dyn_{i} {{ {} }}\n", keep.join(", ")));
            }
        } else if !fresh {
            r.push_str(&format!("flush set inet {t} dyn_{i}\n"));
        }
        r
    }
}

/// Take the daemon's /16: the configured one, the one it had, or the first
/// free one; held with a lock file for the daemon's life so two daemons on
/// one host never share a pool.
/// `own`: the host's addresses (a pool must not hold one).
fn claim_pool(
    data_dir: &Path,
    want: Option<u8>,
    own: &[Cidr],
) -> anyhow::Result<(u8, nix::fcntl::Flock<std::fs::File>)> {
    use nix::fcntl::{Flock, FlockArg};
    let dir = Path::new("/run/spinup/pools");
    std::fs::create_dir_all(dir)?;
    let file = data_dir.join("net-pool");
    let had: Option<u8> = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok());
    let try_lock = |p: u8| -> Option<Flock<std::fs::File>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("10.{p}")))
            .ok()?;
        Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()
    };
    let fixed = want.or(had);
    let (p, l) = match fixed {
        Some(p) => match try_lock(p) {
            Some(l) => (p, l),
            None => anyhow::bail!("address pool 10.{p}.0.0/16 is in use by another spinup daemon on this host; set [network] pool to another second octet"),
        },
        None => {
            (POOL_FIRST..=POOL_LAST)
                .filter(|p| !own.iter().any(|c| Cidr { addr: Ipv4Addr::new(10, *p, 0, 0), prefix: 16 }.contains(c.addr)))
                .find_map(|p| try_lock(p).map(|l| (p, l)))
                .ok_or_else(|| anyhow::anyhow!("no free address pool in 10.{POOL_FIRST}-{POOL_LAST}.0.0/16 on this host"))?
        }
    };
    std::fs::write(&file, p.to_string())?;
    Ok((p, l))
}

impl SandboxNet {
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Open `ip` for this sandbox (the resolver is about to hand it out).
    async fn open(&self, ip: Ipv4Addr, ttl: Duration) {
        let t = &self.shared.table;
        let cmd = open_command(t, self.slot.index, ip, ttl);
        // Before the resolver answers: the sandbox may connect as soon as
        // it has the answer.
        if let Err(e) = self.shared.host.nft(&cmd).await {
            tracing::warn!(id = %self.id, "opening {ip}: {e}");
        }
    }
}

#[async_trait::async_trait]
impl DnsPolicy for SandboxNet {
    fn policy(&self) -> NetworkPolicy {
        self.policy.read().unwrap().clone()
    }

    async fn learned(&self, name: &str, addrs: &[Ipv4Addr], ttl: Duration) {
        let ttl = ttl.clamp(Duration::from_secs(60), Duration::from_secs(86_400));
        let exp = Instant::now() + ttl;
        for ip in addrs {
            // Never opened through DNS: the forbidden set and private
            // ranges (list a CIDR to reach those).
            if self.shared.forbidden(*ip) || self.shared.private(*ip) {
                continue;
            }
            let fresh = {
                let mut l = self.learned.lock().unwrap();
                let prev = l.insert(*ip, (spinup_model::network::normalize_domain(name), exp));
                prev.is_none_or(|(_, e)| e < exp - Duration::from_secs(30))
            };
            if fresh && self.policy.read().unwrap().mode == NetMode::Allow {
                self.open(*ip, ttl).await;
            }
        }
    }
}

impl EgressPolicy for SandboxNet {
    fn allow(&self, dst: SocketAddrV4, name: Option<&str>) -> bool {
        let ip = *dst.ip();
        let p = self.policy.read().unwrap();
        if p.mode == NetMode::None || self.shared.forbidden(ip) {
            return false;
        }
        if p.allows_ip_explicitly(ip) {
            return true;
        }
        if self.shared.private(ip) {
            return false;
        }
        match p.mode {
            NetMode::Open => true,
            // The name must be allowed and the address one the resolver
            // handed out (for any allowed name): an allowed IP with another
            // name (domain fronting) or a name at an unlisted IP fails.
            NetMode::Allow => {
                let Some(n) = name else { return false };
                p.allows_domain(n)
                    && self.learned.lock().unwrap().get(&ip).is_some_and(|(_, exp)| *exp > Instant::now())
            }
            NetMode::None => false,
        }
    }

    fn secrets_for(&self, host: &str) -> Vec<(String, Zeroizing<String>)> {
        self.secrets
            .read()
            .unwrap()
            .iter()
            .filter(|s| domain_matches(&s.hosts, host))
            .map(|s| (s.placeholder.clone(), s.value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compare `actual` with `tests/golden/<name>`; `UPDATE_GOLDEN=1`
    /// rewrites the file instead.
    fn golden(name: &str, actual: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert!(
            want == actual,
            "{} differs from the generated rules (UPDATE_GOLDEN=1 rewrites it)\n--- want\n{want}\n--- got\n{actual}",
            path.display()
        );
    }

    const POOL: u8 = 213;
    const TABLE: &str = "spinup_213";
    const PREFIX: &str = "sp213v";

    /// Slot `i` of pool 213, as `Network::slot_at` makes it.
    fn slot(i: u32) -> NetSlot {
        slot_in(POOL, PREFIX, i)
    }

    fn writer() -> ChainWriter {
        ChainWriter { table: TABLE.into(), max_connections: 512, new_per_sec: 200 }
    }

    fn policy(mode: NetMode, allow: &[&str]) -> NetworkPolicy {
        NetworkPolicy { mode, allow: allow.iter().map(|s| s.to_string()).collect(), hosts: Default::default() }
    }

    /// A host at 192.168.1.20/24 (its uplink) and 172.17.0.1/16 (a bridge).
    fn host_sets() -> (Vec<Cidr>, Vec<Cidr>) {
        address_sets(
            POOL,
            vec![cidr("127.0.0.1/32"), cidr("192.168.1.20/32"), cidr("172.17.0.1/32")],
            vec![cidr("192.168.1.0/24")],
        )
    }

    #[test]
    fn golden_base_table_fresh() {
        let (forbidden, private) = host_sets();
        golden("base-fresh.nft", &base_script(TABLE, PREFIX, &forbidden, &private, "", "", &[]));
    }

    #[test]
    fn golden_base_table_with_live_and_stale_slots() {
        let (forbidden, private) = host_sets();
        let listed = br#"{"nftables": [{"table": {"family": "inet", "name": "spinup_213"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "sb_0"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "rd_0"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "sb_5"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "rd_5"}},
            {"set": {"family": "inet", "table": "spinup_213", "name": "explicit_5"}},
            {"set": {"family": "inet", "table": "spinup_213", "name": "dyn_5"}},
            {"set": {"family": "inet", "table": "spinup_213", "name": "dyn_0"}}]}"#;
        let live = [slot(0), slot(3)];
        let (chains, sets) = stale_objects(TABLE, listed, &live.iter().map(|s| s.index).collect());
        golden("base-live-stale.nft", &base_script(TABLE, PREFIX, &forbidden, &private, &chains, &sets, &live));
    }

    #[test]
    fn golden_chain_none() {
        let w = writer();
        let p = policy(NetMode::None, &["pypi.org", "10.1.2.0/24"]);
        let now = Instant::now();
        golden("chain-none-fresh.nft", &w.chain_script(&slot(7), &p, false, &HashMap::new(), true, now));
        golden("chain-none-update.nft", &w.chain_script(&slot(7), &p, true, &HashMap::new(), false, now));
    }

    #[test]
    fn golden_chain_allow() {
        let w = writer();
        let p = policy(NetMode::Allow, &["pypi.org", "*.pythonhosted.org", "10.1.2.0/24", "192.168.1.50/32"]);
        let now = Instant::now();
        golden("chain-allow-fresh.nft", &w.chain_script(&slot(7), &p, false, &HashMap::new(), true, now));
        // A policy change keeps the learned addresses still allowed and
        // not expired.
        let learned: HashMap<Ipv4Addr, (String, Instant)> = [
            (Ipv4Addr::new(151, 101, 0, 223), ("pypi.org".to_string(), now + Duration::from_secs(300))),
            (Ipv4Addr::new(146, 75, 32, 223), ("files.pythonhosted.org".to_string(), now + Duration::from_secs(90))),
            (Ipv4Addr::new(140, 82, 112, 3), ("github.com".to_string(), now + Duration::from_secs(300))),
            (Ipv4Addr::new(151, 101, 64, 223), ("pypi.org".to_string(), now)),
        ]
        .into();
        golden("chain-allow-update.nft", &w.chain_script(&slot(7), &p, true, &learned, false, now));
    }

    #[test]
    fn golden_chain_open() {
        let w = writer();
        let p = policy(NetMode::Open, &["10.1.2.0/24"]);
        let now = Instant::now();
        golden("chain-open-fresh.nft", &w.chain_script(&slot(16383), &p, false, &HashMap::new(), true, now));
        // Proxy-mode secrets send 80/443 to the proxy (DNAT).
        golden("chain-open-secrets.nft", &w.chain_script(&slot(16383), &p, true, &HashMap::new(), false, now));
    }

    #[test]
    fn golden_slot_removal_and_dns_opening() {
        let mut r = slot_steps(TABLE, &slot(7)).join("\n");
        r.push('\n');
        r.push_str(&open_command(TABLE, 7, Ipv4Addr::new(151, 101, 0, 223), Duration::from_secs(5)));
        r.push('\n');
        r.push_str(&open_command(TABLE, 7, Ipv4Addr::new(151, 101, 0, 223), Duration::from_secs(3600)));
        r.push('\n');
        r.push_str(&open_command(TABLE, 7, Ipv4Addr::new(151, 101, 0, 223), Duration::from_secs(1 << 20)));
        r.push('\n');
        golden("slot-removal-and-dns.nft", &r);
    }

    /// Pool of the networks below (none of a real daemon's, so that no
    /// address of a live sandbox could be bound by accident).
    const FAKE_POOL: u8 = 251;

    /// A data dir of its own, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch_dir() -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("spinup-network-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    /// A network on the fake host (no pool lock, no host state touched).
    fn fake_network(live: &[NetSlot]) -> (Arc<spinup_host::RecordingHost>, Network, Scratch) {
        let host = Arc::new(spinup_host::RecordingHost::new());
        let own = (vec![cidr("192.168.1.20/32")], vec![cidr("192.168.1.0/24")]);
        let dir = scratch_dir();
        let net = Network::assemble(
            &dir.0,
            NetConfig::default(),
            live,
            FAKE_POOL,
            None,
            own,
            rustls::RootCertStore::empty(),
            host.clone(),
        )
        .unwrap();
        (host, net, dir)
    }

    /// How the fake records `nft -f -` of `script`.
    fn nft(script: &str) -> String {
        format!("nft -f - <<< {}", script.trim_end().replace('\n', "; "))
    }

    #[test]
    fn proxy_secret_debug_never_shows_the_value() {
        let s = ProxySecret {
            placeholder: "SPINUP_PLACEHOLDER_1".into(),
            value: Zeroizing::new("sk-live-very-secret".into()),
            hosts: vec![DomainRule::parse("api.example.com")],
        };
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("sk-live-very-secret"), "{shown}");
        assert!(shown.contains("SPINUP_PLACEHOLDER_1") && shown.contains("<redacted>"), "{shown}");
    }

    #[tokio::test]
    async fn create_refuses_a_host_without_nft_before_changing_anything() {
        let host = Arc::new(spinup_host::RecordingHost::new());
        host.without_tool("nft");
        let e = Network::create(&scratch_dir().0, NetConfig::default(), &[], host.clone()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "nft not found: sandbox networking needs iproute2 and nftables (scripts/install-deps.sh)"
        );
        assert_eq!(host.calls(), ["which ip", "which nft"]);
    }

    #[tokio::test]
    async fn host_networks_are_its_addresses_and_its_uplinks_networks() {
        let host = spinup_host::RecordingHost::new();
        let a = |link: &str, ip: &str, prefix| spinup_host::HostAddr {
            link: link.into(),
            addr: ip.parse().unwrap(),
            prefix,
        };
        host.set_addresses(
            vec![a("lo", "127.0.0.1", 8), a("eth0", "192.168.1.20", 24), a("docker0", "172.17.0.1", 16)],
            vec!["eth0".into()],
        );
        let (own, nets) = host_networks(&host).await;
        assert_eq!(own, ["127.0.0.1/32", "192.168.1.20/32", "172.17.0.1/32"].map(cidr));
        assert_eq!(nets, [cidr("192.168.1.0/24")]);
        assert_eq!(host.calls(), ["ip -j -4 addr", "ip -j -4 route show default"]);
    }

    #[tokio::test]
    async fn the_base_table_is_written_in_one_transaction_after_listing_it() {
        let live = [slot(0)];
        let (host, net, _dir) = fake_network(&live);
        let t = "spinup_251";
        host.set_table_json(t, r#"{"nftables": [{"chain": {"name": "sb_4"}}, {"set": {"name": "dyn_4"}}]}"#);
        net.install_base(&live).await.unwrap();
        let (chains, sets) = stale_objects(
            t,
            br#"{"nftables": [{"chain": {"name": "sb_4"}}, {"set": {"name": "dyn_4"}}]}"#,
            &[0].into(),
        );
        assert!(chains.contains("delete chain inet spinup_251 sb_4") && sets.contains("dyn_4"));
        let base = base_script(t, "sp251v", &net.shared.forbidden, &net.shared.private, &chains, &sets, &live);
        assert_eq!(
            host.calls(),
            [format!("nft -f - <<< add table inet {t}"), format!("nft -j list table inet {t}"), nft(&base)]
        );
    }

    #[tokio::test]
    async fn a_base_table_that_does_not_take_is_started_over() {
        let (host, net, _dir) = fake_network(&[]);
        let t = "spinup_251";
        host.set_table_json(t, r#"{"nftables": [{"chain": {"name": "sb_4"}}]}"#);
        host.fail("delete chain inet spinup_251 sb_4", "Error: Could not process rule: No such file or directory");
        net.install_base(&[]).await.unwrap();
        let (chains, _) = stale_objects(t, br#"{"nftables": [{"chain": {"name": "sb_4"}}]}"#, &BTreeSet::new());
        let (forbidden, private) = (&net.shared.forbidden, &net.shared.private);
        assert_eq!(
            host.calls(),
            [
                format!("nft -f - <<< add table inet {t}"),
                format!("nft -j list table inet {t}"),
                nft(&base_script(t, "sp251v", forbidden, private, &chains, "", &[])),
                format!("nft -f - <<< delete table inet {t}"),
                nft(&base_script(t, "sp251v", forbidden, private, "", "", &[])),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn setup_makes_the_namespace_links_and_chain_and_teardown_removes_them() {
        let (host, net, _dir) = fake_network(&[]);
        let slot = net.allocate().unwrap();
        assert_eq!((slot.index, slot.host_if.as_str()), (0, "sp251v0"));
        let policy = policy(NetMode::Allow, &["pypi.org"]);
        // Leftovers of a killed daemon go first.
        host.add_link("sp251v0");
        // The resolver cannot bind 10.251.0.1 here: that is after every
        // host call, so only they are checked.
        let _ = net.setup("sb1", &slot, NetKind::Tap, &policy).await;
        let chain = net.chain_writer().chain_script(&slot, &policy, false, &HashMap::new(), true, Instant::now());
        let mut calls = host.take_calls();
        // The chain is written while the links are made.
        let at = calls.iter().position(|c| *c == nft(&chain)).expect("the chain written");
        calls.remove(at);
        assert_eq!(
            calls,
            [
                "test -e /sys/class/net/sp251v0",
                "ip link del sp251v0",
                "test -e /run/netns/spinup-sb1",
                "ip -batch - <<< netns add spinup-sb1; link add sp251v0 type veth peer name eth0 netns spinup-sb1; \
                 addr add 10.251.0.1/30 dev sp251v0; link set sp251v0 up",
                "ip -n spinup-sb1 -batch - <<< link set lo up; link add br0 type bridge; link set eth0 master br0; \
                 tuntap add dev tap0 mode tap; link set tap0 master br0; link set eth0 up; link set tap0 up; link set br0 up",
            ]
        );
        assert!(host.has_link("sp251v0") && host.has_netns("spinup-sb1"));
        net.teardown("sb1", &slot).await;
        let steps = slot_steps("spinup_251", &slot);
        assert_eq!(
            host.take_calls(),
            [nft(&steps.join("\n")), "ip link del sp251v0".into(), "ip netns del spinup-sb1".into()]
        );
        assert!(!host.has_link("sp251v0") && !host.has_netns("spinup-sb1"));
        assert_eq!(net.allocate().unwrap().index, 0, "the slot is free again");
    }

    #[tokio::test]
    async fn teardown_falls_back_to_one_step_at_a_time() {
        let (host, net, _dir) = fake_network(&[]);
        let slot = net.allocate().unwrap();
        host.fail("sb_0", "Error: No such file or directory");
        net.teardown("gone", &slot).await;
        let steps = slot_steps("spinup_251", &slot);
        let mut want = vec![nft(&steps.join("\n"))];
        want.extend(steps.iter().map(|s| nft(s)));
        want.extend(["ip link del sp251v0".to_string(), "ip netns del spinup-gone".to_string()]);
        assert_eq!(host.calls(), want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_policy_change_rewrites_the_chain_keeping_what_is_still_allowed() {
        let (host, net, _dir) = fake_network(&[]);
        let slot = net.allocate().unwrap();
        let sn = net.attach_live("sb1", &slot, policy(NetMode::Allow, &["pypi.org", "github.com"]));
        // The resolver hands out an address: it is opened before it answers.
        sn.learned(
            "pypi.org",
            &[Ipv4Addr::new(151, 101, 0, 223), Ipv4Addr::new(10, 0, 0, 5)],
            Duration::from_secs(300),
        )
        .await;
        sn.learned("github.com", &[Ipv4Addr::new(140, 82, 112, 3)], Duration::from_secs(30)).await;
        assert_eq!(
            host.take_calls(),
            [
                "nft -f - <<< add element inet spinup_251 dyn_0 { 151.101.0.223 timeout 300s }",
                "nft -f - <<< add element inet spinup_251 dyn_0 { 140.82.112.3 timeout 60s }",
            ]
        );
        let narrower = policy(NetMode::Allow, &["pypi.org"]);
        net.set_policy("sb1", &narrower).await.unwrap();
        let calls = host.take_calls();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].starts_with("nft -f - <<< add set inet spinup_251 explicit_0"), "{}", calls[0]);
        // (What is left of its 300s: 299s once a moment has passed.)
        let kept = "; flush set inet spinup_251 dyn_0; add element inet spinup_251 dyn_0 { 151.101.0.223 timeout ";
        let tail = calls[0].rsplit_once(kept).map(|(_, t)| t);
        assert!(matches!(tail, Some("300s }" | "299s }")), "{}", calls[0]);
        // Proxy-mode secrets in open mode turn the proxy on, and off again.
        net.set_policy("sb1", &policy(NetMode::Open, &[])).await.unwrap();
        host.take_calls();
        let secret = || ProxySecret { placeholder: "P".into(), value: Zeroizing::new("v".into()), hosts: vec![] };
        net.set_proxy_secrets("sb1", vec![secret()]).await.unwrap();
        net.set_proxy_secrets("sb1", vec![secret()]).await.unwrap();
        net.set_proxy_secrets("sb1", vec![]).await.unwrap();
        let calls = host.take_calls();
        assert_eq!(calls.len(), 2, "only changes rewrite the chain: {calls:?}");
        assert!(calls[0]
            .contains("delete element inet spinup_251 proxied { \"sp251v0\" }; add element inet spinup_251 proxied"));
        assert!(calls[1].contains("delete element inet spinup_251 proxied { \"sp251v0\" }; flush set"));
        // A sandbox without a network: nothing to do.
        net.set_policy("nope", &narrower).await.unwrap();
        assert!(host.calls().is_empty());
    }

    #[tokio::test]
    async fn sweep_removes_links_namespaces_and_objects_of_unused_slots() {
        let (host, net, _dir) = fake_network(&[slot_of(FAKE_POOL, 1)]);
        for l in ["sp251v1", "sp251v3", "eth0", "sp251vx"] {
            host.add_link(l);
        }
        host.add_netns("spinup-old");
        host.set_peer("sp251v3", "spinup-old");
        host.set_table_json(
            "spinup_251",
            r#"{"nftables": [{"chain": {"name": "sb_1"}}, {"chain": {"name": "sb_9"}}, {"set": {"name": "dyn_99999"}}]}"#,
        );
        let (removed, failed) = net.sweep().await;
        assert_eq!(
            removed,
            ["link sp251v3", "network namespace spinup-old", "nftables chain sb_9"],
            "{:?}",
            host.calls()
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!host.has_link("sp251v3") && !host.has_netns("spinup-old") && host.has_link("sp251v1"));
        let calls = host.calls();
        for want in [
            nft(&slot_steps("spinup_251", &slot_of(FAKE_POOL, 3)).join("\n")),
            nft(&slot_steps("spinup_251", &slot_of(FAKE_POOL, 9)).join("\n")),
            "ip link del sp251v9".into(),
        ] {
            assert!(calls.contains(&want), "{want} not in {calls:?}");
        }
    }

    #[tokio::test]
    async fn an_orphan_whose_slot_is_taken_keeps_the_slots_objects() {
        let (host, net, _dir) = fake_network(&[slot_of(FAKE_POOL, 2)]);
        host.add_netns("spinup-lost");
        let what = net.remove_orphan("lost", Some(&slot_of(FAKE_POOL, 2))).await;
        assert_eq!(what, ["network namespace spinup-lost", "network record of sandbox lost"]);
        assert_eq!(host.calls(), ["test -e /run/netns/spinup-lost", "ip netns del spinup-lost"]);
    }

    /// Slot `i` of `pool`.
    fn slot_of(pool: u8, i: u32) -> NetSlot {
        slot_in(pool, &format!("sp{pool}v"), i)
    }

    #[test]
    fn slot_objects_are_found_by_name_in_nft_json() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "spinup_213"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "forward"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "sb_7"}},
            {"chain": {"family": "inet", "table": "spinup_213", "name": "rd_7"}},
            {"set": {"family": "inet", "table": "spinup_213", "name": "dyn_12"}},
            {"set": {"family": "inet", "table": "spinup_213", "name": "explicit_x"}},
            {"map": {"family": "inet", "table": "spinup_213", "name": "egress"}}]}"#;
        assert_eq!(
            slot_objects(json),
            vec![("chain", "sb_7".to_string(), 7), ("chain", "rd_7".to_string(), 7), ("set", "dyn_12".to_string(), 12)]
        );
        assert!(slot_objects(b"not json").is_empty());
    }
}
