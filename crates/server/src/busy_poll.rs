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
//! Spinning pays only while the client runs on another CPU. When the two share one, the spin
//! holds the CPU the client needs to send its next request, so both spins check, by the thread's
//! involuntary context switches, whether they were preempted, and a [`SpinHistory`] with half
//! of the recent spins preempted turns spinning off for a cool-down
//! (`roaster_human_busy_poll_preempted_total`, `roaster_human_busy_poll_cool_downs_total`).
//!
//! Measured (`bench/scenarios/query_peers.py`, one series over keep-alive `curl`, 2 cores):
//! 0.11 → 0.09 ms per request; see BENCHMARKS.md "Session 5". The listener's spin, one series
//! over urllib (a connection per request): 0.196 → 0.164 ms; BENCHMARKS.md "Session 6".
//!
//! Invariants: no spin starts during a cool-down; a spin never lasts longer than `budget` (a
//! configured limit, at most 1 ms), happens at most once per write, and holds the runtime's
//! worker while it lasts (the human plane's worker answers other connections after it). The
//! listener's spin never outlasts `budget` after the last connection came or went and never
//! holds the worker (it yields between tries). `budget` 0 turns both off: the stream is then exactly the runtime's
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
    /// Spins (either kind) during which the kernel switched this thread out for another.
    pub preempted: Counter,
    /// Times spinning was turned off for a while because spins kept being preempted.
    pub cool_downs: Counter,
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
        let name = "roaster_human_busy_poll_preempted_total";
        out.family(
            name,
            "counter",
            "Human-plane spins (either kind) during which the kernel switched the spinning thread \
             out for another: another thread wanted its CPU.",
        );
        out.sample(name, &[], self.preempted.get() as f64);
        let name = "roaster_human_busy_poll_cool_downs_total";
        out.family(
            name,
            "counter",
            "Times the human plane stopped spinning for a while because its spins kept being \
             preempted (a client on the same CPU, or a CPU shared with other work).",
        );
        out.sample(name, &[], self.cool_downs.get() as f64);
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

/// How many of the latest spins [`SpinHistory`] looks at.
const RECENT_SPINS: u32 = 8;
/// How many of those must have been preempted for spinning to stop for a while.
const PREEMPTED_TO_COOL: u32 = 4;
/// The first cool-down; each one that follows without [`CLEAN_TO_FORGET`] clean spins in
/// between lasts twice the one before, up to [`COOL_DOWN_MAX`].
const COOL_DOWN_MIN: Duration = Duration::from_millis(1);
/// The longest cool-down.
const COOL_DOWN_MAX: Duration = Duration::from_millis(128);
/// Consecutive spins without a preemption after which cool-downs start short again.
const CLEAN_TO_FORGET: u32 = 16;

/// Whether spinning crowds the CPU, learnt from whether spins were preempted (the kernel
/// switched the spinning thread out for another). Spinning pays only while the thread it
/// saves a wake-up for runs on another CPU. When the client shares the spinning thread's CPU,
/// the spin holds the CPU the client needs to send its next request: `sched_yield` does not
/// hand it over while the client is owed less time than the spinner (EEVDF), so each request
/// waited for the scheduler to preempt the spin (urllib `/healthz`, pinned to one CPU: 0.19 ms
/// spinning, 0.145 ms with this history). On the 2-vCPU reference machine half the spins or
/// more were preempted with the two on one CPU, and about one in sixty with them apart,
/// scattered; so half of the last [`RECENT_SPINS`] turns spinning off for a cool-down. The kernel moves the
/// client between CPUs, so the first cool-down is short and only a CPU that stays shared
/// makes them longer. Pure: the caller passes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SpinHistory {
    /// The latest spins, one bit each, newest lowest: 1 = preempted.
    recent: u32,
    /// Consecutive spins since the last preemption.
    clean: u32,
    /// How many times the next cool-down doubles [`COOL_DOWN_MIN`].
    doublings: u32,
    /// Until when spinning is off (time since the owner's epoch).
    cool_until: Duration,
}

impl SpinHistory {
    /// Whether spinning is off at `now`.
    fn cooling(&self, now: Duration) -> bool {
        now < self.cool_until
    }

    /// Records a spin that ended at `now`; true if it starts a cool-down.
    fn record(&mut self, preempted: bool, now: Duration) -> bool {
        self.recent = (self.recent << 1) | u32::from(preempted);
        if preempted {
            self.clean = 0;
        } else {
            self.clean = self.clean.saturating_add(1);
            if self.clean >= CLEAN_TO_FORGET {
                self.doublings = 0;
            }
        }
        let window = (1u32 << RECENT_SPINS) - 1;
        if (self.recent & window).count_ones() < PREEMPTED_TO_COOL {
            return false;
        }
        let cool = COOL_DOWN_MIN
            .saturating_mul(1u32 << self.doublings.min(16))
            .min(COOL_DOWN_MAX);
        self.cool_until = now + cool;
        self.recent = 0;
        self.doublings = self.doublings.saturating_add(1);
        true
    }
}

/// A [`SpinHistory`] shared by a listener and its streams.
#[derive(Debug)]
struct Contention {
    epoch: Instant,
    history: parking_lot::Mutex<SpinHistory>,
}

impl Contention {
    fn new() -> Contention {
        Contention {
            epoch: Instant::now(),
            history: parking_lot::Mutex::new(SpinHistory::default()),
        }
    }

    fn cooling(&self) -> bool {
        self.history.lock().cooling(self.epoch.elapsed())
    }

    fn record(&self, preempted: bool) -> bool {
        self.history.lock().record(preempted, self.epoch.elapsed())
    }
}

/// The calling thread's count of involuntary context switches at the start of a spin, to
/// tell afterwards whether the kernel switched the thread out meanwhile (`getrusage` with
/// `RUSAGE_THREAD`: one system call at each end of a spin).
struct PreemptionProbe {
    thread: std::thread::ThreadId,
    involuntary: std::ffi::c_long,
}

impl PreemptionProbe {
    fn start() -> Option<PreemptionProbe> {
        Some(PreemptionProbe {
            thread: std::thread::current().id(),
            involuntary: involuntary_switches()?,
        })
    }

    /// Whether this thread was switched out since [`PreemptionProbe::start`]; false when the
    /// spin moved to another thread (a multi-threaded runtime may move a yielding task) or the
    /// kernel does not say.
    fn preempted(&self) -> bool {
        std::thread::current().id() == self.thread
            && involuntary_switches().is_some_and(|now| now > self.involuntary)
    }
}

fn involuntary_switches() -> Option<std::ffi::c_long> {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
        .ok()
        .map(|u| u.involuntary_context_switches())
}

/// Ends a spin's probe: counts a preemption and records the spin, counting a cool-down.
fn finish_probe(probe: Option<PreemptionProbe>, contention: &Contention, metrics: &BusyPollMetrics) {
    let Some(probe) = probe else { return };
    let preempted = probe.preempted();
    if preempted {
        metrics.preempted.inc();
    }
    if contention.record(preempted) {
        metrics.cool_downs.inc();
    }
}

/// A listener whose connections busy-poll for their next request, and which itself spins for
/// the next connection after one came or went (see the module doc).
pub(crate) struct PollingListener {
    inner: TcpListener,
    budget: Duration,
    metrics: Arc<BusyPollMetrics>,
    activity: Arc<Activity>,
    contention: Arc<Contention>,
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
            contention: Arc::new(Contention::new()),
            spin: false,
        }
    }

    fn stream(&self, tcp: TcpStream) -> PollingStream {
        self.activity.touch();
        PollingStream::new(
            tcp,
            self.budget,
            self.metrics.clone(),
            self.activity.clone(),
            self.contention.clone(),
        )
    }

    /// Tries to accept a connection until `budget` after the last connection came or went,
    /// yielding to the runtime between tries (its event loop then runs without sleeping, so
    /// accepted connections' requests are picked up too). `None` when the budget ran out (or
    /// accepting failed: the runtime's accept reports that).
    async fn spin_accept(&mut self) -> Option<(TcpStream, std::net::SocketAddr)> {
        let probe = PreemptionProbe::start();
        let accepted = loop {
            let deadline = self.activity.last() + self.budget;
            match try_accept(&self.inner) {
                Ok(Some(accepted)) => break Some(accepted),
                Ok(None) => {}
                Err(_) => break None,
            }
            if Instant::now() >= deadline {
                self.spin = false;
                self.metrics.accept_misses.inc();
                break None;
            }
            tokio::task::yield_now().await;
        };
        finish_probe(probe, &self.contention, &self.metrics);
        accepted
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
            && !self.contention.cooling()
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
    contention: Arc<Contention>,
}

impl PollingStream {
    fn new(
        tcp: TcpStream,
        budget: Duration,
        metrics: Arc<BusyPollMetrics>,
        activity: Arc<Activity>,
        contention: Arc<Contention>,
    ) -> PollingStream {
        PollingStream {
            tcp,
            budget,
            written_at: None,
            spun: false,
            spin: !budget.is_zero(),
            metrics,
            activity,
            contention,
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
            && !self.contention.cooling()
        {
            self.spun = true;
            let probe = PreemptionProbe::start();
            let outcome = spin_until_readable(&self.tcp, since + self.budget);
            finish_probe(probe, &self.contention, &self.metrics);
            match outcome {
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
    fn spins_stop_when_half_the_recent_ones_were_preempted_for_growing_cool_downs() {
        let ms = Duration::from_millis;
        let mut h = SpinHistory::default();
        let mut now = ms(1_000);
        // (spins as preempted or not, cool-down started by the last, spinning off right after)
        let steps: &[(&[bool], bool, Option<Duration>)] = &[
            // scattered preemptions never cool: 3 in 8
            (
                &[false, true, false, false, true, false, false, true],
                false,
                None,
            ),
            // a fourth within the last eight does: the first cool-down is the shortest
            (&[true], true, Some(ms(1))),
            // the window starts empty again; a shared CPU keeps preempting: twice as long
            (&[true, true, true, true], true, Some(ms(2))),
            (&[true, false, true, false, true, false, true], true, Some(ms(4))),
            // fifteen clean spins are not enough to forget...
            (&[false; 15], false, None),
            (&[true, true, true, true], true, Some(ms(8))),
            // ...sixteen are
            (&[false; 16], false, None),
            (&[true, true, true, true], true, Some(ms(1))),
        ];
        for (i, (spins, cools, off_for)) in steps.iter().enumerate() {
            // no spin starts during a cool-down: each step comes after the last one ended
            now += COOL_DOWN_MAX;
            let mut started = false;
            for &p in *spins {
                now += Duration::from_micros(150);
                started = h.record(p, now);
            }
            assert_eq!(started, *cools, "step {i}");
            match off_for {
                Some(d) => {
                    assert!(h.cooling(now), "step {i}: cooling right after");
                    assert!(h.cooling(now + *d - Duration::from_nanos(1)), "step {i}");
                    assert!(!h.cooling(now + *d), "step {i}: cooled after {d:?}");
                }
                None => assert!(!h.cooling(now), "step {i}"),
            }
        }
        // cool-downs stop doubling at the longest
        for _ in 0..20 {
            now += ms(200);
            for _ in 0..PREEMPTED_TO_COOL {
                h.record(true, now);
            }
        }
        assert!(h.cooling(now + COOL_DOWN_MAX - Duration::from_nanos(1)));
        assert!(!h.cooling(now + COOL_DOWN_MAX));
    }

    /// Pins the calling thread to the first CPU it may run on; returns that CPU set.
    fn pin_to_one_cpu() -> rustix::thread::CpuSet {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        let allowed = sched_getaffinity(None).expect("sched_getaffinity");
        let cpu = (0..CpuSet::MAX_CPU)
            .find(|&c| allowed.is_set(c))
            .expect("some CPU");
        let mut one = CpuSet::new();
        one.set(cpu);
        sched_setaffinity(None, &one).expect("sched_setaffinity");
        one
    }

    #[test]
    fn a_spin_sharing_its_cpu_with_a_busy_thread_is_seen_preempted() {
        use std::sync::atomic::AtomicBool;
        let one = pin_to_one_cpu();
        let stop = Arc::new(AtomicBool::new(false));
        let rival = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                rustix::thread::sched_setaffinity(None, &one).expect("sched_setaffinity");
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let probe = PreemptionProbe::start().expect("getrusage(RUSAGE_THREAD) works on Linux");
        // the scheduler's slice is a few milliseconds; a second is plenty
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !probe.preempted() {
            std::hint::spin_loop();
        }
        stop.store(true, Ordering::Relaxed);
        rival.join().expect("rival thread");
        assert!(
            probe.preempted(),
            "a thread sharing its CPU with a busy one was never switched out"
        );
    }

    #[test]
    fn sleeping_is_not_preemption_and_another_thread_never_reads_as_preempted() {
        let probe = PreemptionProbe::start().expect("getrusage(RUSAGE_THREAD) works on Linux");
        // a sleep is a voluntary switch
        std::thread::sleep(Duration::from_millis(5));
        assert!(!probe.preempted());
        // a spin that moved threads (a yielding task on a multi-threaded runtime) says nothing
        let moved = std::thread::scope(|s| s.spawn(|| probe.preempted()).join().expect("thread"));
        assert!(!moved);
    }

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
