//! The OpenAPI 3 document served at `/v1/openapi.json`.

use serde_json::{json, Value};

/// (method, path, summary) for every route `api::router` serves.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/v1/openapi.json", "This document"),
    ("get", "/v1/drivers", "Drivers and their probed capabilities"),
    (
        "post",
        "/v1/gc",
        "Remove what a killed daemon of this data dir left behind (namespaces, links, chains, mounts, cgroups, processes of no sandbox in the store): {removed, failed}",
    ),
    ("get", "/v1/sandboxes", "List sandboxes; filter with repeated label=key=value"),
    ("post", "/v1/sandboxes", "Create a sandbox {env, driver, timeout_s, resources, labels, network, secrets}"),
    ("get", "/v1/sandboxes/{id}", "Get one sandbox"),
    ("delete", "/v1/sandboxes/{id}", "Destroy a sandbox (?force=true if running)"),
    ("put", "/v1/sandboxes/{id}/timeout", "Set the timeout {timeout_s}, counted from now; 0 clears it"),
    ("get", "/v1/sandboxes/{id}/info", "Agent version, uptime and resource usage"),
    ("get", "/v1/sandboxes/{id}/events", "Recorded lifecycle transitions"),
    (
        "post",
        "/v1/sandboxes/{id}/pause",
        "Pause in place, memory kept (capability pause_resume; 501 unsupported where the driver lacks it)",
    ),
    ("post", "/v1/sandboxes/{id}/resume", "Resume (capability pause_resume)"),
    ("post", "/v1/sandboxes/{id}/snapshot", "Snapshot {name, memory} (capability fs_snapshot or memory_snapshot)"),
    ("post", "/v1/sandboxes/{id}/fork", "Fork (capability fork)"),
    ("patch", "/v1/sandboxes/{id}/resources", "Change resources live (capability live_resource_update)"),
    ("put", "/v1/sandboxes/{id}/network", "Set the network policy {mode, allow, hosts}; applies at once (capability network_policy)"),
    ("get", "/v1/sandboxes/{id}/ports", "Exposed ports"),
    ("post", "/v1/sandboxes/{id}/ports", "Expose a port {port, public, unix, listen} (capability port_exposure); the token is shown once"),
    ("delete", "/v1/sandboxes/{id}/ports/{port}", "Stop exposing a port"),
    ("post", "/v1/sandboxes/{id}/secrets", "Attach {attach: [{name, mode, hosts}]} or detach {detach: [names]} secrets"),
    ("get", "/v1/secrets", "Secret names and times (never values)"),
    ("get", "/v1/secrets/{name}", "One secret's name and times"),
    ("put", "/v1/secrets/{name}", "Set a secret: raw body, or JSON {value}; encrypted at rest"),
    ("delete", "/v1/secrets/{name}", "Remove a secret (409 while attached)"),
    (
        "post",
        "/v1/sandboxes/{id}/exec",
        "Run a command {argv|cmd, env, cwd, user, timeout_ms, background, input}; ?stream=true answers NDJSON",
    ),
    (
        "get",
        "/v1/sandboxes/{id}/exec/ws",
        "WebSocket exec/PTY: binary messages carry protocol frames; the first is Start",
    ),
    ("get", "/v1/sandboxes/{id}/processes", "Processes started through the agent"),
    ("get", "/v1/sandboxes/{id}/processes/{pid}/ws", "WebSocket re-attach to a process (replays buffered output)"),
    ("post", "/v1/sandboxes/{id}/processes/{pid}/signal", "Signal a process group {signal}"),
    ("post", "/v1/sandboxes/{id}/processes/{pid}/stdin", "Feed stdin (raw body); ?close=true closes it"),
    ("get", "/v1/sandboxes/{id}/files", "Read a file (?path=), streamed"),
    ("put", "/v1/sandboxes/{id}/files", "Write a file (?path=&mode=), streamed; parents are created"),
    ("get", "/v1/sandboxes/{id}/files/stat", "Stat a path without following a final symlink (?path=)"),
    ("get", "/v1/sandboxes/{id}/files/list", "List a directory (?path=&depth=)"),
    (
        "post",
        "/v1/sandboxes/{id}/files/{op}",
        "op = mkdir {path, mode} | remove {path, recursive} | rename {from, to} | chmod {path, mode}",
    ),
    ("get", "/v1/environments", "List environments and built-in recipes"),
    ("get", "/v1/environments/{name}", "Get one environment"),
    ("delete", "/v1/environments/{name}", "Remove an environment no sandbox uses"),
    ("post", "/v1/environments/{name}/import", "Import a rootfs tarball (tar or tar.gz body)"),
    ("post", "/v1/environments/{name}/build", "Build a built-in recipe (busybox, debian); NDJSON progress"),
];

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "default": {"description": "Errors: {code, message}", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Spinup API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
        }}}
    })
}
