//! The route table: every `/v1` route, once. The HTTP front end's router
//! is built from it (each [`Op`] maps to one handler, checked by the
//! compiler) and so is the OpenAPI document (`openapi.rs`); spinup-http's
//! tests ask the router for every entry, and for nothing else.

/// One operation of the API. Routes and handlers are keyed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    OpenApi,
    Drivers,
    Gc,
    List,
    Create,
    Get,
    Remove,
    SetTimeout,
    Info,
    Events,
    Pause,
    Resume,
    Start,
    Snapshot,
    Fork,
    Diff,
    Snapshots,
    GetSnapshot,
    RemoveSnapshot,
    SnapshotLayer,
    UpdateResources,
    SetNetwork,
    Ports,
    Expose,
    Unexpose,
    AttachSecrets,
    Secrets,
    Secret,
    SetSecret,
    RemoveSecret,
    Exec,
    ExecWs,
    Processes,
    AttachWs,
    Signal,
    Stdin,
    ReadFile,
    WriteFile,
    StatFile,
    ListFiles,
    WatchFiles,
    MakeDir,
    RemovePath,
    RenamePath,
    ChmodPath,
    Environments,
    Environment,
    RemoveEnvironment,
    ImportEnvironment,
    BuildEnvironment,
    RunCode,
    CodeContexts,
    CreateCodeContext,
    RestartCodeContext,
    RemoveCodeContext,
    Keys,
    CreateKey,
    RemoveKey,
    Audit,
}

/// A method and path template (axum syntax, `{name}` segments) served for
/// one [`Op`], with a one-line summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Lowercase HTTP method, as OpenAPI spells it.
    pub method: &'static str,
    pub path: &'static str,
    pub op: Op,
    pub summary: &'static str,
}

pub const ROUTES: &[Route] = &[
    Route { method: "get", path: "/v1/openapi.json", op: Op::OpenApi, summary: "This document" },
    Route { method: "get", path: "/v1/drivers", op: Op::Drivers, summary: "Drivers and their probed capabilities" },
    Route { method: "post", path: "/v1/gc", op: Op::Gc, summary: "Remove what a killed daemon of this data dir left behind (namespaces, links, chains, mounts, cgroups, processes of no sandbox in the store): {removed, failed}" },
    Route { method: "get", path: "/v1/sandboxes", op: Op::List, summary: "List sandboxes; filter with repeated label=key=value" },
    Route { method: "post", path: "/v1/sandboxes", op: Op::Create, summary: "Create a sandbox {env, driver, timeout_s, resources, labels, network, secrets}" },
    Route { method: "get", path: "/v1/sandboxes/{id}", op: Op::Get, summary: "Get one sandbox" },
    Route { method: "delete", path: "/v1/sandboxes/{id}", op: Op::Remove, summary: "Destroy a sandbox (?force=true if running)" },
    Route { method: "put", path: "/v1/sandboxes/{id}/timeout", op: Op::SetTimeout, summary: "Set the timeout {timeout_s}, counted from now; 0 clears it" },
    Route { method: "get", path: "/v1/sandboxes/{id}/info", op: Op::Info, summary: "Agent version, uptime and resource usage" },
    Route { method: "get", path: "/v1/sandboxes/{id}/events", op: Op::Events, summary: "Recorded lifecycle transitions" },
    Route { method: "post", path: "/v1/sandboxes/{id}/pause", op: Op::Pause, summary: "Pause in place, memory kept (capability pause_resume; 501 unsupported where the driver lacks it)" },
    Route { method: "post", path: "/v1/sandboxes/{id}/resume", op: Op::Resume, summary: "Resume (capability pause_resume)" },
    Route { method: "post", path: "/v1/sandboxes/{id}/start", op: Op::Start, summary: "Boot a stopped sandbox again on the disk it kept, with a fresh agent (capability restart; 409 unless stopped)" },
    Route { method: "post", path: "/v1/sandboxes/{id}/snapshot", op: Op::Snapshot, summary: "Snapshot {name, memory} (capability fs_snapshot or memory_snapshot)" },
    Route { method: "post", path: "/v1/sandboxes/{id}/fork", op: Op::Fork, summary: "Fork (capability fork)" },
    Route { method: "get", path: "/v1/sandboxes/{id}/diff", op: Op::Diff, summary: "Changes since creation or a snapshot (?since=&path=&content=) (capability diff)" },
    Route { method: "get", path: "/v1/snapshots", op: Op::Snapshots, summary: "List snapshots" },
    Route { method: "get", path: "/v1/snapshots/{id}", op: Op::GetSnapshot, summary: "Get one snapshot (id or name)" },
    Route { method: "delete", path: "/v1/snapshots/{id}", op: Op::RemoveSnapshot, summary: "Remove a snapshot no sandbox stacks" },
    Route { method: "get", path: "/v1/snapshots/{id}/layer", op: Op::SnapshotLayer, summary: "The snapshot's own layer as an OCI layer tar; its sha256 is the `layer` digest (X-Spinup-Digest)" },
    Route { method: "patch", path: "/v1/sandboxes/{id}/resources", op: Op::UpdateResources, summary: "Change resources live (capability live_resource_update)" },
    Route { method: "put", path: "/v1/sandboxes/{id}/network", op: Op::SetNetwork, summary: "Set the network policy {mode, allow, hosts}; applies at once (capability network_policy)" },
    Route { method: "get", path: "/v1/sandboxes/{id}/ports", op: Op::Ports, summary: "Exposed ports" },
    Route { method: "post", path: "/v1/sandboxes/{id}/ports", op: Op::Expose, summary: "Expose a port {port, public, unix, listen} (capability port_exposure); the token is shown once" },
    Route { method: "delete", path: "/v1/sandboxes/{id}/ports/{port}", op: Op::Unexpose, summary: "Stop exposing a port" },
    Route { method: "post", path: "/v1/sandboxes/{id}/secrets", op: Op::AttachSecrets, summary: "Attach {attach: [{name, mode, hosts}]} or detach {detach: [names]} secrets" },
    Route { method: "get", path: "/v1/secrets", op: Op::Secrets, summary: "Secret names and times (never values)" },
    Route { method: "get", path: "/v1/secrets/{name}", op: Op::Secret, summary: "One secret's name and times" },
    Route { method: "put", path: "/v1/secrets/{name}", op: Op::SetSecret, summary: "Set a secret: raw body, or JSON {value}; encrypted at rest" },
    Route { method: "delete", path: "/v1/secrets/{name}", op: Op::RemoveSecret, summary: "Remove a secret (409 while attached)" },
    Route { method: "post", path: "/v1/sandboxes/{id}/exec", op: Op::Exec, summary: "Run a command {argv|cmd, env, cwd, user, timeout_ms, background, input}; ?stream=true answers NDJSON" },
    Route { method: "get", path: "/v1/sandboxes/{id}/exec/ws", op: Op::ExecWs, summary: "WebSocket exec/PTY: binary messages carry protocol frames; the first is Start" },
    Route { method: "get", path: "/v1/sandboxes/{id}/processes", op: Op::Processes, summary: "Processes started through the agent" },
    Route { method: "get", path: "/v1/sandboxes/{id}/processes/{pid}/ws", op: Op::AttachWs, summary: "WebSocket re-attach to a process (replays buffered output)" },
    Route { method: "post", path: "/v1/sandboxes/{id}/processes/{pid}/signal", op: Op::Signal, summary: "Signal a process group {signal}" },
    Route { method: "post", path: "/v1/sandboxes/{id}/processes/{pid}/stdin", op: Op::Stdin, summary: "Feed stdin (raw body); ?close=true closes it" },
    Route { method: "get", path: "/v1/sandboxes/{id}/files", op: Op::ReadFile, summary: "Read a file (?path=), streamed" },
    Route { method: "put", path: "/v1/sandboxes/{id}/files", op: Op::WriteFile, summary: "Write a file (?path=&mode=&user=), streamed; parents are created; with user (name or uid[:gid], resolved in the guest as exec's user) the file and the directories created belong to it" },
    Route { method: "get", path: "/v1/sandboxes/{id}/files/stat", op: Op::StatFile, summary: "Stat a path without following a final symlink (?path=)" },
    Route { method: "get", path: "/v1/sandboxes/{id}/files/list", op: Op::ListFiles, summary: "List a directory (?path=&depth=)" },
    Route { method: "get", path: "/v1/sandboxes/{id}/files/watch", op: Op::WatchFiles, summary: "Watch a directory (?path=&recursive=): NDJSON stream, first {\"type\":\"started\"} once the watches are in place, then {type: create|write|remove|rename|chmod, path, is_dir} per change, {\"type\":\"overflow\"} when events were lost; ends when the client goes" },
    Route { method: "post", path: "/v1/sandboxes/{id}/files/mkdir", op: Op::MakeDir, summary: "Make a directory and its parents {path, mode, user}; an existing one is fine" },
    Route { method: "post", path: "/v1/sandboxes/{id}/files/remove", op: Op::RemovePath, summary: "Remove a file or empty directory {path}; with recursive, a whole tree" },
    Route { method: "post", path: "/v1/sandboxes/{id}/files/rename", op: Op::RenamePath, summary: "Rename or move a path {from, to}" },
    Route { method: "post", path: "/v1/sandboxes/{id}/files/chmod", op: Op::ChmodPath, summary: "Set a path's permission bits {path, mode}" },
    Route { method: "get", path: "/v1/environments", op: Op::Environments, summary: "List environments and built-in recipes" },
    Route { method: "get", path: "/v1/environments/{name}", op: Op::Environment, summary: "Get one environment" },
    Route { method: "delete", path: "/v1/environments/{name}", op: Op::RemoveEnvironment, summary: "Remove an environment no sandbox uses" },
    Route { method: "post", path: "/v1/environments/{name}/import", op: Op::ImportEnvironment, summary: "Import a rootfs tarball (tar or tar.gz body)" },
    Route { method: "post", path: "/v1/environments/{name}/build", op: Op::BuildEnvironment, summary: "Build a built-in recipe (busybox, debian, base, code-interpreter); NDJSON progress" },
    Route { method: "post", path: "/v1/sandboxes/{id}/code", op: Op::RunCode, summary: "Run code {code, language: python|javascript|bash, context, env, timeout_s} in a kernel inside the sandbox, state kept per context; NDJSON events: stdout, stderr, result (MIME bundle: text/plain, image/png, ...), error, then end" },
    Route { method: "get", path: "/v1/sandboxes/{id}/code/contexts", op: Op::CodeContexts, summary: "The sandbox's code contexts {id, language, cwd}" },
    Route { method: "post", path: "/v1/sandboxes/{id}/code/contexts", op: Op::CreateCodeContext, summary: "Start a code context {language, cwd}: its own kernel and state" },
    Route { method: "post", path: "/v1/sandboxes/{id}/code/contexts/{context}/restart", op: Op::RestartCodeContext, summary: "Restart a context's kernel (its state is lost)" },
    Route { method: "delete", path: "/v1/sandboxes/{id}/code/contexts/{context}", op: Op::RemoveCodeContext, summary: "Stop a context's kernel and forget it" },
    Route { method: "get", path: "/v1/keys", op: Op::Keys, summary: "API keys (ids, tenants, quotas; never secrets) (admin)" },
    Route { method: "post", path: "/v1/keys", op: Op::CreateKey, summary: "Make a key {tenant, max_sandboxes, max_vcpus, max_memory_mib} or {admin: true}; its secret is shown once (admin)" },
    Route { method: "delete", path: "/v1/keys/{id}", op: Op::RemoveKey, summary: "Revoke a key at once (admin)" },
    Route { method: "get", path: "/v1/audit", op: Op::Audit, summary: "The audit log, newest first (?tenant=&before=&limit=): who did what to which object, when, with what result (admin)" },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_and_each_method_and_path_appear_once() {
        let mut ops = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(ops.insert(r.op), "{:?} twice", r.op);
            assert!(keys.insert((r.method, r.path)), "{} {} twice", r.method, r.path);
            assert!(r.path.starts_with("/v1/"), "{}", r.path);
            assert!(["get", "post", "put", "patch", "delete"].contains(&r.method), "{}", r.method);
        }
    }
}
