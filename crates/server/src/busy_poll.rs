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
//! on (one that came through the event loop is allowed twice the budget, since its wait also
//! holds a wake-up: see [`came_soon`]). `roaster_human_busy_polls_total{outcome="hit|miss"}`
//! counts the spins.
//!
//! The listener does the same for clients that open a connection per request (Python's
//! urllib, shell scripts with `curl`): after a connection came or went (was accepted, saw its
//! peer close) its accept tries the socket directly for up to `budget`, yielding to the
//! runtime between tries. Yielding lets the runtime's event loop poll without sleeping, so
//! the new connection's request, which such clients send a moment after connecting, is
//! picked up without a second wake-up. Learnt the same way: a spin that runs out turns it off
//! until a connection comes within twice the budget after another came or went.
//! `roaster_human_accept_polls_total{outcome="hit|miss"}` counts these.
//!
//! Measured (`bench/scenarios/query_peers.py`, one series over keep-alive `curl`, 2 cores):
//! 0.11 → 0.09 ms per request; see BENCHMARKS.md "Session 5". The listener's spin, one series
//! over urllib (a connection per request): 0.196 → 0.164 ms; BENCHMARKS.md "Session 6".
//!
//! Invariants: a spin never lasts longer than `budget` (a configured limit, at most 1 ms),
//! happens at most once per write, and holds the runtime's worker while it lasts (the human
//! plane's worker answers other connections after it). The listener's spin never outlasts
//! `budget` after the last connection came or went and never holds the worker (it yields
//! between tries). `budget` 0 turns both off: the stream is then exactly the runtime's
//! `TcpStream` and accepting exactly the runtime's accept.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Listener spins that saw a new connection arrive.
    pub accept_hits: Counter,
    /// Listener spins that gave up at the budget.
    pub accept_misses: Counter,
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
        let name = "roaster_human_accept_polls_total";
        out.family(
            name,
            "counter",
            "Times the human plane's listener spun for the next connection after one came or went \
             (server.human_busy_poll_us): a connection came (hit) or the budget ran out (miss).",
        );
        out.sample(name, &[("outcome", "hit")], self.accept_hits.get() as f64);
        out.sample(name, &[("outcome", "miss")], self.accept_misses.get() as f64);
    }
}

/// When a connection last came or went on the plane (was accepted, saw its peer close): the
/// listener spins for a next connection until a budget after it. Answers on open connections
/// do not count, so a busy keep-alive client does not keep the listener spinning.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the latest activity.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// Whether a request or connection that came `waited` after the answer or activity it
/// followed came soon enough for the next one to be spun for. Within `budget` if the wait was
/// spun; within twice the budget if it was waited for in the event loop (`woken`), because
/// then `waited` also holds the thread's wake-up, the very cost spinning saves, which on a
/// virtual machine is tens of microseconds. Without that allowance a client whose pauses are
/// just under the budget would turn the spinning off at one slow pause and never turn it back
/// on (measured: Python's urllib, ~80 µs between a close and its next connection, then took
/// 0.30 instead of 0.17 ms per request for whole blocks of requests). A client whose pauses
/// lie between the two bounds costs one missed spin, at most `budget`, every other request.
fn came_soon(waited: Duration, budget: Duration, woken: bool) -> bool {
    let allowed = if woken { budget.saturating_mul(2) } else { budget };
    !budget.is_zero() && waited <= allowed
}

/// A listener whose connections busy-poll for their next request, and which itself spins for
/// the next connection after one came or went (see the module doc).
pub(crate) struct PollingListener {
    inner: TcpListener,
    budget: Duration,
    metrics: Arc<BusyPollMetrics>,
    activity: Arc<Activity>,
    /// Whether the last connection came within the budget after the one before came or went,
    /// so the next accept spins.
    spin: bool,
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
            activity: Arc::new(Activity::new()),
            spin: false,
        }
    }

    fn stream(&self, tcp: TcpStream) -> PollingStream {
        self.activity.touch();
        PollingStream::new(tcp, self.budget, self.metrics.clone(), self.activity.clone())
    }

    /// Tries to accept a connection until `budget` after the last connection came or went,
    /// yielding to the runtime between tries (its event loop then runs without sleeping, so
    /// accepted connections' requests are picked up too). `None` when the budget ran out (or
    /// accepting failed: the runtime's accept reports that).
    async fn spin_accept(&mut self) -> Option<(TcpStream, std::net::SocketAddr)> {
        loop {
            let deadline = self.activity.last() + self.budget;
            match try_accept(&self.inner) {
                Ok(Some(accepted)) => return Some(accepted),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline {
                self.spin = false;
                self.metrics.accept_misses.inc();
                return None;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Accepts a waiting connection straight from the socket, if there is one. The runtime's
/// readiness would not do: it is only refreshed when its event loop runs.
fn try_accept(listener: &TcpListener) -> io::Result<Option<(TcpStream, std::net::SocketAddr)>> {
    let accepted = match socket2::SockRef::from(listener).accept() {
        Ok(accepted) => accepted,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (socket, addr) = accepted;
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    socket.set_nonblocking(true)?;
    let tcp = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    Ok(Some((tcp, addr)))
}

impl axum::serve::Listener for PollingListener {
    type Io = PollingStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (PollingStream, std::net::SocketAddr) {
        if self.spin
            && let Some((tcp, addr)) = self.spin_accept().await
        {
            self.metrics.accept_hits.inc();
            return (self.stream(tcp), addr);
        }
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Spin for the next one only if this one came soon after the last came or went. It
        // was waited for in the event loop, so what it measures includes a wake-up.
        self.spin = came_soon(self.activity.last().elapsed(), self.budget, true);
        (self.stream(tcp), addr)
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
    activity: Arc<Activity>,
}

impl PollingStream {
    fn new(
        tcp: TcpStream,
        budget: Duration,
        metrics: Arc<BusyPollMetrics>,
        activity: Arc<Activity>,
    ) -> PollingStream {
        PollingStream {
            tcp,
            budget,
            written_at: None,
            spun: false,
            spin: !budget.is_zero(),
            metrics,
            activity,
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
        let wanted = buf.remaining() > 0;
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && wanted && buf.filled().len() == before {
            // the peer closed: a client that opens a connection per request opens the next
            // one about now (the listener spins for it)
            this.activity.touch();
        }
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && let Some(since) = this.written_at.take()
        {
            // The wait ended: spin next time only if it ended soon enough.
            this.spin = came_soon(since.elapsed(), this.budget, !this.spun);
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
                // the connection is ending: neither a hit nor a reason to stop spinning; the
                // client may open the next one at once (the listener spins for it)
                SpinOutcome::Closed => self.activity.touch(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_counts_as_soon_within_the_budget_or_twice_it_after_a_wake_up() {
        let us = Duration::from_micros;
        // (waited, budget, woken, spin next time)
        let table = [
            (us(80), us(100), false, true),
            (us(100), us(100), false, true),
            (us(101), us(100), false, false),
            (us(150), us(100), true, true),
            (us(200), us(100), true, true),
            (us(201), us(100), true, false),
            (us(0), us(0), false, false),
            (us(0), us(0), true, false),
            (Duration::MAX, us(1_000), true, false),
        ];
        for (waited, budget, woken, want) in table {
            assert_eq!(
                came_soon(waited, budget, woken),
                want,
                "{waited:?} {budget:?} woken={woken}"
            );
        }
    }
}
