//! JMAP request parsing and result references (RFC 8620 §3.3, §3.7).

use serde_json::{json, Map, Value};

use crate::jmap::api::{pointer, resolve_references, Request};
use crate::jmap::limits::MAX_CALLS_IN_REQUEST;

/// Responses are not built past this size, and one call's references may copy in at most this
/// much (the bound the endpoint applies with its `maxSizeRequest`, issue 15 item 7).
const MAX_RESPONSES_BYTES: usize = 8 << 20;

/// The input is a `POST /jmap/api` body. It is parsed as the endpoint parses it, then each call's
/// arguments are resolved against the earlier responses: `Core/echo` answers with its
/// arguments, any other method with `{"ids": [..], "list": [{"id": ..}]}` built from its
/// arguments, so references have something to point at. Checked: a resolved call keeps every
/// argument that was not a reference, gains the referenced ones, and a JSON pointer to each of
/// its keys finds that key's value (RFC 6901 escaping).
pub fn jmap_request(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(request) = serde_json::from_value::<Request>(value) else {
        return;
    };
    if request.method_calls.len() > MAX_CALLS_IN_REQUEST {
        return;
    }
    let mut responses: Vec<(String, Value, String)> = Vec::new();
    let mut size = 0;
    for (name, args, call_id) in request.method_calls {
        let direct: Map<String, Value> = args
            .iter()
            .filter(|(k, _)| !k.starts_with('#'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let references = args.len() - direct.len();
        let response = match resolve_references(args, &responses, MAX_RESPONSES_BYTES) {
            Ok(resolved) => {
                for (k, v) in &direct {
                    assert_eq!(resolved.get(k), Some(v), "direct argument {k:?} changed");
                }
                assert!(resolved.len() <= direct.len() + references);
                let object = Value::Object(resolved);
                for (k, v) in object.as_object().into_iter().flatten() {
                    let path = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
                    assert_eq!(
                        pointer(&object, &path).as_ref(),
                        Some(v),
                        "pointer {path:?}"
                    );
                }
                if name == "Core/echo" {
                    (name, object, call_id)
                } else {
                    let ids: Vec<Value> = object
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| Value::String(k.clone()))
                        .collect();
                    let list: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
                    (name, json!({ "ids": ids, "list": list }), call_id)
                }
            }
            Err(e) => ("error".into(), json!({ "type": e.kind }), call_id),
        };
        size += serde_json::to_vec(&response.1).map_or(0, |v| v.len());
        if size > MAX_RESPONSES_BYTES {
            return;
        }
        responses.push(response);
    }
    assert!(pointer(&Value::Null, "").is_some());
}
