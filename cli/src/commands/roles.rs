//! Project roles: `corral user grant|ungrant` and the projects `corral
//! whoami` lists.

use anyhow::Result;
use serde_json::{json, Value};

use super::output::text_at;
use super::seg;
use super::Ctx;

pub async fn grant(ctx: &Ctx, user: &str, project: &str, role: &str) -> Result<()> {
    let path = format!("/v1/users/{}/projects/{}", seg(user), seg(project));
    let body = json!({ "role": role });
    let done = ctx
        .client
        .request(reqwest::Method::PUT, &path, &[], Some(&body))
        .await?;
    println!("user/{user} is now {role} in project {project}");
    print_projects(&done);
    Ok(())
}

pub async fn ungrant(ctx: &Ctx, user: &str, project: &str) -> Result<()> {
    let path = format!("/v1/users/{}/projects/{}", seg(user), seg(project));
    let done = ctx.client.delete(&path, &[]).await?;
    println!("user/{user} has no role in project {project} any more");
    print_projects(&done);
    Ok(())
}

/// `Projects: a (viewer), b (member)` from an answer's `projects`.
pub fn print_projects(v: &Value) {
    let Some(list) = v.get("projects").and_then(Value::as_array) else {
        return;
    };
    if list.is_empty() {
        return;
    }
    let text: Vec<String> = list
        .iter()
        .map(|p| format!("{} ({})", text_at(p, "/project"), text_at(p, "/role")))
        .collect();
    println!("Projects: {}", text.join(", "));
}
