//! A TCP relay that injects network faults between a client and a server: `cut` resets
//! every current connection, `block` freezes all traffic as a partition would (bytes are
//! neither delivered nor lost, new connections are accepted but get nowhere), and `heal`
//! lets everything flow again. It runs on its own thread and runtime, so it keeps relaying
//! while the test's own runtime is blocked, and it works from sync and async tests alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Forward,
    Hold,
}

struct Faults {
    flow: watch::Sender<Flow>,
    /// Bumped by every `cut`; each connection ends when it sees a bump.
    cuts: watch::Sender<u64>,
}

pub struct FaultyRelay {
    addr: SocketAddr,
    faults: Arc<Faults>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultyRelay {
    /// Starts relaying from a fresh loopback port to `target`.
    pub fn start(target: SocketAddr) -> FaultyRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay: bind");
        listener.set_nonblocking(true).expect("relay: nonblocking");
        let addr = listener.local_addr().expect("relay: local address");
        let faults = Arc::new(Faults {
            flow: watch::channel(Flow::Forward).0,
            cuts: watch::channel(0).0,
        });
        let (shutdown, stopped) = oneshot::channel();
        let shared = faults.clone();
        let thread = std::thread::Builder::new()
            .name(format!("faulty-relay-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay: runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("relay: listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, target, shared) => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing its sockets.
            })
            .expect("relay: spawn thread");
        FaultyRelay {
            addr,
            faults,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every current connection (both sides). Later connections are unaffected.
    pub fn cut(&self) {
        self.faults.cuts.send_modify(|n| *n += 1);
    }

    /// Stops all forwarding: bytes stay where they are and new connections are accepted but
    /// not connected onward, so peers see silence, not errors.
    pub fn block(&self) {
        self.faults.flow.send_replace(Flow::Hold);
    }

    /// Forwards again, including whatever was held while blocked.
    pub fn heal(&self) {
        self.faults.flow.send_replace(Flow::Forward);
    }
}

impl Drop for FaultyRelay {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, faults: Arc<Faults>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let flow = faults.flow.subscribe();
        let cuts = faults.cuts.subscribe();
        tokio::spawn(relay_connection(client, target, flow, cuts));
    }
}

async fn relay_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut flow: watch::Receiver<Flow>,
    mut cuts: watch::Receiver<u64>,
) {
    let work = async {
        if flow.wait_for(|f| *f == Flow::Forward).await.is_err() {
            return;
        }
        let Ok(mut server) = TcpStream::connect(target).await else {
            return;
        };
        for stream in [&client, &server] {
            // Zero linger: dropping the socket sends RST, an abrupt cut rather than a FIN.
            let _ = stream.set_zero_linger();
            let _ = stream.set_nodelay(true);
        }
        let (client_rx, client_tx) = client.split();
        let (server_rx, server_tx) = server.split();
        let _ = tokio::try_join!(
            pump(client_rx, server_tx, flow.clone()),
            pump(server_rx, client_tx, flow.clone()),
        );
    };
    tokio::select! {
        biased;
        _ = cuts.changed() => {}
        _ = work => {}
    }
}

/// Copies one direction until EOF (passed on as a half-close) or an error (which ends the
/// whole connection), pausing whenever the flow is held.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut flow: watch::Receiver<Flow>,
) -> Result<(), ()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        flow.wait_for(|f| *f == Flow::Forward).await.map_err(drop)?;
        let n = tokio::select! {
            biased;
            _ = flow.wait_for(|f| *f == Flow::Hold) => continue,
            read = from.read(&mut buf) => read.map_err(drop)?,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Bytes read just as the flow was held wait for the heal, like the rest.
        flow.wait_for(|f| *f == Flow::Forward).await.map_err(drop)?;
        to.write_all(&buf[..n]).await.map_err(drop)?;
    }
}
