//! Lists and watches of a kind: the collection GET, paged lists and the
//! NDJSON watch stream.

use super::*;

pub(super) async fn list_or_watch(
    state: &ApiState,
    p: &Principal,
    kind: &Arc<dyn KindApi>,
    project: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let info = kind.info();
    let mut params = ListParams::from_query(query)?;
    if p.role == Role::Node && crate::node_refs::REFERENCED_KINDS.contains(&info.plural) {
        // A node lists or watches what its bound objects use one object
        // at a time, narrowed to its name and checked as a read of it
        // would be (kubelet's watch of the secrets its pods name).
        let name = one_name(&params).ok_or_else(|| {
            ApiError::forbidden(format!(
                "node {:?} lists {} only one at a time: add \
                 fieldSelector=metadata.name=NAME and ?for=instances/NAME",
                p.node, info.plural
            ))
        })?;
        let for_ = query.get("for").map(String::as_str);
        crate::node_refs::check(
            &state.store,
            p,
            info.plural,
            project.unwrap_or(""),
            &name,
            for_,
        )
        .await?;
        params.names = vec![name];
    } else {
        p.authorize(Verb::List, info, project)?;
    }
    if let Some(node) = p.node_filter(info) {
        params.restrict_to_node(node);
    }
    if info.plural == "projects" && p.is_tenant() {
        // Members and viewers see the projects they have a role in.
        params.names = p.projects.iter().map(|(name, _)| name.clone()).collect();
    }
    if params.watch {
        let slot = state.watch_slots.acquire(&watch_client(p))?;
        return watch(state, kind.clone(), project, params, slot).await;
    }
    let out = kind.list(project, &params).await?;
    let metadata = corral_api_types::wire::ListMeta {
        resource_version: out.resource_version.to_string(),
        continue_token: out.continue_token,
    };
    // The items are JSON already: splice them in.
    let size: usize = out.items.iter().map(|i| i.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 256);
    body.extend_from_slice(b"{\"apiVersion\":");
    body.extend_from_slice(&serde_json::to_vec(corral_api_types::API_VERSION).unwrap_or_default());
    body.extend_from_slice(b",\"kind\":");
    body.extend_from_slice(&serde_json::to_vec(&format!("{}List", info.kind)).unwrap_or_default());
    body.extend_from_slice(b",\"metadata\":");
    body.extend_from_slice(&serde_json::to_vec(&metadata).unwrap_or_default());
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in out.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The one name a field selector asks for (`metadata.name=NAME`, alone).
fn one_name(params: &ListParams) -> Option<String> {
    match params.fields.requirements.as_slice() {
        [r] if r.path == "metadata.name" && r.equal && !r.value.is_empty() => Some(r.value.clone()),
        _ => None,
    }
}

/// Whose watches count together: a node agent's node, else the user.
pub(super) fn watch_client(p: &Principal) -> String {
    if p.node.is_empty() {
        p.user.clone()
    } else {
        format!("node:{}", p.node)
    }
}

pub(super) async fn watch(
    state: &ApiState,
    kind: Arc<dyn KindApi>,
    project: Option<&str>,
    params: ListParams,
    slot: crate::limits::WatchSlot,
) -> Result<Response, ApiError> {
    let info = kind.info();
    // Without a version: the current objects first, as ADDED.
    let (initial, start) = match params.resource_version {
        Some(rv) => (Vec::new(), rv),
        None => {
            let mut all = Vec::new();
            let mut p = params.clone();
            p.limit = None;
            p.continue_token = None;
            let out = kind.list(project, &p).await?;
            all.extend(out.values());
            (all, out.resource_version)
        }
    };
    let mut events = state
        .watch_cache
        .watch(
            kind.clone(),
            project,
            params.fields.required("status.nodeName"),
            start,
        )
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let heartbeat = params.heartbeat;
    let kind_name = info.kind;
    tokio::spawn(async move {
        // Held while the stream lives: the client's watch count.
        let _slot = slot;
        let line = |v: Value| {
            let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
            bytes.push(b'\n');
            Ok(Bytes::from(bytes))
        };
        for object in initial {
            if tx
                .send(line(json!({"type": "ADDED", "object": object})))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut last_rv = start;
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.reset();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": corral_api_types::API_VERSION,
                        "kind": kind_name,
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    }});
                    if tx.send(line(bookmark)).await.is_err() {
                        return;
                    }
                }
                item = events.recv() => {
                    let Some(item) = item else { return };
                    match item {
                        WatchItem::Error(e) => {
                            let status = json!({"type": "ERROR", "object": {
                                "kind": "Status", "status": "Failure",
                                "code": e.code.as_u16(), "reason": e.reason, "message": e.message,
                            }});
                            let _ = tx.send(line(status)).await;
                            return;
                        }
                        WatchItem::Event(event) => {
                            last_rv = event.resource_version;
                            let (now, before) = event.matches(&params);
                            // Selector transitions look like adds and deletes
                            // to the watcher, as in Kubernetes.
                            let kind = match (event.kind, before, now) {
                                ("MODIFIED", Some(false), true) => "ADDED",
                                ("MODIFIED", Some(true), false) => "DELETED",
                                (_, _, false) => continue,
                                (k, _, true) => k,
                            };
                            if tx.send(Ok(Bytes::from(event.line(kind)))).await.is_err() {
                                return;
                            }
                            ticker.reset();
                        }
                    }
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
