//! Adaptive busy-polling of human-plane connections.
//!
//! A small query costs the server less than waking it does: on a virtual machine a thread
//! that sleeps in `epoll_wait` and is woken by a request from another CPU pays an
//! inter-processor interrupt and a context switch, which on the 2-core reference machine was
//! about as much as reading and encoding a 360-point series (keep-alive `curl` on one CPU and
//! the server on the other: 0.14 ms per request, on the same CPU 0.07 ms). Go's runtime spins
//! briefly before it sleeps for the same reason.
//!
//! [`PollingListener`] hands out [`PollingStream`]s. When a stream has flushed an answer, it
//! peeks at its socket in a loop (yielding the CPU between peeks, so a client on the same CPU
//! runs at once) until the next request is there or `budget` has passed since the write, and
//! only then lets the runtime go back to its event loop, which finds the request ready
//! without putting the thread to sleep. Whether to spin is learnt per connection: only when
//! the previous request arrived within the budget after the previous answer (a client on this
//! machine or a fast link asking in a loop). A client that pauses longer (a dashboard
//! refreshing every few seconds, a client across a network) stops the spinning after one
//! miss, so an idle keep-alive connection costs nothing; a later fast request turns it back
//! on. `roaster_human_busy_polls_total{outcome="hit|miss"}` counts the spins.
//!
//! Measured (`bench/scenarios/query_peers.py`, one series over keep-alive `curl`, 2 cores):
//! 0.11 → 0.09 ms per request; see BENCHMARKS.md "Session 5".
//!
//! Invariants: a spin never lasts longer than `budget` (a configured limit, at most 1 ms),
//! happens at most once per write, and holds the runtime's worker while it lasts (the human
//! plane's worker answers other connections after it); `budget` 0 turns it off and the
//! stream is then exactly the runtime's `TcpStream`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use model::telemetry::{Counter, Exposition};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How busy-polling fared, shared by a listener and its streams.
#[derive(Debug, Default)]
pub struct BusyPollMetrics {
    /// Spins that saw the next request arrive.
    pub hits: Counter,
    /// Spins that gave up at the budget (the connection then waits in the event loop and
    /// spins no more until a request comes within the budget again).
    pub misses: Counter,
}

impl BusyPollMetrics {
    /// Writes `roaster_human_busy_polls_total{outcome}`.
    pub fn render(&self, out: &mut Exposition) {
        let name = "roaster_human_busy_polls_total";
        out.family(
            name,
            "counter",
            "Human-plane connections that spun for their next request after answering \
             (server.human_busy_poll_us): the request came (hit) or the budget ran out (miss).",
        );
        out.sample(name, &[("outcome", "hit")], self.hits.get() as f64);
        out.sample(name, &[("outcome", "miss")], self.misses.get() as f64);
    }
}

/// A listener whose connections busy-poll for their next request (see the module doc).
pub(crate) struct PollingListener {
    inner: TcpListener,
    budget: Duration,
    metrics: Arc<BusyPollMetrics>,
}

impl PollingListener {
    /// Wraps `inner`; `budget` zero turns busy-polling off.
    pub(crate) fn new(
        inner: TcpListener,
        budget: Duration,
        metrics: Arc<BusyPollMetrics>,
    ) -> PollingListener {
        PollingListener {
            inner,
            budget,
            metrics,
        }
    }
}

impl axum::serve::Listener for PollingListener {
    type Io = PollingStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (PollingStream, std::net::SocketAddr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (PollingStream::new(tcp, self.budget, self.metrics.clone()), addr)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that busy-polls for the next request after each answer (see the module doc).
pub struct PollingStream {
    tcp: TcpStream,
    budget: Duration,
    /// When this stream last wrote and has not read since: the next request is waited for
    /// from then.
    written_at: Option<Instant>,
    /// Whether the wait since `written_at` has been spun already.
    spun: bool,
    /// Whether the last wait ended within the budget, so the next one spins.
    spin: bool,
    metrics: Arc<BusyPollMetrics>,
}

impl PollingStream {
    fn new(tcp: TcpStream, budget: Duration, metrics: Arc<BusyPollMetrics>) -> PollingStream {
        PollingStream {
            tcp,
            budget,
            written_at: None,
            spun: false,
            spin: !budget.is_zero(),
            metrics,
        }
    }

    fn wrote(&mut self) {
        self.written_at = Some(Instant::now());
        self.spun = false;
    }
}

impl AsyncRead for PollingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && let Some(since) = this.written_at.take()
        {
            // The wait ended: spin next time only if it ended within the budget.
            this.spin = !this.budget.is_zero() && since.elapsed() <= this.budget;
        }
        polled
    }
}

impl AsyncWrite for PollingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(_))) {
            self.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(_))) {
            self.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    /// After the answer is flushed, waits briefly for the next request (see the module doc).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(())))
            && self.spin
            && !self.spun
            && let Some(since) = self.written_at
        {
            self.spun = true;
            match spin_until_readable(&self.tcp, since + self.budget) {
                SpinOutcome::Request => self.metrics.hits.inc(),
                // the connection is ending: neither a hit nor a reason to stop spinning
                SpinOutcome::Closed => {}
                SpinOutcome::TimedOut => {
                    // A miss: do not spin again until a request arrives within the budget.
                    self.spin = false;
                    self.metrics.misses.inc();
                }
            }
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// How a spin ended.
enum SpinOutcome {
    /// Bytes of the next request arrived.
    Request,
    /// The peer closed the connection (or it failed): the event loop has news either way.
    Closed,
    /// The budget ran out.
    TimedOut,
}

/// Spins until `tcp` has something to read (or is closed) or `deadline` has passed; how it
/// ended. Peeks straight at the socket: the runtime's readiness would not do, as its
/// event loop does not run while this thread spins. What arrived is then read through the
/// event loop, which finds it ready without putting the thread to sleep.
fn spin_until_readable(tcp: &TcpStream, deadline: Instant) -> SpinOutcome {
    let socket = socket2::SockRef::from(tcp);
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    loop {
        match socket.peek(&mut probe) {
            Ok(0) => return SpinOutcome::Closed,
            Ok(_) => return SpinOutcome::Request,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            // the event loop reports the error when it reads
            Err(_) => return SpinOutcome::Closed,
        }
        if Instant::now() >= deadline {
            return SpinOutcome::TimedOut;
        }
        // Not a pure spin: a client running on this same CPU gets it at once.
        std::thread::yield_now();
    }
}
