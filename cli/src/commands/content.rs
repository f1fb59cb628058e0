//! `corral console NAME [-f]` (an instance's serial console) and
//! `corral image upload NAME FILE` (an Image's bytes).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use std::io::Write;

use super::{usage, ConnArgs, Ctx};

#[derive(Args)]
pub struct ConsoleArgs {
    /// The instance.
    pub name: String,
    /// Keep printing what the guest writes (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last BYTES bytes.
    #[arg(long, value_name = "BYTES")]
    pub tail: Option<usize>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// The part of `now` not yet printed, given what was printed last (the
/// server keeps a bounded tail, so the two may only overlap).
fn unseen<'a>(before: &[u8], now: &'a [u8]) -> &'a [u8] {
    if now.starts_with(before) {
        return &now[before.len()..];
    }
    // The window slid: find the longest suffix of `before` that `now`
    // starts with.
    for k in (1..=before.len().min(now.len())).rev() {
        if before[before.len() - k..] == now[..k] {
            return &now[k..];
        }
    }
    now
}

pub async fn console(args: ConsoleArgs) -> Result<i32> {
    let ctx = Ctx::from_conn(&args.conn)?;
    let project = ctx.project().await?;
    let path = format!("/v1/projects/{project}/instances/{}/console", args.name);
    let tail = args.tail.map(|t| t.to_string());
    let query: Vec<(&str, &str)> = tail.iter().map(|t| ("tail", t.as_str())).collect();
    let mut printed = ctx.client.get_bytes(&path, &query).await?;
    let mut out = std::io::stdout();
    out.write_all(&printed)?;
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = match ctx.client.get_bytes(&path, &[]).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let new = unseen(&printed, &now);
        if !new.is_empty() {
            out.write_all(new)?;
            out.flush()?;
        }
        printed = now;
    }
}

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Send a file as the bytes of an Image whose source is `upload: true`.
    Upload {
        /// The Image.
        name: String,
        /// The file (qcow2, raw or ISO, as the Image's format says).
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

pub async fn image(args: ImageArgs) -> Result<i32> {
    let ImageCommand::Upload { name, file, conn } = args.command;
    let ctx = Ctx::from_conn(&conn)?;
    let project = ctx.project().await?;
    let f = tokio::fs::File::open(&file)
        .await
        .map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let total = f
        .metadata()
        .await
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        chunk
    });
    let shown = name.clone();
    let progress = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let done = sent.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(pct) = (done * 100).checked_div(total) {
                eprint!("\ruploading image/{shown}: {pct}%");
            }
        }
    });
    let result = ctx
        .client
        .put_stream(
            &format!("/v1/projects/{project}/images/{name}/content"),
            &[],
            reqwest::Body::wrap_stream(stream),
            total,
        )
        .await;
    progress.abort();
    let answer = result?;
    eprint!("\r");
    println!(
        "image/{name} uploaded: {} bytes, sha256 {}",
        answer["sizeBytes"].as_u64().unwrap_or(total),
        answer["sha256"].as_str().unwrap_or("?")
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::unseen;

    #[test]
    fn follow_prints_only_what_is_new() {
        assert_eq!(unseen(b"", b"abc"), b"abc");
        assert_eq!(unseen(b"abc", b"abcdef"), b"def");
        assert_eq!(unseen(b"abcdef", b"abcdef"), b"");
        // The bounded window slid by two bytes and grew by three.
        assert_eq!(unseen(b"abcdef", b"cdefxyz"), b"xyz");
        // Nothing in common: all of it is new.
        assert_eq!(unseen(b"abc", b"xyz"), b"xyz");
    }
}
