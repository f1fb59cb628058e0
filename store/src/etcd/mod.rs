//! The etcd backend: the contract mapped onto etcd transactions.
//!
//! - create: `txn(create_revision == 0) then put`.
//! - update: one round trip that also detects no-op writes:
//!   `txn(mod == exp && value == new) then {} else txn(mod == exp) then put else get`.
//! - list pages all read at the first page's revision.
//! - watches resume after a dropped connection from the last delivered
//!   revision + 1 (etcd-client does not), and end with `Expired` when etcd
//!   says the revision was compacted ([`watch`]).
//!
//! This module holds the connection, the mapping of etcd's errors and
//! key-values onto the contract's, and the reads and writes; it must not
//! keep state of its own beyond the client (several servers share etcd).

mod watch;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
    TxnOpResponse,
};

use crate::contract::{
    check_update_revision, continue_token, prefix_end, KeyValue, ListOptions, ListPage, Result,
    Store, StoreError, UpdateOutcome, WatchStream,
};

/// Store on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    /// Connects to the given endpoints (`http://127.0.0.1:2379`, ...).
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(EtcdStore { client })
    }

    /// The underlying client, for what the contract does not cover (leases,
    /// elections) and for benchmarks against raw etcd-client calls.
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// Maps etcd's errors onto the contract's; compaction becomes `Expired`.
fn map_err(e: etcd_client::Error, requested: i64) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        if status.message().contains("compacted") {
            return StoreError::Expired {
                requested,
                compacted: 0,
            };
        }
        // RESOURCE_EXHAUSTED (8): "etcdserver: mvcc: database space
        // exceeded" once the NOSPACE alarm is raised.
        if status.code() as i32 == 8 || status.message().contains("space exceeded") {
            return StoreError::NoSpace(format!(
                "etcd: {} (its backend quota is exhausted; writes resume once space is freed)",
                status.message()
            ));
        }
        // gRPC codes CANCELLED (1), DEADLINE_EXCEEDED (4), UNAVAILABLE (14).
        if matches!(status.code() as i32, 1 | 4 | 14) {
            return unavailable(e);
        }
    }
    if matches!(
        e,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)
    ) {
        return unavailable(e);
    }
    StoreError::Backend(Box::new(e))
}

fn utf8_key(key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec())
        .map_err(|e| StoreError::Backend(format!("non UTF-8 key: {e}").into()))
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = utf8_key(kv.key())?;
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// Why a write whose revision precondition failed was refused, from the
/// key's current state: `NotFound` when it is gone, `Conflict` otherwise.
fn missing_or_conflict(
    key: &str,
    expected: i64,
    current: Option<&etcd_client::KeyValue>,
) -> StoreError {
    match current {
        None => StoreError::NotFound {
            key: key.to_string(),
        },
        Some(current) => StoreError::Conflict {
            key: key.to_string(),
            expected,
            current: current.mod_revision(),
        },
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd response without header".into()))
}

/// Values up to this size are compared with the stored one inside the
/// update's transaction (one round trip); bigger ones are read first.
const INLINE_COMPARE_MAX: usize = 256 * 1024;

/// The largest value put in etcd: its default request limit (1.5 MiB)
/// less room for the key and the transaction around the value.
pub const ETCD_MAX_VALUE_BYTES: usize = 1_500_000;

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    /// etcd refuses requests over its `--max-request-bytes` (1.5 MiB by
    /// default); the key and the request's framing take some of it.
    fn max_value_bytes(&self) -> usize {
        ETCD_MAX_VALUE_BYTES
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        tracing::trace!(key, "etcd get");
        let mut kv = self.client.kv_client();
        let resp = kv.get(key, None).await.map_err(|e| map_err(e, 0))?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = kv.txn(txn).await.map_err(|e| map_err(e, 0))?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        header_revision(resp.header())
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
    ) -> Result<UpdateOutcome> {
        check_update_revision(key, expected_revision)?;
        let mut kv = self.client.kv_client();
        let write = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let (inner, revision) = if value.len() > INLINE_COMPARE_MAX {
            // A big value compared in the transaction would travel twice
            // in one request, and etcd refuses requests over 1.5 MiB: an
            // 800 KiB object (a big network's address table) could never
            // be written. Compare here instead; the put still swaps on
            // the revision, so nothing written meanwhile is lost.
            let current = kv.get(key, None).await.map_err(|e| map_err(e, 0))?;
            match current.kvs().first() {
                Some(c) if c.mod_revision() != expected_revision => {
                    return Err(missing_or_conflict(key, expected_revision, Some(c)))
                }
                None => return Err(missing_or_conflict(key, expected_revision, None)),
                Some(c) if c.value() == value.as_slice() => {
                    return Ok(UpdateOutcome {
                        revision: expected_revision,
                        changed: false,
                    })
                }
                Some(_) => {}
            }
            let resp = kv.txn(write).await.map_err(|e| map_err(e, 0))?;
            let revision = header_revision(resp.header())?;
            (resp, revision)
        } else {
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key, CompareOp::Equal, expected_revision),
                    Compare::value(key, CompareOp::Equal, value),
                ])
                .or_else([TxnOp::txn(write)]);
            let resp = kv.txn(txn).await.map_err(|e| map_err(e, 0))?;
            if resp.succeeded() {
                return Ok(UpdateOutcome {
                    revision: expected_revision,
                    changed: false,
                });
            }
            let revision = header_revision(resp.header())?;
            let Some(TxnOpResponse::Txn(inner)) = resp.op_responses().into_iter().next() else {
                return Err(StoreError::Backend(
                    "etcd txn without nested response".into(),
                ));
            };
            (inner, revision)
        };
        if inner.succeeded() {
            return Ok(UpdateOutcome {
                revision,
                changed: true,
            });
        }
        match inner.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => Err(missing_or_conflict(
                key,
                expected_revision,
                get.kvs().first(),
            )),
            _ => Err(StoreError::Backend("etcd txn without get response".into())),
        }
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(KeyValue, i64)> {
        let mut kv = self.client.kv_client();
        let compares = match expected_revision {
            Some(rev) => vec![Compare::mod_revision(key, CompareOp::Equal, rev)],
            None => vec![],
        };
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = kv.txn(txn).await.map_err(|e| map_err(e, 0))?;
        let revision = header_revision(resp.header())?;
        let first = resp.op_responses().into_iter().next();
        match (resp.succeeded(), first) {
            (true, Some(TxnOpResponse::Delete(del))) => match del.prev_kvs().first() {
                Some(prev) => Ok((convert_kv(prev)?, revision)),
                None => Err(StoreError::NotFound {
                    key: key.to_string(),
                }),
            },
            (false, Some(TxnOpResponse::Get(get))) => Err(missing_or_conflict(
                key,
                expected_revision.unwrap_or(0),
                get.kvs().first(),
            )),
            _ => Err(StoreError::Backend(
                "unexpected etcd delete response".into(),
            )),
        }
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        tracing::trace!(prefix, "etcd list");
        // An unbounded list is read in pages at one revision: one etcd
        // response is capped (4 MiB by default), a big kind is not.
        if options.limit.unwrap_or(0) == 0 {
            let mut page = self
                .list_page(
                    prefix,
                    ListOptions {
                        limit: Some(UNBOUNDED_PAGE),
                        ..options
                    },
                )
                .await?;
            let mut items = std::mem::take(&mut page.items);
            while let Some(token) = page.continue_token.take() {
                page = self
                    .list_page(
                        prefix,
                        ListOptions {
                            limit: Some(UNBOUNDED_PAGE),
                            continue_token: Some(token),
                            revision: None,
                        },
                    )
                    .await?;
                items.append(&mut page.items);
            }
            return Ok(ListPage {
                items,
                revision: page.revision,
                continue_token: None,
            });
        }
        self.list_page(prefix, options).await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        self.watch_from(prefix, after_revision).await
    }

    async fn current_revision(&self) -> Result<i64> {
        self.revision_now().await
    }

    async fn health(&self) -> Result<()> {
        self.revision_now().await?;
        if !self.nospace_alarms().await?.is_empty() {
            return Err(StoreError::NoSpace(
                "etcd has raised its NOSPACE alarm: its backend quota is exhausted; writes fail until space is freed (Corral compacts, defragments and disarms then)".into(),
            ));
        }
        Ok(())
    }

    /// The operator's NOSPACE runbook, automated: when the alarm is up,
    /// compact all history, defragment, and disarm. If space is still
    /// short, etcd raises the alarm again at the next write.
    async fn heal(&self) -> Result<bool> {
        let alarms = self.nospace_alarms().await?;
        if alarms.is_empty() {
            return Ok(false);
        }
        let revision = self.revision_now().await?;
        match self.compact_to(revision).await {
            Ok(()) | Err(StoreError::Expired { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut maintenance = self.client.maintenance_client();
        maintenance.defragment().await.map_err(|e| map_err(e, 0))?;
        for member in alarms {
            let mut options = etcd_client::AlarmOptions::new();
            options.with_member(member);
            maintenance
                .alarm(
                    etcd_client::AlarmAction::Deactivate,
                    etcd_client::AlarmType::Nospace,
                    Some(options),
                )
                .await
                .map_err(|e| map_err(e, 0))?;
        }
        tracing::warn!(
            revision,
            "etcd was out of space: compacted, defragmented and disarmed NOSPACE"
        );
        Ok(true)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.compact_to(revision).await
    }
}

/// Page size of unbounded lists.
const UNBOUNDED_PAGE: usize = 1000;

impl EtcdStore {
    async fn list_page(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        let (start, revision) = match &options.continue_token {
            Some(token) => {
                let (rev, last) = continue_token::decode(token)?;
                if !last.starts_with(prefix) {
                    return Err(StoreError::InvalidContinueToken);
                }
                let mut start = last.into_bytes();
                start.push(0);
                (start, rev)
            }
            None => (prefix.as_bytes().to_vec(), options.revision.unwrap_or(0)),
        };
        let limit = options.limit.unwrap_or(0);
        let mut get = GetOptions::new().with_range(prefix_end(prefix));
        if limit > 0 {
            get = get.with_limit(limit as i64);
        }
        if revision > 0 {
            get = get.with_revision(revision);
        }
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(start, Some(get))
            .await
            .map_err(|e| map_err(e, revision))?;
        // A page read at an explicit revision reports the header's (newest)
        // revision; the page itself is as of `revision`.
        let page_revision = if revision > 0 {
            revision
        } else {
            header_revision(resp.header())?
        };
        let items = resp
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>>>()?;
        let continue_token = if resp.more() {
            items
                .last()
                .map(|last| continue_token::encode(page_revision, &last.key))
        } else {
            None
        };
        Ok(ListPage {
            items,
            revision: page_revision,
            continue_token,
        })
    }

    async fn revision_now(&self) -> Result<i64> {
        let mut kv = self.client.kv_client();
        // A count-only read of one key gives the header revision cheaply.
        let resp = kv
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| map_err(e, 0))?;
        header_revision(resp.header())
    }

    /// The members with a NOSPACE alarm raised.
    async fn nospace_alarms(&self) -> Result<Vec<u64>> {
        let mut maintenance = self.client.maintenance_client();
        let alarms = maintenance
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .map_err(|e| map_err(e, 0))?;
        Ok(alarms
            .alarms()
            .iter()
            .filter(|a| a.alarm() == etcd_client::AlarmType::Nospace)
            .map(|a| a.member_id())
            .collect())
    }

    async fn compact_to(&self, revision: i64) -> Result<()> {
        let mut kv = self.client.kv_client();
        kv.compact(revision, None)
            .await
            .map_err(|e| map_err(e, revision))?;
        Ok(())
    }
}
