//! The OpenAPI 3 document served at `/v1/openapi.json`, built from
//! [`crate::ROUTES`], so it lists exactly what the router serves.

use serde_json::{json, Value};

use crate::ROUTES;

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = json!({
            "operationId": format!("{:?}", r.op),
            "summary": r.summary,
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
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "driver": {"type": "string"},
                "capability": {"type": "string"}
            }
        }}}
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_in_the_document() {
        let d = super::document();
        for r in crate::ROUTES {
            assert!(d["paths"][r.path][r.method]["summary"].is_string(), "{} {}", r.method, r.path);
        }
    }
}
