//! The OpenAPI 3.1 document served at `/v1/openapi.json`.
//!
//! Paths come from [`crate::ROUTES`] (what the router serves); each
//! operation's parameters, body and answers come from [`shape`], an
//! exhaustive match over [`Op`], so a new route does not compile until it
//! is described. Schemas are derived from the Rust types themselves
//! (`utoipa::ToSchema` on the wire types of this crate, spinup-model and
//! spinup-protocol), so they change with the code.

use std::collections::BTreeMap;

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required, ResponseBuilder,
};
use utoipa::ToSchema;

use crate::{Op, ROUTES};

/// The schemas the document refers to, by name.
#[derive(Default)]
struct Schemas(BTreeMap<String, RefOr<Schema>>);

impl Schemas {
    /// A reference to `T`'s schema, registering it and what it refers to.
    fn of<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let name = T::name().to_string();
        let mut deps = Vec::new();
        T::schemas(&mut deps);
        self.0.extend(deps);
        self.0.insert(name.clone(), T::schema());
        RefOr::Ref(Ref::from_schema_name(name))
    }

    fn array_of<T: ToSchema>(&mut self) -> RefOr<Schema> {
        ArrayBuilder::new().items(self.of::<T>()).into()
    }
}

fn string() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn boolean() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Boolean).into()
}

fn integer(min: i64, max: i64) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max)).into()
}

fn object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(SchemaType::from(Type::Object)).into()
}

/// One line of `exec?stream=true`: `{type: started, pid}`, `{type:
/// stdout|stderr, data | data_b64}`, `{type: exit, exit_code, signal,
/// timed_out, message}` or `{type: error, code, message}`.
fn exec_event() -> RefOr<Schema> {
    ObjectBuilder::new()
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["started", "stdout", "stderr", "exit", "error"])),
        )
        .required("type")
        .into()
}

/// A request body.
#[allow(clippy::large_enum_variant, reason = "a few per document, built once and never stored")]
enum In {
    None,
    /// JSON; `required` is false where an empty body means `{}`.
    Json(RefOr<Schema>, bool),
    /// Raw bytes of this media type, streamed.
    Raw(&'static str, &'static str),
    /// The secret value: raw bytes, or `{"value": "..."}` as JSON.
    Secret,
}

/// A success answer.
#[allow(clippy::large_enum_variant, reason = "a few per document, built once and never stored")]
enum Out {
    Json(u16, RefOr<Schema>),
    /// Newline-delimited JSON, one value of this schema per line.
    NdJson(RefOr<Schema>),
    /// JSON, or NDJSON lines of the second schema when the query asks for
    /// a stream (`exec?stream=true`).
    JsonOrNdJson(RefOr<Schema>, RefOr<Schema>),
    /// Raw bytes of this media type.
    Raw(&'static str),
    NoContent,
    /// A WebSocket upgrade (101); the messages are protocol frames.
    WebSocket,
    /// `PUT /v1/secrets/{name}`: 201 when new, 200 when replaced.
    Set(RefOr<Schema>),
}

struct Shape {
    query: Vec<(&'static str, RefOr<Schema>, bool, &'static str)>,
    body: In,
    ok: Out,
    /// Error statuses besides 401 and 500 (every operation has those).
    errors: &'static [u16],
}

/// A sandbox, its agent, its driver: what the sandbox routes can answer.
const SANDBOX: &[u16] = &[400, 404, 409, 501, 502, 503];
/// The agent's file answers add permission and space errors.
const FILES: &[u16] = &[400, 403, 404, 409, 413, 501, 502, 503, 507];

fn shape(op: Op, s: &mut Schemas) -> Shape {
    use Out::*;
    let q = |v: Vec<(&'static str, RefOr<Schema>, bool, &'static str)>| v;
    let plain = |body: In, ok: Out, errors: &'static [u16]| Shape { query: vec![], body, ok, errors };
    let path = ("path", string(), true, "Absolute path inside the sandbox");
    match op {
        Op::OpenApi => plain(In::None, Json(200, object()), &[]),
        Op::Drivers => plain(In::None, Json(200, s.array_of::<spinup_model::Capabilities>()), &[]),
        Op::Gc => plain(In::None, Json(200, s.of::<crate::GcReport>()), &[403]),
        Op::List => Shape {
            query: q(vec![(
                "label",
                ArrayBuilder::new().items(string()).into(),
                false,
                "key=value; repeat to require several",
            )]),
            body: In::None,
            ok: Json(200, s.array_of::<spinup_model::Sandbox>()),
            errors: &[400],
        },
        Op::Create => plain(
            In::Json(s.of::<crate::CreateRequest>(), false),
            Json(201, s.of::<spinup_model::Sandbox>()),
            &[400, 404, 409, 429, 501, 503],
        ),
        Op::Get | Op::Resume | Op::Start | Op::UpdateResources => {
            plain(In::None, Json(200, s.of::<spinup_model::Sandbox>()), SANDBOX)
        }
        Op::Remove => Shape {
            query: q(vec![("force", boolean(), false, "Also a running or paused sandbox")]),
            body: In::None,
            ok: NoContent,
            errors: SANDBOX,
        },
        Op::SetTimeout => {
            plain(In::Json(s.of::<crate::TimeoutRequest>(), true), Json(200, s.of::<spinup_model::Sandbox>()), SANDBOX)
        }
        Op::Info => plain(In::None, Json(200, s.of::<spinup_protocol::AgentInfo>()), SANDBOX),
        Op::Events => plain(In::None, Json(200, s.array_of::<crate::Transition>()), SANDBOX),
        Op::Pause => {
            plain(In::Json(s.of::<crate::PauseRequest>(), false), Json(200, s.of::<spinup_model::Sandbox>()), SANDBOX)
        }
        Op::Snapshot => plain(
            In::Json(s.of::<crate::SnapshotRequest>(), false),
            Json(201, s.of::<spinup_model::Snapshot>()),
            SANDBOX,
        ),
        Op::Fork => plain(
            In::Json(s.of::<crate::ForkRequest>(), false),
            Json(201, s.of::<crate::ForkResult>()),
            &[400, 404, 409, 429, 501, 502, 503],
        ),
        Op::Diff => Shape {
            query: q(vec![
                ("since", string(), false, "A snapshot (id or name); default: since creation"),
                ("path", string(), false, "Only changes under this path"),
                ("content", boolean(), false, "With path naming a file: its text before and after"),
            ]),
            body: In::None,
            ok: Json(200, s.of::<crate::Diff>()),
            errors: SANDBOX,
        },
        Op::Snapshots => plain(In::None, Json(200, s.array_of::<spinup_model::Snapshot>()), &[]),
        Op::GetSnapshot => plain(In::None, Json(200, s.of::<spinup_model::Snapshot>()), &[400, 404]),
        Op::RemoveSnapshot => plain(In::None, NoContent, &[400, 404, 409]),
        Op::SnapshotLayer => plain(In::None, Raw("application/vnd.oci.image.layer.v1.tar"), &[400, 404]),
        Op::SetNetwork => plain(
            In::Json(s.of::<spinup_model::NetworkPolicy>(), false),
            Json(200, s.of::<spinup_model::Sandbox>()),
            SANDBOX,
        ),
        Op::Ports => plain(In::None, Json(200, s.array_of::<spinup_model::PortExposure>()), SANDBOX),
        Op::Expose => {
            plain(In::Json(s.of::<crate::ExposeRequest>(), true), Json(201, s.of::<crate::ExposeAnswer>()), SANDBOX)
        }
        Op::Unexpose => plain(In::None, NoContent, SANDBOX),
        Op::AttachSecrets => {
            plain(In::Json(s.of::<crate::AttachRequest>(), false), Json(200, s.of::<spinup_model::Sandbox>()), SANDBOX)
        }
        Op::Secrets => plain(In::None, Json(200, s.array_of::<crate::SecretInfo>()), &[]),
        Op::Secret => plain(In::None, Json(200, s.of::<crate::SecretInfo>()), &[400, 404]),
        Op::SetSecret => plain(In::Secret, Set(s.of::<crate::SecretInfo>()), &[400, 413]),
        Op::RemoveSecret => plain(In::None, NoContent, &[400, 404, 409]),
        Op::Exec => Shape {
            query: q(vec![("stream", boolean(), false, "Answer NDJSON events (started, stdout, stderr, exit)")]),
            body: In::Json(s.of::<crate::ExecRequest>(), true),
            ok: JsonOrNdJson(s.of::<crate::ExecResult>(), exec_event()),
            errors: SANDBOX,
        },
        Op::ExecWs | Op::AttachWs => plain(In::None, WebSocket, SANDBOX),
        Op::Processes => plain(In::None, Json(200, s.array_of::<spinup_protocol::ProcessInfo>()), SANDBOX),
        Op::Signal => plain(In::Json(s.of::<spinup_protocol::SignalRequest>(), true), Json(200, object()), SANDBOX),
        Op::Stdin => Shape {
            query: q(vec![("close", boolean(), false, "Close stdin after this input")]),
            body: In::Raw("application/octet-stream", "Bytes fed to the process's stdin"),
            ok: Json(200, object()),
            errors: SANDBOX,
        },
        Op::ReadFile => Shape { query: vec![path], body: In::None, ok: Raw("application/octet-stream"), errors: FILES },
        Op::WriteFile => Shape {
            query: vec![
                path,
                ("mode", integer(0, 0o7777), false, "Permission bits (decimal)"),
                ("user", string(), false, "Owner: a user name or uid[:gid], resolved in the guest"),
            ],
            body: In::Raw("application/octet-stream", "The file's content, streamed"),
            ok: Json(200, s.of::<spinup_protocol::FileStat>()),
            errors: FILES,
        },
        Op::StatFile => Shape {
            query: vec![path],
            body: In::None,
            ok: Json(200, s.of::<spinup_protocol::FileStat>()),
            errors: FILES,
        },
        Op::ListFiles => Shape {
            query: vec![path, ("depth", integer(1, 64), false, "Levels to descend (default 1)")],
            body: In::None,
            ok: Json(200, s.array_of::<spinup_protocol::FileStat>()),
            errors: FILES,
        },
        Op::WatchFiles => Shape {
            query: vec![path, ("recursive", boolean(), false, "Also every directory below")],
            body: In::None,
            ok: NdJson(s.of::<spinup_protocol::WatchEvent>()),
            errors: FILES,
        },
        Op::MakeDir => plain(
            In::Json(s.of::<spinup_protocol::PathRequest>(), true),
            Json(200, s.of::<spinup_protocol::FileStat>()),
            FILES,
        ),
        Op::RemovePath => plain(In::Json(s.of::<spinup_protocol::RemoveRequest>(), true), Json(200, object()), FILES),
        Op::RenamePath => plain(
            In::Json(s.of::<spinup_protocol::RenameRequest>(), true),
            Json(200, s.of::<spinup_protocol::FileStat>()),
            FILES,
        ),
        Op::ChmodPath => plain(
            In::Json(s.of::<spinup_protocol::ChmodRequest>(), true),
            Json(200, s.of::<spinup_protocol::FileStat>()),
            FILES,
        ),
        Op::Environments => plain(In::None, Json(200, s.of::<crate::EnvList>()), &[]),
        Op::Environment => plain(In::None, Json(200, s.of::<spinup_model::Environment>()), &[400, 404]),
        Op::RemoveEnvironment => plain(In::None, NoContent, &[400, 403, 404, 409]),
        Op::ImportEnvironment => plain(
            In::Raw("application/octet-stream", "A rootfs tarball (tar or tar.gz), streamed"),
            Json(201, s.of::<spinup_model::Environment>()),
            &[400, 403, 409, 413],
        ),
        Op::BuildEnvironment => plain(In::None, NdJson(s.of::<crate::BuildEvent>()), &[400, 403, 404, 409]),
        Op::RunCode => plain(In::Json(s.of::<crate::CodeRequest>(), true), NdJson(s.of::<crate::CodeEvent>()), SANDBOX),
        Op::CodeContexts => plain(In::None, Json(200, s.array_of::<crate::CodeContext>()), SANDBOX),
        Op::CreateCodeContext => {
            plain(In::Json(s.of::<crate::ContextRequest>(), false), Json(201, s.of::<crate::CodeContext>()), SANDBOX)
        }
        Op::RestartCodeContext => plain(In::None, Json(200, s.of::<crate::CodeContext>()), SANDBOX),
        Op::RemoveCodeContext => plain(In::None, NoContent, SANDBOX),
        Op::Keys => plain(In::None, Json(200, s.array_of::<crate::KeyInfo>()), &[403]),
        Op::CreateKey => {
            plain(In::Json(s.of::<crate::KeyRequest>(), true), Json(201, s.of::<crate::NewKey>()), &[400, 403])
        }
        Op::RemoveKey => plain(In::None, NoContent, &[400, 403, 404]),
        Op::Audit => Shape {
            query: q(vec![
                ("tenant", string(), false, "Only this tenant's entries"),
                ("before", integer(0, i64::MAX), false, "Only entries older than this seq"),
                ("limit", integer(1, 1000), false, "At most this many (default 100)"),
            ]),
            body: In::None,
            ok: Json(200, s.array_of::<crate::AuditEntry>()),
            errors: &[400, 403],
        },
    }
}

/// What each documented status means.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "invalid_argument: a malformed body, query or path parameter",
        401 => "unauthorized: a TCP listener without a valid bearer key",
        403 => "forbidden: an admin operation asked with a tenant's key; permission_denied: the guest refused the path",
        429 => "quota_exceeded: the tenant is at its sandbox, vCPU or memory quota",
        404 => "not_found: no such sandbox, snapshot, environment, secret, process or path",
        409 => "conflict: the object is not in a state that allows this",
        413 => "payload_too_large: the body is over the limit",
        500 => "internal: a bug or a host failure",
        501 => "unsupported: the sandbox's driver lacks the capability (driver and capability say which)",
        502 => "agent_error: the sandbox's agent failed or is gone",
        503 => "unavailable: the driver or a host tool is missing",
        507 => "no_space: the guest's disk is full",
        _ => "error",
    }
}

fn method(m: &str) -> HttpMethod {
    match m {
        "get" => HttpMethod::Get,
        "post" => HttpMethod::Post,
        "put" => HttpMethod::Put,
        "patch" => HttpMethod::Patch,
        "delete" => HttpMethod::Delete,
        other => panic!("ROUTES has a method OpenAPI has no name for: {other}"),
    }
}

/// The schema of a `{segment}` of a path.
fn segment(name: &str, op: Op, s: &mut Schemas) -> (RefOr<Schema>, &'static str) {
    match (name, op) {
        ("id", Op::GetSnapshot | Op::RemoveSnapshot | Op::SnapshotLayer) => (string(), "Snapshot id or name"),
        ("id", Op::RemoveKey) => (string(), "Key id"),
        ("id", _) => (s.of::<spinup_model::SandboxId>(), "Sandbox id"),
        ("pid", _) => (integer(1, u32::MAX.into()), "Process id in the sandbox"),
        ("port", _) => (integer(1, 65535), "Guest port"),
        ("context", _) => (
            ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z0-9_-]{1,64}$")).into(),
            "Code context id",
        ),
        _ => (string(), "Name"),
    }
}

pub fn document() -> serde_json::Value {
    let mut s = Schemas::default();
    let error = s.of::<crate::ErrorBody>();
    let json_content = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let mut paths = PathsBuilder::new();
    for r in ROUTES {
        let shape = shape(r.op, &mut s);
        let mut op = OperationBuilder::new().operation_id(Some(format!("{:?}", r.op))).summary(Some(r.summary));
        for name in r.path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))) {
            let (schema, what) = segment(name, r.op, &mut s);
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(what))
                    .schema(Some(schema)),
            );
        }
        for (name, schema, required, what) in shape.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Query)
                    .required(if required { Required::True } else { Required::False })
                    .description(Some(what))
                    .schema(Some(schema)),
            );
        }
        op = match shape.body {
            In::None => op,
            In::Json(schema, required) => op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json_content(schema))
                    .required(Some(if required { Required::True } else { Required::False }))
                    .build(),
            )),
            In::Raw(media, what) => op.request_body(Some(
                RequestBodyBuilder::new()
                    .description(Some(what))
                    .content(media, ContentBuilder::new().build())
                    .required(Some(Required::False))
                    .build(),
            )),
            In::Secret => {
                let value = ObjectBuilder::new()
                    .property("value", string())
                    .required("value")
                    .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)));
                op.request_body(Some(
                    RequestBodyBuilder::new()
                        .description(Some("The value: raw bytes, or {\"value\": \"...\"} as JSON; encrypted at rest"))
                        .content("application/octet-stream", ContentBuilder::new().build())
                        .content("application/json", json_content(value.into()))
                        .required(Some(Required::False))
                        .build(),
                ))
            }
        };
        let ok = |desc: &str| ResponseBuilder::new().description(desc);
        op = match shape.ok {
            Out::Json(status, schema) => {
                op.response(status.to_string(), ok("Success").content("application/json", json_content(schema)))
            }
            Out::NdJson(schema) => op.response(
                "200",
                ok("Newline-delimited JSON, one value per line, streamed")
                    .content("application/x-ndjson", json_content(schema)),
            ),
            Out::JsonOrNdJson(whole, line) => op.response(
                "200",
                ok("The result as JSON; with ?stream=true, NDJSON events as they come")
                    .content("application/json", json_content(whole))
                    .content("application/x-ndjson", json_content(line)),
            ),
            Out::Raw(media) => {
                op.response("200", ok("The bytes, streamed").content(media, ContentBuilder::new().build()))
            }
            Out::NoContent => op.response("204", ok("Done")),
            Out::WebSocket => op.response("101", ok("WebSocket: binary messages carry protocol frames")),
            Out::Set(schema) => op
                .response("200", ok("Replaced").content("application/json", json_content(schema.clone())))
                .response("201", ok("Created").content("application/json", json_content(schema))),
        };
        for status in shape.errors.iter().copied().chain([401, 500]) {
            op = op.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(reason(status))
                    .content("application/json", json_content(error.clone())),
            );
        }
        let item = PathItem::new(method(r.method), op.build());
        paths = paths.path(r.path, item);
    }
    let bearer = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
    let components = s.0.into_iter().fold(ComponentsBuilder::new(), |c, (name, schema)| c.schema(name, schema));
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Spinup API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A small computer for every AI agent. Over TCP every request needs the daemon's key as \
                     `Authorization: Bearer KEY`; the unix socket needs none.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.security_scheme("bearer", bearer).build()))
        .security(Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]))
        .build();
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    constrain(&mut doc);
    doc
}

/// Name formats the daemon checks (spinup-model's validators), as patterns.
const ENV_NAME: &str = "^[a-z0-9_-][a-z0-9._-]{0,63}$";
const SECRET_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]{0,63}$";
const LABEL_KEY: &str = "^[A-Za-z0-9._/-]{1,63}$";
/// What a label value may not hold: C0 and C1 controls and DEL.
const LABEL_VALUE_NOT: &str = "\\u0000-\\u001f\\u007f-\\u009f";
/// The manager's longest timeout: 366 days.
const MAX_TIMEOUT_S: u64 = 366 * 24 * 3600;
/// A guest user: a name or `uid[:gid]`.
const USER: &str = "^([a-z_][a-z0-9_.-]{0,31}|[0-9]{1,9}(:[0-9]{1,9})?)$";
/// A guest path: absolute, no NUL.
const GUEST_PATH: &str = "^/[^\\u0000]*$";
const DRIVERS: [&str; 3] = ["container", "gvisor", "microvm"];
const SNAPSHOT_NAME: &str = "^[a-z0-9_-][a-z0-9._-]{0,63}$";
/// One octet of an IPv4 address, without leading zeros (which the
/// daemon's parser refuses).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
/// A port, 0 (any free one) to 65535.
const PORT: &str = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)";
/// A host name (`pypi.org`, `*.pythonhosted.org`).
const HOST_NAME: &str =
    "^(?![0-9.]*$)(\\*\\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$";

/// What the types alone cannot say: the validators' formats and ranges
/// (spinup-model's `validate_*`, the service's checks) and cross-field
/// rules, written onto the derived schemas. Each entry mirrors a check the
/// daemon makes, so a client generated from the document sends what the
/// daemon takes.
fn constrain(doc: &mut serde_json::Value) {
    use serde_json::json;
    let labels = json!({"type": "object", "propertyNames": {"pattern": LABEL_KEY},
        "additionalProperties": {"type": "string", "maxLength": 255, "pattern": format!("^[^{LABEL_VALUE_NOT}]*$")}});
    let s = &mut doc["components"]["schemas"];
    s["CreateRequest"]["properties"]["env"] = json!({"type": ["string", "null"], "pattern": ENV_NAME});
    s["CreateRequest"]["properties"]["driver"] =
        json!({"type": ["string", "null"], "enum": [DRIVERS[0], DRIVERS[1], DRIVERS[2], "auto", null]});
    s["CreateRequest"]["properties"]["labels"] = labels.clone();
    s["SnapshotRequest"]["properties"]["labels"] = labels;
    s["ForkRequest"]["properties"]["driver"] =
        json!({"type": ["string", "null"], "enum": [DRIVERS[0], DRIVERS[1], DRIVERS[2], null]});
    s["ForkRequest"]["properties"]["count"] = json!({"type": ["integer", "null"], "minimum": 1, "maximum": 64});
    s["ExposeRequest"]["properties"]["port"] = json!({"type": "integer", "minimum": 1, "maximum": 65535});
    s["ExposeRequest"]["required"] = json!(["port"]);
    s["SignalRequest"]["properties"]["signal"] = json!({"type": "integer", "minimum": 1, "maximum": 64});
    s["SecretMount"]["properties"]["name"] = json!({"type": "string", "pattern": SECRET_NAME});
    s["AttachRequest"]["properties"]["detach"]["items"] = json!({"type": "string", "pattern": SECRET_NAME});
    for side in ["cols", "rows"] {
        s["PtySize"]["properties"][side] = json!({"type": "integer", "minimum": 0, "maximum": 65535});
    }
    // A sandbox starts from an environment or from a snapshot, not both;
    // a port is exposed on a unix socket or on a TCP address, not both.
    s["CreateRequest"]["not"] = json!({"required": ["env", "from_snapshot"],
        "properties": {"env": {"type": "string"}, "from_snapshot": {"type": "string"}}});
    s["ExposeRequest"]["not"] = json!({"required": ["unix", "listen"],
        "properties": {"unix": {"const": true}, "listen": {"type": "string"}}});
    s["NetworkPolicy"]["properties"]["hosts"]["additionalProperties"] = json!({"type": "string", "format": "ipv4"});
    // exec runs argv, or else cmd: one of them must be there, and argv
    // names a program.
    s["ExecRequest"]["properties"]["argv"]["prefixItems"] = json!([{"type": "string", "minLength": 1}]);
    s["ExecRequest"]["anyOf"] = json!([
        {"required": ["argv"], "properties": {"argv": {"minItems": 1}}},
        {"required": ["cmd"], "properties": {"cmd": {"type": "string", "pattern": "^[^\\u0000]*$"}}}
    ]);
    s["CreateRequest"]["properties"]["timeout_s"] =
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": MAX_TIMEOUT_S});
    s["TimeoutRequest"]["properties"]["timeout_s"] = json!({"type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_S});
    // Environment variables: a name is not empty and holds no `=` or NUL;
    // a value holds no NUL.
    let env_vars = json!({"type": "object",
        "propertyNames": {"pattern": "^[^=\\u0000]+$"}, "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"}});
    s["CreateRequest"]["properties"]["env_vars"] = env_vars.clone();
    s["ExecRequest"]["properties"]["env"] = env_vars.clone();
    s["CodeRequest"]["properties"]["env"] = env_vars;
    s["CodeRequest"]["properties"]["code"] = json!({"type": "string", "pattern": "^[^\\u0000]*$"});
    s["SnapshotRequest"]["properties"]["name"] = json!({"type": ["string", "null"], "pattern": SNAPSHOT_NAME});
    // Ports listen on loopback only.
    s["ExposeRequest"]["properties"]["listen"] =
        json!({"type": ["string", "null"], "pattern": format!("^(127(\\.{OCTET}){{3}}|\\[::1\\]):{PORT}$")});
    // hosts maps exact names (no wildcard) to addresses.
    s["NetworkPolicy"]["properties"]["hosts"]["propertyNames"] =
        json!({"pattern": HOST_NAME.replacen("(\\*\\.)?", "", 1)});
    s["SecretMount"]["properties"]["hosts"]["items"] = json!({"type": "string", "pattern": HOST_NAME});
    let cidr = format!("^({OCTET}\\.){{3}}{OCTET}(/(3[0-2]|[12]?[0-9]))?$");
    s["NetworkPolicy"]["properties"]["allow"]["items"] =
        json!({"type": "string", "anyOf": [{"pattern": HOST_NAME}, {"pattern": cidr}]});
    s["NetworkPolicy"]["properties"]["allow"]["maxItems"] = 256.into();
    s["ExecRequest"]["properties"]["user"] = json!({"type": ["string", "null"], "pattern": USER});
    s["PathRequest"]["properties"]["user"] = json!({"type": ["string", "null"], "pattern": USER});
    s["ExecRequest"]["properties"]["cwd"] = json!({"type": ["string", "null"], "pattern": GUEST_PATH});
    for name in ["PathRequest", "RemoveRequest", "ChmodRequest"] {
        s[name]["properties"]["path"] = json!({"type": "string", "pattern": GUEST_PATH});
    }
    s["RenameRequest"]["properties"]["from"] = json!({"type": "string", "pattern": GUEST_PATH});
    s["RenameRequest"]["properties"]["to"] = json!({"type": "string", "pattern": GUEST_PATH});
    s["ChmodRequest"]["properties"]["mode"] = json!({"type": "integer", "minimum": 0, "maximum": 0o7777});
    s["PathRequest"]["properties"]["mode"] = json!({"type": ["integer", "null"], "minimum": 0, "maximum": 0o7777});
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        for op in item.as_object_mut().expect("path item").values_mut() {
            // utoipa writes `"parameters": null` for an operation without
            // any; OpenAPI wants an array or nothing.
            if let Some(o) = op.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            for p in op.get_mut("parameters").and_then(|v| v.as_array_mut()).into_iter().flatten() {
                let pattern = match (p["in"].as_str(), p["name"].as_str()) {
                    (Some("query"), Some("path")) => GUEST_PATH,
                    (Some("query"), Some("user")) => USER,
                    (Some("path"), Some("name")) if path.starts_with("/v1/secrets") => SECRET_NAME,
                    (Some("path"), Some("name")) => ENV_NAME,
                    (Some("path"), Some("id")) if path.starts_with("/v1/snapshots") => ENV_NAME,
                    (Some("query"), Some("label")) => {
                        p["schema"]["items"] = json!({"type": "string", "pattern": format!("^[A-Za-z0-9._/-]{{1,63}}=[^{LABEL_VALUE_NOT}]{{0,255}}$")});
                        continue;
                    }
                    _ => continue,
                };
                p["schema"]["pattern"] = pattern.into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let d = document();
        assert_eq!(d["openapi"], "3.1.0");
        for r in ROUTES {
            let op = &d["paths"][r.path][r.method];
            assert!(op["summary"].is_string(), "{} {}", r.method, r.path);
            let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(statuses.iter().any(|s| s.starts_with('1') || s.starts_with('2')), "{} {}", r.method, r.path);
            assert!(statuses.iter().any(|s| *s == "401"), "{} {}", r.method, r.path);
        }
    }

    /// Every reference points at a schema the document carries.
    #[test]
    fn every_reference_resolves() {
        let d = document();
        fn walk(v: &serde_json::Value, d: &serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        let name = r.strip_prefix("#/components/schemas/").expect("a schema reference");
                        assert!(d["components"]["schemas"][name].is_object(), "{r} is missing");
                    }
                    m.values().for_each(|x| walk(x, d));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, d)),
                _ => {}
            }
        }
        walk(&d, &d);
    }

    /// The schemas are the types': a required field of a request is
    /// required in the document, and limits are there.
    #[test]
    fn schemas_follow_the_types() {
        let d = document();
        let s = &d["components"]["schemas"];
        assert_eq!(s["TimeoutRequest"]["required"], serde_json::json!(["timeout_s"]));
        assert_eq!(s["ResourcesPatch"]["properties"]["vcpus"]["maximum"], 256.0);
        assert!(s["Sandbox"]["properties"]["id"]["$ref"].as_str().unwrap().ends_with("SandboxId"));
        assert!(s["CreateRequest"]["additionalProperties"] == false, "{}", s["CreateRequest"]);
        // The validators' formats are there too, on properties the types
        // really have (indexing a missing one would make it up).
        for (schema, prop) in [
            ("SecretMount", "hosts"),
            ("ExecRequest", "argv"),
            ("AttachRequest", "detach"),
            ("PtySize", "cols"),
            ("PtySize", "rows"),
        ] {
            assert!(s[schema]["properties"][prop].get("type").is_some(), "{schema}.{prop}: {}", s[schema]);
        }
        assert!(!s["NetworkPolicy"]["properties"]["hosts"]["propertyNames"]["pattern"]
            .as_str()
            .unwrap()
            .contains("\\*"));
        for schema in ["AttachRequest", "PtySize", "CreateRequest", "ExposeRequest"] {
            let props = s[schema]["properties"].as_object().unwrap();
            assert!(props.values().all(|p| !p.is_null()), "{schema}: {props:?}");
        }
        assert_eq!(s["ForkRequest"]["properties"]["count"]["maximum"], 64);
        assert_eq!(s["ExecRequest"]["anyOf"][0]["required"], serde_json::json!(["argv"]));
        for (path, item) in d["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                assert!(op.get("parameters").is_none_or(|p| p.is_array()), "{m} {path}");
            }
        }
    }
}
