//! `/openapi.json`: an OpenAPI 3.1 document built from the kinds' JSON
//! Schemas (api-types), so it can never disagree with what is validated.

use corral_api_types::{json_schemas, Scope, KINDS};
use serde_json::{json, Map, Value};

/// Moves `$defs` into `components.schemas` and points `$ref`s there.
fn hoist(schema: &mut Value, components: &mut Map<String, Value>) {
    if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
        for (name, mut def) in defs {
            rewrite_refs(&mut def);
            components.entry(name).or_insert(def);
        }
    }
    rewrite_refs(schema);
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/$defs/") {
                    *r = format!("#/components/schemas/{name}");
                }
            }
            for child in map.values_mut() {
                rewrite_refs(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

pub fn document() -> Value {
    let mut components = Map::new();
    for (file, text) in json_schemas() {
        let Ok(mut schema) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let Some(info) = KINDS.iter().find(|k| k.schema_file_name() == file) else {
            continue;
        };
        if let Some(o) = schema.as_object_mut() {
            o.remove("$schema");
        }
        hoist(&mut schema, &mut components);
        components.insert(info.kind.to_string(), schema);
    }
    let mut paths = Map::new();
    for info in KINDS {
        let kind_ref = json!({"$ref": format!("#/components/schemas/{}", info.kind)});
        let one = json!({"description": info.kind, "content": {"application/json": {"schema": kind_ref}}});
        let list = json!({"description": format!("{}List", info.kind), "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": kind_ref}, "metadata": {"type": "object"}}
        }}}});
        let body = json!({"required": true, "content": {
            "application/json": {"schema": kind_ref},
            "application/yaml": {"schema": kind_ref}
        }});
        let (collection, item, params) = match info.scope {
            Scope::Project => (
                format!("/v1/projects/{{project}}/{}", info.plural),
                format!("/v1/projects/{{project}}/{}/{{name}}", info.plural),
                json!([{"name": "project", "in": "path", "required": true, "schema": {"type": "string"}}]),
            ),
            Scope::Cluster => (
                format!("/v1/{}", info.plural),
                format!("/v1/{}/{{name}}", info.plural),
                json!([]),
            ),
        };
        let mut item_params = params.as_array().cloned().unwrap_or_default();
        item_params.push(
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
        let list_params = json!([
            {"name": "labelSelector", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldSelector", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "description": "page size; larger than the maximum is 400", "schema": {"type": "integer", "minimum": 0, "maximum": crate::list::MAX_LIMIT}},
            {"name": "continue", "in": "query", "schema": {"type": "string"}},
            {"name": "watch", "in": "query", "schema": {"type": "boolean"}},
            {"name": "resourceVersion", "in": "query", "schema": {"type": "string"}}
        ]);
        let mut all_list_params = params.as_array().cloned().unwrap_or_default();
        all_list_params.extend(list_params.as_array().cloned().unwrap_or_default());
        paths.insert(collection, json!({
            "get": {"operationId": format!("list{}", info.kind), "parameters": all_list_params, "responses": {"200": list}},
            "post": {"operationId": format!("create{}", info.kind), "parameters": params, "requestBody": body, "responses": {"201": one}}
        }));
        paths.insert(item.clone(), json!({
            "get": {"operationId": format!("get{}", info.kind), "parameters": item_params, "responses": {"200": one}},
            "put": {"operationId": format!("replace{}", info.kind), "parameters": item_params, "requestBody": body, "responses": {"200": one}},
            "delete": {"operationId": format!("delete{}", info.kind), "parameters": item_params, "responses": {"200": one}}
        }));
        paths.insert(format!("{item}/status"), json!({
            "get": {"operationId": format!("get{}Status", info.kind), "parameters": item_params, "responses": {"200": one}},
            "put": {"operationId": format!("replace{}Status", info.kind), "parameters": item_params, "requestBody": body, "responses": {"200": one}}
        }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Corral native API", "version": "v1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    })
}
