//! A sandbox's network policy and secrets, as the manager applies them:
//! checked against the store, projected into the guest through its agent
//! (file and env modes) or handed to its egress proxy (proxy mode), and
//! changed at run time.

use std::collections::BTreeMap;

use spinup_model::network::DomainRule;
use spinup_model::{Error, NetMode, NetworkPolicy, Result, Sandbox, SandboxState, SecretMode, SecretMount};

use crate::manager::Manager;
use crate::network::ProxySecret;

pub use spinup_api::AttachRequest;

fn placeholder(name: &str) -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("OS randomness");
    format!("SPINUP_PLACEHOLDER_{name}_{}", hex::encode(b))
}

/// What the egress proxy holds for one proxy-mode secret.
fn proxy_secret(m: &SecretMount, placeholder: String, value: zeroize::Zeroizing<String>) -> ProxySecret {
    ProxySecret { placeholder, value, hosts: m.hosts.iter().map(|h| DomainRule::parse(h)).collect() }
}

impl Manager {
    /// Validate the mounts of a request: known secrets, one mount per name,
    /// a placeholder for each proxy-mode one.
    pub(crate) fn check_secrets(&self, tenant: Option<&str>, mounts: &[SecretMount]) -> Result<Vec<SecretMount>> {
        if mounts.len() > 64 {
            return Err(Error::InvalidArgument("at most 64 secrets per sandbox".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut out = vec![];
        for m in mounts {
            m.validate()?;
            if !seen.insert(m.name.clone()) {
                return Err(Error::InvalidArgument(format!("secret {} is attached twice", m.name)));
            }
            // Exists, and the key can open it: fail now, not half-way.
            self.secrets.reveal(tenant, &m.name).map(drop)?;
            let mut m = m.clone();
            m.placeholder = (m.mode == SecretMode::Proxy).then(|| placeholder(&m.name));
            out.push(m);
        }
        Ok(out)
    }

    /// Send `sb`'s secrets to its agent and its proxy, fresh from the store.
    pub(crate) async fn project_secrets(&self, sb: &Sandbox) -> Result<()> {
        let mut req = spinup_protocol::SecretsRequest::default();
        let mut proxied = vec![];
        for m in &sb.secrets {
            let value = self.secrets.reveal(sb.tenant.as_deref(), &m.name)?;
            match m.mode {
                SecretMode::File => {
                    req.files.insert(m.name.clone(), value.to_string());
                }
                SecretMode::Env => {
                    req.env.insert(m.name.clone(), value.to_string());
                }
                SecretMode::Proxy => {
                    let ph = m.placeholder.clone().unwrap_or_else(|| placeholder(&m.name));
                    req.env.insert(m.name.clone(), ph.clone());
                    proxied.push(proxy_secret(m, ph, value));
                }
            }
        }
        if !proxied.is_empty() {
            req.ca_pem = Some(self.network()?.ca_cert(&sb.id)?);
        }
        if let Ok(env) = self.envs.get(&sb.env) {
            if !env.config.user.is_empty() {
                req.user = Some(env.config.user.clone());
            }
        }
        if let Ok(n) = &self.net {
            n.set_proxy_secrets(&sb.id, proxied).await?;
        }
        if sb.secrets.is_empty() && sb.state == SandboxState::Creating {
            return Ok(());
        }
        let c = self.agents.lock().unwrap().get(sb.id.as_str()).cloned();
        let c = match c {
            Some(c) if !c.is_closed() => c,
            _ => self.agent_locked(sb).await?,
        };
        let r: std::result::Result<serde_json::Value, _> = c.call(http::Method::POST, "/v1/secrets", Some(&req)).await;
        drop(req);
        // The agent's message never carries a value (it names secrets only).
        r.map(drop).map_err(|e| Error::Agent(format!("projecting secrets into the sandbox: {e}")))
    }

    /// After a daemon restart: the namespace and veth are there; bring back
    /// the chain, resolver, proxy and proxy-mode secrets.
    pub(crate) async fn reattach_net(&self, sb: &Sandbox) {
        let (Ok(n), Some(slot)) = (&self.net, &sb.net) else { return };
        if let Err(e) = n.reattach(&sb.id, slot, &sb.network).await {
            tracing::warn!(id = %sb.id, "re-attaching its network: {e}");
            return;
        }
        let mut proxied = vec![];
        for m in sb.secrets.iter().filter(|m| m.mode == SecretMode::Proxy) {
            match self.secrets.reveal(sb.tenant.as_deref(), &m.name) {
                Ok(value) => proxied.push(proxy_secret(m, m.placeholder.clone().unwrap_or_default(), value)),
                Err(e) => tracing::warn!(id = %sb.id, secret = %m.name, "cannot re-attach: {e}"),
            }
        }
        if let Err(e) = n.set_proxy_secrets(&sb.id, proxied).await {
            tracing::warn!(id = %sb.id, "re-attaching proxy secrets: {e}");
        }
    }

    /// Change a sandbox's network policy; applies at once.
    pub(crate) async fn set_network_now(&self, id: &str, policy: NetworkPolicy) -> Result<Sandbox> {
        policy.validate()?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut sb = self.get(id)?;
        self.require(&sb, "network_policy")?;
        if !matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
            return Err(Error::Conflict(format!("sandbox {id} is {}", sb.state)));
        }
        let n = self.network()?;
        if sb.net.is_none() && policy.mode != NetMode::None {
            return Err(Error::Conflict(format!(
                "sandbox {id} was made without a network; make a new one to give it one"
            )));
        }
        n.set_policy(id, &policy).await?;
        sb.network = policy;
        sb.updated_at = spinup_model::now_ms();
        self.store.update_sandbox(&sb, sb.state, None)?;
        tracing::info!(id, mode = sb.network.mode.as_str(), "network policy changed");
        Ok(sb)
    }

    /// Attach or detach secrets of a running sandbox.
    pub(crate) async fn attach_secrets_now(&self, id: &str, req: AttachRequest) -> Result<Sandbox> {
        for n in &req.detach {
            spinup_model::validate_secret_name(n)?;
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut sb = self.get(id)?;
        if sb.state != SandboxState::Running {
            return Err(Error::Conflict(format!("sandbox {id} is {}; secrets go to a running sandbox", sb.state)));
        }
        let mut by_name: BTreeMap<String, SecretMount> =
            sb.secrets.iter().map(|m| (m.name.clone(), m.clone())).collect();
        for n in &req.detach {
            if by_name.remove(n).is_none() {
                return Err(Error::NotFound { kind: "attached secret", id: n.clone() });
            }
        }
        for m in self.check_secrets(sb.tenant.as_deref(), &req.attach)? {
            by_name.insert(m.name.clone(), m);
        }
        let mounts: Vec<SecretMount> = by_name.into_values().collect();
        if mounts.iter().any(|m| m.mode == SecretMode::Proxy) && sb.net.is_none() {
            return Err(Error::Conflict(format!(
                "sandbox {id} has no network, so no egress proxy for proxy-mode secrets"
            )));
        }
        let old = std::mem::replace(&mut sb.secrets, mounts);
        if let Err(e) = self.project_secrets(&sb).await {
            sb.secrets = old;
            return Err(e);
        }
        sb.updated_at = spinup_model::now_ms();
        self.store.update_sandbox(&sb, sb.state, None)?;
        Ok(sb)
    }
}
