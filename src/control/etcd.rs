//! The epoch shared by several proxies through etcd (`failover.store =
//! "etcd"`): the I/O only; the records and the rules are in
//! [`super::peers`], the decisions in the failover state machine.
//!
//! [`EtcdStore`] is the [`EpochStore`]: it stores an epoch only in a
//! transaction conditioned on this proxy still holding the leader key (by
//! its create revision) and on the stored epoch being older, so a deposed
//! leader cannot publish. [`Session`] is the task that keeps this proxy's
//! lease, campaigns for the leader key, reports what this proxy sees under
//! `/peers/<name>`, reads its peers' reports and watches the epoch key; it
//! tells the driver ([`News`]) what it may decide, each epoch stored, and
//! when etcd has been out of reach for longer than `etcd_grace_ms`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp,
};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::epoch::{EpochRecord, EpochStore, EpochStoreError};
use super::failover::Mandate;
use super::peers::{
    decode_answer, decode_command, decode_epoch, encode_answer, encode_epoch, epoch_prefix,
    split_nonce, News, PeerReport, PeerView, Peers, Relay,
};
use crate::config::Config;

/// The lease's time to live: how soon a dead leader's key expires.
const LEASE_TTL_SECS: i64 = 2;
/// How often the lease is renewed and the peers' reports read.
const ROUND: Duration = Duration::from_millis(200);
/// The longest one round, or one store, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command run on a proxy that does not lead waits for the
/// leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of one cluster.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    epoch: String,
    leader: String,
    peers: String,
    me: String,
    requests: String,
    my_request: String,
    my_reply: String,
}

impl Keys {
    fn new(prefix: &str, me: &str) -> Keys {
        Keys {
            prefix: format!("{prefix}/"),
            epoch: format!("{prefix}/epoch"),
            leader: format!("{prefix}/leader"),
            peers: format!("{prefix}/peers/"),
            me: format!("{prefix}/peers/{me}"),
            requests: format!("{prefix}/requests/"),
            my_request: format!("{prefix}/requests/{me}"),
            my_reply: format!("{prefix}/replies/{me}"),
        }
    }
}

/// The connection and what this proxy holds in etcd.
struct Etcd {
    client: Client,
    keys: Keys,
    name: String,
    /// The create revision of the leader key while this proxy holds it.
    held: Mutex<Option<i64>>,
}

impl Etcd {
    fn held(&self) -> Option<i64> {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, revision: Option<i64>) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = revision;
    }

    async fn load(&self) -> Result<Option<EpochRecord>, etcd_client::Error> {
        let got = self
            .client
            .clone()
            .get(self.keys.epoch.as_str(), None)
            .await?;
        Ok(got.kvs().first().and_then(|kv| decode_epoch(kv.value())))
    }

    /// Stores the record if this proxy leads and the stored one is older.
    async fn put_epoch(
        &self,
        leader: i64,
        record: &EpochRecord,
    ) -> Result<bool, etcd_client::Error> {
        let mut client = self.client.clone();
        let key = self.keys.epoch.as_str();
        let stored = client.get(key, None).await?;
        let older = match stored.kvs().first() {
            None => Compare::version(key, CompareOp::Equal, 0),
            Some(_) => Compare::value(key, CompareOp::Less, epoch_prefix(record.epoch)),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys.leader.as_str(), CompareOp::Equal, leader),
                older,
            ])
            .and_then([TxnOp::put(
                key,
                encode_epoch(record.epoch, &record.primary),
                None,
            )]);
        Ok(client.txn(txn).await?.succeeded())
    }
}

#[async_trait]
impl Relay for Etcd {
    async fn forward(&self, command: String) -> Result<String, String> {
        let nonce = rand::random::<u64>();
        let mut client = self.client.clone();
        let keys = &self.keys;
        let unreachable =
            |e: etcd_client::Error| format!("cannot reach the leader through etcd: {e}");
        client
            .put(keys.my_request.as_str(), format!("{nonce} {command}"), None)
            .await
            .map_err(unreachable)?;
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        while Instant::now() < deadline {
            tokio::time::sleep(ROUND / 2).await;
            let Ok(got) = client.get(keys.my_reply.as_str(), None).await else {
                continue;
            };
            let answer = got
                .kvs()
                .first()
                .and_then(|kv| decode_answer(kv.value(), nonce));
            if let Some(answer) = answer {
                let _ = client.delete(keys.my_reply.as_str(), None).await;
                return answer;
            }
        }
        let _ = client.delete(keys.my_request.as_str(), None).await;
        Err(format!(
            "{command}: no proxy leading the proxies sharing the epoch answered within {FORWARD_TIMEOUT:?}"
        ))
    }

    async fn reply(&self, to: String, nonce: u64, answer: Result<String, String>) {
        let key = format!("{}replies/{to}", self.keys.prefix);
        let put = self
            .client
            .clone()
            .put(key, encode_answer(nonce, &answer), None)
            .await;
        if let Err(e) = put {
            warn!(to, error = %e, "cannot answer a forwarded command");
        }
    }
}

/// The epoch record in etcd, written only by the leader.
pub struct EtcdStore {
    etcd: Arc<Etcd>,
    runtime: Handle,
}

impl EpochStore for EtcdStore {
    fn load(&self) -> Result<Option<EpochRecord>, EpochStoreError> {
        let loaded = self
            .runtime
            .block_on(tokio::time::timeout(CALL_TIMEOUT * 5, self.etcd.load()));
        match loaded {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(e)) => Err(EpochStoreError::Etcd(e.to_string())),
            Err(_) => Err(EpochStoreError::Etcd("no answer in time".to_owned())),
        }
    }

    fn store(&self, epoch: u64, primary: &str) -> Result<(), EpochStoreError> {
        let record = EpochRecord::checked(epoch, primary)?;
        let Some(leader) = self.etcd.held() else {
            return Err(EpochStoreError::NotLeader { epoch });
        };
        let stored = self.runtime.block_on(tokio::time::timeout(
            CALL_TIMEOUT,
            self.etcd.put_epoch(leader, &record),
        ));
        match stored {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(EpochStoreError::NotLeader { epoch }),
            Ok(Err(e)) => Err(EpochStoreError::Etcd(e.to_string())),
            Err(_) => Err(EpochStoreError::Etcd("no answer in time".to_owned())),
        }
    }
}

/// What [`start`] returns: the store, the session to run, and what the
/// driver and the console read.
pub struct Started {
    pub store: Arc<dyn EpochStore>,
    pub session: Session,
    pub news: mpsc::Receiver<News>,
    pub view: watch::Sender<PeerView>,
    pub peers: watch::Receiver<Peers>,
    pub relay: Arc<dyn Relay>,
}

/// Connects (lazily: an etcd that is down now is retried by the session).
pub async fn start(config: &Config, shutdown: watch::Receiver<bool>) -> Result<Started, String> {
    let f = &config.failover;
    let name = f.etcd_name.clone().unwrap_or_else(|| default_name(config));
    let client = Client::connect(&f.etcd_endpoints, Some(options(config)?))
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let etcd = Arc::new(Etcd {
        client,
        keys: Keys::new(&f.etcd_prefix, &name),
        name: name.clone(),
        held: Mutex::new(None),
    });
    let (news_tx, news) = mpsc::channel(64);
    let (view, view_rx) = watch::channel(PeerView::default());
    let (peers_tx, peers) = watch::channel(Peers {
        me: name,
        ..Peers::default()
    });
    let session = Session {
        etcd: etcd.clone(),
        grace: f.etcd_grace(),
        view: view_rx,
        news: news_tx,
        peers: peers_tx,
        shutdown,
        lease: None,
        last_ok: Instant::now(),
        lost: false,
        mandate: Mandate::NONE,
    };
    let store = Arc::new(EtcdStore {
        etcd: etcd.clone(),
        runtime: Handle::current(),
    });
    Ok(Started {
        relay: etcd,
        store,
        session,
        news,
        view,
        peers,
    })
}

fn options(config: &Config) -> Result<ConnectOptions, String> {
    let f = &config.failover;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), CALL_TIMEOUT);
    if let (Some(user), Some(password)) = (&f.etcd_user, &f.etcd_password) {
        options = options.with_user(user, password);
    }
    if let Some(ca) = &f.etcd_ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("failover.etcd_ca_file {}: {e}", ca.display()))?;
        options = options.with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem)));
    }
    Ok(options)
}

/// The host's name and the listen address: unique among the proxies of a
/// cluster unless two share a host and a port.
fn default_name(config: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host}/{}", config.proxy.listen)
}

/// This proxy's lease, and its keep-alive stream while etcd answers.
struct Lease {
    id: i64,
    alive: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// The task that keeps this proxy's place among its peers.
pub struct Session {
    etcd: Arc<Etcd>,
    grace: Duration,
    view: watch::Receiver<PeerView>,
    news: mpsc::Sender<News>,
    peers: watch::Sender<Peers>,
    shutdown: watch::Receiver<bool>,
    lease: Option<Lease>,
    /// The last round etcd answered.
    last_ok: Instant,
    lost: bool,
    mandate: Mandate,
}

impl Session {
    pub async fn run(mut self) {
        let watching = tokio::spawn(watch_epoch(
            self.etcd.clone(),
            self.news.clone(),
            self.shutdown.clone(),
        ));
        loop {
            match tokio::time::timeout(CALL_TIMEOUT, self.round()).await {
                Ok(Ok((peers, record))) => self.answered(peers, record).await,
                Ok(Err(e)) => self.unanswered(&e.to_string()).await,
                Err(_) => self.unanswered("no answer in time").await,
            }
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                Ok(()) = self.view.changed() => {}
                _ = self.shutdown.changed() => break,
            }
        }
        watching.abort();
        if let Some(lease) = &self.lease {
            // Leaving: the leader key and the report go at once.
            let mut client = self.etcd.client.clone();
            let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease.id)).await;
        }
    }

    async fn tell(&self, news: News) {
        let _ = self.news.send(news).await;
    }

    async fn answered(&mut self, peers: Peers, record: Option<EpochRecord>) {
        self.last_ok = Instant::now();
        if self.lost {
            info!("etcd answers again");
            self.lost = false;
            self.tell(News::Lost(false)).await;
        }
        if let Some(record) = record {
            self.tell(News::Learned(record)).await;
        }
        let mandate = peers.mandate(self.view.borrow().epoch);
        self.set_mandate(mandate).await;
        self.peers.send_replace(peers);
    }

    async fn unanswered(&mut self, error: &str) {
        if let Some(lease) = &mut self.lease {
            lease.alive = None;
        }
        self.set_mandate(Mandate::NONE).await;
        self.peers.send_modify(|p| p.reachable = false);
        if !self.lost && self.last_ok.elapsed() > self.grace {
            warn!(%error, grace_ms = self.grace.as_millis(), "etcd out of reach beyond the grace period");
            self.lost = true;
            self.peers.send_modify(|p| p.lost = true);
            self.tell(News::Lost(true)).await;
        }
    }

    async fn set_mandate(&mut self, mandate: Mandate) {
        if mandate != self.mandate {
            if mandate.lead != self.mandate.lead {
                info!(lead = mandate.lead, name = %self.etcd.name, "etcd leadership");
            }
            self.mandate = mandate;
            self.tell(News::Mandate(mandate)).await;
        }
    }

    /// Renews the lease, reports, reads the peers and the epoch, and
    /// campaigns when no one leads.
    async fn round(&mut self) -> Result<(Peers, Option<EpochRecord>), etcd_client::Error> {
        let lease = self.keep_lease().await?;
        let mut client = self.etcd.client.clone();
        let keys = &self.etcd.keys;
        let view = *self.view.borrow();
        let on_lease = PutOptions::new().with_lease(lease);
        client
            .put(keys.me.as_str(), view.encode(), Some(on_lease))
            .await?;
        let all = client
            .get(keys.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut peers = Peers {
            me: self.etcd.name.clone(),
            reachable: true,
            ..Peers::default()
        };
        let mut record = None;
        let mut leader = None;
        let mut requests = Vec::new();
        for kv in all.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if key == keys.epoch {
                record = decode_epoch(kv.value());
            } else if key == keys.leader {
                leader = Some((kv.create_revision(), kv.lease()));
                peers.leader = Some(String::from_utf8_lossy(kv.value()).into_owned());
            } else if let Some(name) = key.strip_prefix(keys.requests.as_str()) {
                requests.push((name.to_owned(), kv.mod_revision(), kv.value().to_vec()));
            } else if let Some(name) = key.strip_prefix(keys.peers.as_str()) {
                if let Some(v) = PeerView::decode(kv.value()) {
                    peers.reports.push(PeerReport {
                        name: name.to_owned(),
                        epoch: v.epoch,
                        primary_lost: v.primary_lost,
                    });
                }
            }
        }
        if leader.is_none() {
            leader = self.campaign(lease).await?;
            peers.leader = leader.map(|_| self.etcd.name.clone());
        }
        let held = leader.filter(|(_, l)| *l == lease).map(|(rev, _)| rev);
        self.etcd.hold(held);
        peers.leading = held.is_some();
        if peers.leading {
            for (from, revision, value) in requests {
                self.take_request(from, revision, &value).await?;
            }
        }
        Ok((peers, record))
    }

    /// The leader takes a command another proxy left for it, once: the
    /// request is deleted only if it is still the one read.
    async fn take_request(
        &self,
        from: String,
        revision: i64,
        value: &[u8],
    ) -> Result<(), etcd_client::Error> {
        let key = format!("{}{from}", self.etcd.keys.requests);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if !self.etcd.client.clone().txn(txn).await?.succeeded() {
            return Ok(());
        }
        let parsed = split_nonce(value).and_then(|(n, c)| Some((n, decode_command(c)?)));
        match parsed {
            Some((nonce, command)) => {
                self.tell(News::Request {
                    from,
                    nonce,
                    command,
                })
                .await;
            }
            None => warn!(from, "ignoring a forwarded command that does not parse"),
        }
        Ok(())
    }

    /// Takes the leader key if no one holds it: `(create revision, lease)`.
    async fn campaign(&self, lease: i64) -> Result<Option<(i64, i64)>, etcd_client::Error> {
        let key = self.etcd.keys.leader.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.etcd.name.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let done = self.etcd.client.clone().txn(txn).await?;
        let revision = done.header().map(|h| h.revision());
        Ok(revision
            .filter(|_| done.succeeded())
            .map(|rev| (rev, lease)))
    }

    /// This proxy's lease, renewed; a new one when it expired.
    async fn keep_lease(&mut self) -> Result<i64, etcd_client::Error> {
        let mut client = self.etcd.client.clone();
        if let Some(lease) = &mut self.lease {
            if lease.alive.is_none() {
                lease.alive = Some(client.lease_keep_alive(lease.id).await?);
            }
            if let Some((keeper, stream)) = &mut lease.alive {
                keeper.keep_alive().await?;
                if stream.message().await?.is_some_and(|r| r.ttl() > 0) {
                    return Ok(lease.id);
                }
            }
            warn!("etcd lease expired: the leader key and the report are gone");
            self.lease = None;
            self.etcd.hold(None);
        }
        let id = client.lease_grant(LEASE_TTL_SECS, None).await?.id();
        let alive = client.lease_keep_alive(id).await?;
        self.lease = Some(Lease {
            id,
            alive: Some(alive),
        });
        Ok(id)
    }
}

/// Tells the driver each epoch stored, as soon as etcd has it.
async fn watch_epoch(
    etcd: Arc<Etcd>,
    news: mpsc::Sender<News>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let watched = async {
            let mut stream = etcd
                .client
                .clone()
                .watch(etcd.keys.epoch.as_str(), None)
                .await?;
            while let Some(answer) = stream.message().await? {
                for record in answer.events().iter().filter_map(|e| e.kv()) {
                    if let Some(record) = decode_epoch(record.value()) {
                        let _ = news.send(News::Learned(record)).await;
                    }
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            _ = watched => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(ROUND).await;
    }
}
