//! The driver's side of several proxies sharing one epoch: what the etcd
//! session hears, and operator commands handed to or from the leader.

use super::*;

impl Driver {
    /// What the etcd session heard: a mandate, an epoch, etcd lost or back.
    pub(super) async fn on_news(&mut self, news: News) {
        match news {
            News::Mandate(mandate) => {
                self.feed(Event::Mandate(mandate)).await;
            }
            News::Learned(record) => {
                self.feed(Event::Learned(record)).await;
            }
            News::Lost(lost) => {
                let consistent =
                    self.config.consistency.partition_mode == PartitionMode::Consistent;
                self.cut_off = (lost && consistent).then(|| {
                    "etcd is out of reach beyond failover.etcd_grace_ms and partition_mode = consistent: writes are refused until it answers".to_owned()
                });
                if lost && !consistent {
                    warn!("etcd is out of reach; partition_mode = available: writes go on to the last epoch's primary");
                }
                self.publish();
            }
            News::Request {
                from,
                nonce,
                command,
            } => self.on_forwarded(from, nonce, command).await,
        }
    }

    /// Carries out a command another proxy handed to this one, the leader,
    /// and sends the answer back.
    pub(super) async fn on_forwarded(&mut self, from: String, nonce: u64, command: Command) {
        let Some(relay) = self.shared.as_ref().map(|s| s.relay.clone()) else {
            return;
        };
        info!(%from, ?command, "command forwarded by a peer");
        let (reply, answer) = oneshot::channel();
        self.on_command(Request { command, reply }).await;
        tokio::spawn(async move {
            let answer = answer
                .await
                .unwrap_or_else(|_| Err("the leader's control plane stopped".to_owned()));
            relay.reply(from, nonce, answer).await;
        });
    }

    /// Hands `request` to the leader when this proxy shares the epoch and
    /// does not lead; `None` when it was handed on.
    pub(super) fn forward(&self, request: Request) -> Option<Request> {
        let leads = self.machine.as_ref().is_none_or(failover::State::leads);
        let relay = self.shared.as_ref().map(|s| s.relay.clone());
        let (Some(relay), Some(text), false) = (relay, encode_command(&request.command), leads)
        else {
            return Some(request);
        };
        tokio::spawn(async move {
            let _ = request.reply.send(relay.forward(text).await);
        });
        None
    }
}

/// The next news from the etcd session; never, without one.
pub(super) async fn next_news(shared: &mut Option<Coordination>) -> Option<News> {
    match shared {
        Some(shared) => shared.news.recv().await,
        None => std::future::pending().await,
    }
}
